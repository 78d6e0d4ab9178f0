"""The scheduler core: ready tasks, the policy's order, memory admission, completion.

It knows nothing about threads or clocks: the real engine calls it under one lock from worker
threads, the simulator from an event loop with a virtual clock. `now` is whatever clock the
driver passes in.

Memory granularity:
* `network` (faithful, §3.3): an init reserves the network's peak figure; everything is returned
  when the network finishes. Loads and execs reserve nothing.
* `layer` (the paper's intent): an init reserves the input; a load reserves the layer's weights
  and its output; an exec of a weight-free layer reserves its output; after an exec the layer's
  weights are returned (per-layer modes) and every buffer whose last reader ran. Whole-model
  tasks (bulk) reserve all weights, then the forward pass's peak activations.

Progress rule: a task the budget cannot admit waits while anything runs; when nothing runs and
nothing fits in any pool, the first task in policy order is admitted over budget and the event
is recorded (`forced`). With network granularity an init is also admitted whenever no network
is active, as the original Masa did. With `allow_overcommit=False`, `next_task` raises
`BudgetError` for such a task instead (the engine then fails that network).

Speed (long simulations run millions of tasks through here): what depends only on a planned
task's network and position is worked out once, in a `Plan` (sched/plans.py); an added task
points at its plan. Ready tasks wait in one heap per pool; with a static policy that gives a
rank (all built-in static ones) the heap holds integers, rank code * 2**64 + task id (compared
faster than tuples), and `_waiting` maps them to their tasks. Unfinished dependencies are
counted per position in the instance (`instance.pending`) and decremented by the positions the
plan lists, so no dependency lists are built. What an instance holds is tracked per ledger key
(`instance.held`), except without a ledger to write where the plans allow it (`lean`, see
sched/plans.py): then tasks' ends return bytes known in advance, and what the instance holds
at its end is too, unless it fails (`instance.held_bytes`). `next_task` and `complete` inline
the common case (the best task fits; a task ends without error) and leave the rest to helpers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from heapq import heappop, heappush

from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.graph import NetworkInstance, State, Task
from edgecaffe.sched.plans import Plan, PlanBook
from edgecaffe.sched.policies import Policy

GRANULARITIES = ("layer", "network")
WAITING, READY, RUNNING, DONE, SKIPPED = (State.WAITING, State.READY, State.RUNNING, State.DONE,
                                          State.SKIPPED)


class BudgetError(MemoryError):
    """A network that cannot run within the budget when overcommitting is not allowed."""

    def __init__(self, message: str, task: Task | None = None) -> None:
        super().__init__(message)
        self.task = task


class Step:
    """What one `finish` (or `fail`) changed: tasks now ready, network instances now over."""

    __slots__ = ("finished", "ready")

    def __init__(self, ready: list[Task] | None = None,
                 finished: list[NetworkInstance] | None = None) -> None:
        self.ready: list[Task] = [] if ready is None else ready
        self.finished: list[NetworkInstance] = [] if finished is None else finished

    def __repr__(self) -> str:
        return f"Step(ready={self.ready!r}, finished={self.finished!r})"


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        budget: MemoryBudget,
        granularity: str = "layer",
        per_layer: bool = True,
        allow_overcommit: bool = True,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: choose from {', '.join(GRANULARITIES)}")
        self.policy = policy
        self.budget = budget
        self.granularity = granularity
        self.per_layer = per_layer
        self.allow_overcommit = allow_overcommit
        #: Pool -> ready tasks: for ranked policies a heap of keys, for other static ones a heap
        #: of ((key, task id), task), else a list of tasks.
        self._ready: dict[int, list] = {}
        self._waiting: dict[int, Task] = {}  # ranked: key -> ready task
        self._static = policy.static
        self._ranked = policy.ranked
        self._book = PlanBook(granularity, per_layer, policy, self._ready, self._waiting)
        self.running: set[Task] = set()
        self.active: set[NetworkInstance] = set()
        self.instances: set[NetworkInstance] = set()
        self.forced_events = 0

    def reservation(self, task: Task) -> int:
        """Bytes `task` reserves when admitted, under this scheduler's granularity."""
        return self._book.figures(task)[0]

    # -- adding work ---------------------------------------------------------------------------

    def add(self, instances: Iterable[NetworkInstance], now: float) -> list[Task]:
        """Register the instances' tasks; returns those ready at once."""
        instances = list(instances)
        candidates = []
        for instance in instances:
            self.instances.add(instance)
            instance.created = now
            tasks = instance.tasks
            template = instance.template
            # Tasks linked by hand or across instances have their own dependency lists; the
            # others depend on their template's positions, none of them finished yet.
            linked = []
            if template is not None and len(tasks) == len(template.specs):
                entry = self._book.template(template, tasks)
                if instance.linked:
                    for task, plan in zip(tasks, entry.plans, strict=True):
                        task.plan = plan
                        if task._deps is not None:
                            linked.append(task)
                else:
                    for task, plan in zip(tasks, entry.plans, strict=True):
                        task.plan = plan
                counts, roots = entry.counts, template.roots
                instance.lean = entry.lean and not self.budget.record
                instance.held_bytes = entry.residual if instance.lean else 0
            else:
                for task in tasks:
                    task.plan = self._book.single(task)
                counts, roots, linked = [0] * len(tasks), (), tasks
                instance.lean = False
            pending = instance.pending = counts.copy()
            for task in linked:
                unfinished = 0
                for dep in task.deps:
                    if dep.state < DONE:
                        unfinished += 1
                pending[task.spec.index] = unfinished
            if linked:
                roots = sorted({*roots, *(task.spec.index for task in linked)})
            candidates.append(roots)
        ready = []
        for instance, roots in zip(instances, candidates, strict=True):
            tasks, pending = instance.tasks, instance.pending
            for index in roots:
                task = tasks[index]
                if pending[index] == 0 and task.state == WAITING:
                    self._make_ready(task, now)
                    ready.append(task)
        return ready

    def _make_ready(self, task: Task, now: float) -> None:
        task.state = READY
        task.ready = now
        plan = task.plan
        if self._ranked:
            key = plan.key + task.id
            heappush(plan.heap, key)
            self._waiting[key] = task
        elif self._static:
            heappush(plan.heap, ((self.policy.key(task, now), task.id), task))
        else:
            plan.heap.append(task)

    @property
    def ready_count(self) -> int:
        return sum(len(heap) for heap in self._ready.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.ready_count > 0

    # -- choosing ------------------------------------------------------------------------------

    def _admits(self, task: Task) -> bool:
        if self.budget.fits(task.plan.nbytes):
            return True
        # The original Masa: an init may always start when no network is active.
        return self.granularity == "network" and task.plan.init and not self.active

    def next_task(self, pool: int, now: float, worker: int | None = None) -> Task | None:
        """The next task for a worker of `pool`, admitted and reserved; None if none may run."""
        try:
            heap = self._ready[pool]
        except KeyError:
            return None
        if not heap:
            return None
        # The common case: the best task fits. Started here, as `_start` would.
        if self._ranked:
            key = heap[0]
            task = self._waiting[key]
        elif self._static:
            task = heap[0][1]
        else:
            return self._next_in_order(heap, pool, now, worker)
        plan = task.plan
        nbytes = plan.nbytes
        budget = self.budget
        if nbytes > 0:
            if nbytes > budget.capacity_bytes - budget.used_bytes:
                return self._next_in_order(heap, pool, now, worker)
            instance = task._instance()
            if instance.lean:  # `MemoryBudget.reserve`'s arithmetic, with no ledger to write
                used = budget.used_bytes + nbytes
                budget.used_bytes = used
                if used > budget.peak_bytes:
                    budget.peak_bytes = used
            else:
                self._reserve(task, instance, plan, now, False)
        heappop(heap)
        if self._ranked:
            del self._waiting[key]
        if plan.init:
            self.active.add(task._instance())
        task.state = RUNNING
        task.start = now
        task.worker = worker
        self.running.add(task)
        return task

    def _next_in_order(self, heap: list, pool: int, now: float, worker: int | None
                       ) -> Task | None:
        """Walk the pool's ready tasks in policy order for the first one admitted; else the
        progress rule."""
        order = self._in_order(heap, now)
        chosen = next((task for task in order if self._admits(task)), None)
        if chosen is None and not self.running and not self._admissible_elsewhere(pool, now):
            chosen = order[0]  # the progress rule: nothing runs and nothing fits anywhere
        if chosen is None:
            return None
        self._unready(chosen)
        if not self.allow_overcommit and not self.budget.fits(chosen.plan.nbytes):
            self._make_ready(chosen, now)
            raise BudgetError(
                f"{chosen!r} needs {chosen.plan.nbytes} bytes but only "
                f"{self.budget.free_bytes} of {self.budget.capacity_bytes} are free and nothing "
                "else is running",
                chosen,
            )
        self._start(chosen, now, worker)
        return chosen

    def _in_order(self, heap: list, now: float) -> list[Task]:
        """The ready tasks of one pool, best first by the policy."""
        if self._ranked:
            return [self._waiting[key] for key in sorted(heap)]
        if self._static:
            return [entry[1] for entry in sorted(heap)]
        return sorted(heap, key=lambda task: (self.policy.key(task, now), task.id))

    def _admissible_elsewhere(self, pool: int, now: float) -> bool:
        return any(self._admits(task) for other, heap in self._ready.items() if other != pool
                   for task in self._in_order(heap, now))

    def _start(self, task: Task, now: float, worker: int | None) -> None:
        instance = task.instance
        plan = task.plan
        if plan.nbytes > 0:
            forced = not self.budget.fits(plan.nbytes)
            if forced:
                task.forced = True
                self.forced_events += 1
            self._reserve(task, instance, plan, now, forced)
        if plan.init:
            self.active.add(instance)
        task.state = RUNNING
        task.start = now
        task.worker = worker
        self.running.add(task)

    def _reserve(self, task: Task, instance: NetworkInstance, plan: Plan, now: float,
                 forced: bool) -> None:
        """Reserve the task's bytes, remembering under which keys they are held (to return them
        piece by piece; a lean instance need not)."""
        budget = self.budget
        reason = f"{task.label} of {instance.name}" if budget.record else ""
        budget.reserve(plan.nbytes, now, reason, task.id, instance.id, forced)
        if instance.lean:
            return
        held = instance.held
        for key, part in plan.holds:
            held[key] = held.get(key, 0) + part

    def _unready(self, task: Task) -> None:
        heap = task.plan.heap
        if self._ranked:
            key = task.plan.key + task.id
            del self._waiting[key]
            if heap[0] == key:
                heappop(heap)
            else:
                heap.remove(key)
                heapq.heapify(heap)
        elif not self._static:
            heap.remove(task)
        elif heap[0][1] is task:
            heappop(heap)
        else:
            heap[:] = [entry for entry in heap if entry[1] is not task]
            heapq.heapify(heap)

    # -- finishing -----------------------------------------------------------------------------

    def finish(self, task: Task, now: float, error: BaseException | str | None = None) -> Step:
        """Record that `task` ended (with `error` if it raised); returns what that unblocked."""
        ready: list[Task] = []
        finished = self.complete(task, now, error, ready)
        return Step(ready, list(finished))

    def complete(self, task: Task, now: float, error: BaseException | str | None = None,
                 ready: list[Task] | None = None) -> Sequence[NetworkInstance]:
        """`finish` for a driver that needs no `Step` (the simulator, millions of times): the
        tasks it makes ready are appended to `ready` if given; returns the network instances
        now over."""
        self.running.discard(task)
        task.end = now
        task.state = DONE
        instance = task._instance()
        plan = task.plan
        if instance.failed is not None:
            pass  # its reservations go when it is over
        elif error is not None:
            task.error = str(error)
            self._fail(instance, str(error), now, [] if ready is None else ready, task)
        elif instance.lean:
            freed = plan.freed
            if freed:
                budget = self.budget
                if freed <= budget.used_bytes:  # `MemoryBudget.release`'s arithmetic
                    budget.used_bytes -= freed
                else:
                    budget.release(freed, now, "", task.id, instance.id)  # raises
        elif plan.releases:
            self._release_after(task, instance, now)
        dependents = task._dependents
        if dependents is not None:
            self._unblock_tasks(dependents, now, [] if ready is None else ready)
        elif plan.dependents:
            # `_unblock`, inlined: dependents in the same instance, by position.
            pending = instance.pending
            tasks = instance.tasks
            ranked = self._ranked
            waiting = self._waiting
            for index in plan.dependents:
                count = pending[index] - 1
                pending[index] = count
                if not count:
                    dependent = tasks[index]
                    if dependent.state == WAITING:
                        if ranked:
                            dependent.state = READY
                            dependent.ready = now
                            other = dependent.plan
                            key = other.key + dependent.id
                            heappush(other.heap, key)
                            waiting[key] = dependent
                        else:
                            self._make_ready(dependent, now)
                        if ready is not None:
                            ready.append(dependent)
        if plan.last or instance.failed is not None:
            finished: list[NetworkInstance] = []
            self._maybe_finished(instance, now, finished)
            return finished
        return ()

    def fail(self, instance: NetworkInstance, reason: str, now: float) -> Step:
        """Give up on a network instance (an error elsewhere, or a cancelled request)."""
        step = Step()
        if instance.failed is None:
            self._fail(instance, reason, now, step.ready)
        self._maybe_finished(instance, now, step.finished)
        return step

    def _fail(self, instance: NetworkInstance, reason: str, now: float, ready: list[Task],
              failing: Task | None = None) -> None:
        instance.failed = reason
        if instance.lean:
            # What it holds now: what its started tasks reserved, less what the ends so far
            # returned (not the failing task's: its end returns nothing).
            instance.held_bytes = sum(
                task.plan.nbytes - (task.plan.freed if task.state == DONE and task is not failing
                                    else 0)
                for task in instance.tasks if task.state in (RUNNING, DONE))
        for task in instance.tasks:
            if task.state in (WAITING, READY):
                if task.state == READY:
                    self._unready(task)
                task.state = SKIPPED
                task.end = now
        for task in instance.tasks:
            if task.state == SKIPPED:
                self._unblock(task, now, ready)

    def _release_after(self, task: Task, instance: NetworkInstance, now: float) -> None:
        """Return what `task`'s end frees: a layer's weights, buffers whose last reader ran."""
        held = instance.held
        budget = self.budget
        for key in task.plan.releases:
            nbytes = held.pop(key, 0)
            if nbytes:
                reason = f"{'free' if key[0] == 'w' else 'drop'} {key[2:]}" \
                    if budget.record else ""
                budget.release(nbytes, now, reason, task.id, instance.id)

    def _unblock(self, task: Task, now: float, ready: list[Task]) -> None:
        """Count `task` as finished for its dependents; those left with none become ready."""
        if task._dependents is not None:
            self._unblock_tasks(task._dependents, now, ready)
            return
        tasks = task.instance.tasks
        self._unblock_tasks([tasks[index] for index in task.plan.dependents], now, ready)

    def _unblock_tasks(self, dependents: list[Task], now: float, ready: list[Task]) -> None:
        for dependent in dependents:
            instance = dependent._instance()
            if instance is None or not instance.pending:
                continue  # not added (yet): `add` counts its unfinished dependencies
            pending = instance.pending
            index = dependent.spec.index
            pending[index] -= 1
            if pending[index] == 0 and dependent.state == WAITING:
                self._make_ready(dependent, now)
                ready.append(dependent)

    def _maybe_finished(self, instance: NetworkInstance, now: float,
                        finished: list[NetworkInstance]) -> None:
        if instance not in self.instances:
            return
        if instance.failed is None:
            over = instance.last.state == DONE
        else:
            over = all(task.state != RUNNING for task in instance.tasks)
        if not over:
            return
        budget = self.budget
        reason = f"end of {instance.name}" if budget.record else ""
        if instance.held_bytes:
            budget.release(instance.held_bytes, now, reason, None, instance.id)
            instance.held_bytes = 0
        held = instance.held
        for key in list(held):
            nbytes = held.pop(key, 0)
            if nbytes:
                budget.release(nbytes, now, reason, None, instance.id)
        self.active.discard(instance)
        self.instances.discard(instance)
        finished.append(instance)
