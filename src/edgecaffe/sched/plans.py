"""What the scheduler does with each planned task, worked out once rather than per task run.

A `Plan` holds everything the scheduler's hot path needs about one task of a planner's template
(one per position, shared by every copy of the template): the bytes it reserves and the ledger
keys they are held under, what its end returns (the memory manager's figures, sched/memory.py),
its pool's ready heap, its heap key, its dependents' positions, whether it is its network's
init or last task. Long simulations run millions of tasks; the scheduler then only follows
pointers.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

from edgecaffe.errors import ConfigError
from edgecaffe.sched.graph import Kind, Task
from edgecaffe.sched.memory import MemoryManager
from edgecaffe.sched.planner import Template
from edgecaffe.sched.policies import Policy

#: Heap keys: rank code * SPAN + `Task.order` (request order * 2**64 + task id; ids between
#: -2**63 and 2**63 and orders below 2**63 keep their order).
SPAN = 1 << 128


class Plan:
    """What the scheduler does with one planned task."""

    __slots__ = ("dependents", "freed", "heap", "hit", "holds", "init", "keep", "key", "last",
                 "nbytes", "path", "pool", "rank", "releases", "step")

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
        #: Deadlock avoidance: its template's path and its step on it (None: not guarded).
        self.path: Any = None
        self.step = -1
        #: Kept weights on (sched/cache.py): what a hit of this load takes, what this
        #: execution's end keeps (`MemoryManager.kept_figures`); None otherwise.
        self.hit: Any = None
        self.keep: Any = None


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
    """The plans of one scheduler: plans per template position (memory figures from the memory
    manager, the policy's ranks and their order)."""

    def __init__(self, memory: MemoryManager, policy: Policy, ready: dict[int, list],
                 waiting: dict[int, Task]) -> None:
        self.memory = memory
        self.policy = policy
        self.ranked = policy.ranked
        #: The scheduler's ready heaps and, for ranked policies, key -> ready task.
        self._ready = ready
        self._waiting = waiting
        self._templates: dict[int, TemplatePlans] = {}
        #: Ranks seen, in order, their codes (positions), and the plans that have one.
        self._ranks: list = []
        self._codes: dict[Any, int] = {}
        self._ranked_plans: list[Plan] = []

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
            lean = self.memory.known_releases(template, plans)
            if lean:
                self.memory.plan_path(template, plans)
            entry = self._templates[id(template)] = TemplatePlans(template, plans, lean)
        return entry

    def _plan(self, task: Task, last: bool, dependents: tuple[int, ...]) -> Plan:
        spec = task.spec
        plan = Plan(*self.memory.figures_of(task), spec.pool, self._ready.setdefault(spec.pool, []),
                    spec.kind == Kind.INIT, last, dependents)
        if self.memory.cache is not None:
            plan.hit, plan.keep = self.memory.kept_figures(task)
        if self.ranked:
            plan.rank = self.policy.rank(task)
            key = self.policy.key(task, 0.0)
            # The heap orders by rank, then `Task.order`: it must stand for key.
            if key != (*plan.rank, task.order) and key != (*plan.rank, task.id):
                raise ConfigError(
                    f"policy {self.policy.name!r}: rank() must be key() without the task id, "
                    f"got rank {plan.rank!r} and key {key!r} for {task!r}")
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
                key = task.plan.key + task.order
                self._waiting[key] = task
                heapq.heappush(task.plan.heap, key)
        return position

