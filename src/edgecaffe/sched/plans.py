"""What the scheduler does with each planned task, worked out once rather than per task run.

A `Plan` holds everything the scheduler's hot path needs about one task of a planner's template
(one per position, shared by every copy of the template): the bytes it reserves and the ledger
keys they are held under, what its end returns, its pool's ready heap, its heap key, its
dependents' positions, whether it is its network's init or last task. Long simulations run
millions of tasks; the scheduler then only follows pointers.

Memory granularity (see `Scheduler`) decides the figures. Without a ledger to write
(`MemoryBudget(record=False)`), the scheduler need not track what an instance holds under which
ledger key when the bytes each task's end returns are known in advance: every task that
reserves under a key the end returns must then be one of that task's dependencies, direct or
not (so it always ran before), and no other task returns that key. What the instance holds when
it ends is then known too (all its tasks are dependencies of its last one), unless it failed
(then the scheduler works it out from its tasks' states). `PlanBook.template` checks this once
per template (it holds for the modes' graphs), and works the bytes out: the template is `lean`.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

from edgecaffe.sched.graph import Kind, Task
from edgecaffe.sched.info import NetworkInfo
from edgecaffe.sched.planner import Template
from edgecaffe.sched.policies import Policy

#: Heap keys: rank code * SPAN + task id (ids between -2**63 and 2**63 keep their order).
SPAN = 1 << 64


class Plan:
    """What the scheduler does with one planned task."""

    __slots__ = ("dependents", "freed", "heap", "holds", "init", "key", "last", "nbytes", "pool",
                 "rank", "releases")

    def __init__(self, nbytes: int, holds: tuple, releases: tuple, pool: int, heap: list,
                 init: bool, last: bool, dependents: tuple[int, ...]) -> None:
        #: Bytes reserved at its start, held under these (ledger key, bytes) pairs.
        self.nbytes = nbytes
        self.holds = holds
        #: Ledger keys returned at its end, and their bytes when known in advance (see above).
        self.releases = releases
        self.freed = 0
        #: Its pool, and that pool's ready tasks (`Scheduler._ready[pool]`).
        self.pool = pool
        self.heap = heap
        #: Its network's init (it activates the instance), its last task (it ends it).
        self.init = init
        self.last = last
        #: Positions of its dependents in its instance (a template's; () for other tasks).
        self.dependents = dependents
        #: The policy's rank (ranked policies) and its heap key, rank code * SPAN.
        self.rank: Any = None
        self.key = 0


class TemplatePlans:
    """A template's plans, per position, and what `Scheduler.add` copies per instance."""

    __slots__ = ("counts", "lean", "plans", "residual", "template")

    def __init__(self, template: Template, plans: list[Plan], lean: bool) -> None:
        self.template = template
        self.plans = plans
        #: Dependencies per position (none finished when an instance is added).
        self.counts = [len(spec.deps) for spec in template.specs]
        #: Whether each end's returned bytes are known in advance (`Plan.freed`), and then
        #: what an instance that did not fail holds at its end.
        self.lean = lean
        self.residual = sum(plan.nbytes - plan.freed for plan in plans) if lean else 0


class PlanBook:
    """The plans of one scheduler: memory figures per network, task kind and layer; plans per
    template position; the policy's ranks and their order."""

    def __init__(self, granularity: str, per_layer: bool, policy: Policy,
                 ready: dict[int, list], waiting: dict[int, Task]) -> None:
        self.granularity = granularity
        self.per_layer = per_layer
        self.policy = policy
        self.ranked = policy.ranked
        #: The scheduler's ready heaps and, for ranked policies, key -> ready task.
        self._ready = ready
        self._waiting = waiting
        #: (id(info), kind, layer, whole model) -> (bytes, holds, releases, info). The info is
        #: kept so that its id stays unique while cached.
        self._figures: dict[tuple, tuple] = {}
        self._templates: dict[int, TemplatePlans] = {}
        #: Ranks seen, in order, their codes (positions), and the plans that have one.
        self._ranks: list = []
        self._codes: dict[Any, int] = {}
        self._ranked_plans: list[Plan] = []

    def figures(self, task: Task) -> tuple[int, tuple, tuple]:
        """(bytes reserved at start, (ledger key, bytes) they are held under, keys returned at
        its end), under this scheduler's granularity."""
        info = task.instance.info
        spec = task.spec
        key = (id(info), spec.kind, spec.layers[0] if spec.layers else None, spec.whole_model)
        figures = self._figures.get(key)
        if figures is None:
            figures = self._figures[key] = (*self._work_out(task, info), info)
        return figures[:3]

    def _work_out(self, task: Task, info: NetworkInfo) -> tuple[int, tuple, tuple]:
        if self.granularity == "network":
            if task.kind == Kind.INIT:
                return info.peak_bytes, (("network", info.peak_bytes),), ()
            return 0, (), ()
        if task.kind == Kind.INIT:
            return info.input_bytes, tuple((f"a:{b}", info.buffer_bytes[b]) for b in info.inputs
                                           ), ()
        if task.whole_model:
            # Bulk: everything goes when the network finishes (its exec is the last task).
            if task.kind == Kind.LOAD:
                return info.weight_bytes, (("w:*", info.weight_bytes),), ()
            activations = max(0, info.peak_activation_bytes - info.input_bytes)
            return activations, (("a:*", activations),), ()
        layer = info.layer(task.layers[0])
        outputs = tuple((f"a:{owner}", info.buffer_bytes[owner]) for owner in layer.writes)
        if task.kind == Kind.LOAD:
            return (layer.weight_bytes + layer.output_bytes,
                    ((f"w:{layer.name}", layer.weight_bytes), *outputs), ())
        releases = (f"w:{layer.name}",) if self.per_layer else ()
        releases += tuple(f"a:{owner}" for owner in info.last_reads[layer.name])
        if layer.weighted:
            return 0, (), releases  # its load reserved the output
        return layer.output_bytes, outputs, releases

    def single(self, task: Task) -> Plan:
        """The plan of a task of an instance built by hand (not a template's copy): its own."""
        instance = task.instance
        return self._plan(task, task is instance.marks.get("last"), task.spec.dependents)

    def template(self, template: Template, tasks: list[Task]) -> TemplatePlans:
        """The plans of a template's positions (`tasks`: one instance of it)."""
        entry = self._templates.get(id(template))
        if entry is None or entry.template is not template:
            last = template.marks.get("last")
            plans = [self._plan(task, spec.index == last, spec.dependents)
                     for task, spec in zip(tasks, template.specs, strict=True)]
            freed = _freed(template, plans, last)
            for plan, nbytes in zip(plans, freed or (), strict=False):
                plan.freed = nbytes
            entry = self._templates[id(template)] = TemplatePlans(template, plans,
                                                                  freed is not None)
        return entry

    def _plan(self, task: Task, last: bool, dependents: tuple[int, ...]) -> Plan:
        spec = task.spec
        plan = Plan(*self.figures(task), spec.pool, self._ready.setdefault(spec.pool, []),
                    spec.kind == Kind.INIT, last, dependents)
        if self.ranked:
            plan.rank = self.policy.rank(task)
            self._ranked_plans.append(plan)
            plan.key = self._code(plan.rank) * SPAN
        return plan

    def _code(self, rank: Any) -> int:
        """The rank's position among the ranks seen. A new rank before others shifts their
        codes: the plans' keys and the waiting heap entries are redone (rare: a new network)."""
        code = self._codes.get(rank)
        if code is not None:
            return code
        position = bisect.bisect(self._ranks, rank)
        self._ranks.insert(position, rank)
        self._codes[rank] = position
        if position < len(self._ranks) - 1:
            self._codes = {r: i for i, r in enumerate(self._ranks)}
            for plan in self._ranked_plans:
                plan.key = self._codes[plan.rank] * SPAN
            tasks = list(self._waiting.values())
            self._waiting.clear()
            for heap in self._ready.values():
                heap.clear()
            for task in tasks:
                key = task.plan.key + task.id
                self._waiting[key] = task
                heapq.heappush(task.plan.heap, key)
        return position


def _freed(template: Template, plans: list[Plan], last: int | None) -> list[int] | None:
    """Bytes each position's end returns, when known in advance (see the module's doc); None
    when not."""
    specs = template.specs
    # Ancestors of each position, as bit sets, in an order where dependencies come first.
    ancestors = [0] * len(specs)
    waiting = [len(spec.deps) for spec in specs]
    order = [spec.index for spec in specs if not spec.deps]
    for index in order:
        for dependent in specs[index].dependents:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                order.append(dependent)
    if len(order) < len(specs):
        return None  # a cycle: nothing runs in it anyway
    for index in order:
        for dep in specs[index].deps:
            ancestors[index] |= ancestors[dep] | 1 << dep
    if last is None or ancestors[last] | 1 << last != (1 << len(specs)) - 1:
        return None  # a task may run after the last one
    holders: dict[str, list[tuple[int, int]]] = {}
    for position, plan in enumerate(plans):
        for key, nbytes in plan.holds:
            holders.setdefault(key, []).append((position, nbytes))
    freed = [0] * len(plans)
    returned: set[str] = set()
    for position, plan in enumerate(plans):
        for key in plan.releases:
            if key in returned:
                return None  # two tasks return it: what the second finds depends on the run
            returned.add(key)
            for holder, nbytes in holders.get(key, ()):
                if holder != position and not ancestors[position] >> holder & 1:
                    return None  # it may reserve after the return, or not before
                freed[position] += nbytes
    return freed
