"""The scheduler core: ready tasks, the policy's order, the memory manager's answer, completion.

It knows nothing about threads or clocks: the real engine calls it under one lock from worker
threads, the simulator from an event loop with a virtual clock. `now` is whatever clock the
driver passes in.

Which ready task runs next is the policy's choice (sched/policies.py); whether its memory fits
is the memory manager's (sched/memory.py: network or layer granularity). The scheduler walks
ready tasks in policy order and starts the first one whose memory fits now.

Deadlock avoidance: under a guarded memory manager (the layer granularity) a task is admitted
only if it also leaves the state safe (`MemoryManager.safe`, the banker's check; the rule, its
invariant and why deadlocks arose are in sched/memory.py's docstring).

Progress rule (here, and only here: `_choose`): when nothing runs and no ready task is
admissible in any pool, the first task in policy order whose bytes fit is admitted even if not
safe (never needed while the avoidance invariant holds); failing that, the first task in policy
order is admitted over budget and the event is recorded (`forced`). With
`allow_overcommit=False`, `next_task` raises `BudgetError` instead for any task that would put
the ledger over capacity (the engine then fails that network).

Speed (long simulations run millions of tasks through here): what depends only on a planned
task's network and position is worked out once, in a `Plan` (sched/plans.py); an added task
points at its plan. Ready tasks wait in one heap per pool; with a static policy that gives a
rank (all built-in static ones) the heap holds integers, rank code * 2**128 + `Task.order` (compared
faster than tuples), and `_waiting` maps them to their tasks. Unfinished dependencies are
counted per position in the instance (`instance.pending`) and decremented by the positions the
plan lists, so no dependency lists are built.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from heapq import heappop, heappush

from edgecaffe.sched.graph import Kind, NetworkInstance, State, Task
from edgecaffe.sched.memory import NOW, MemoryManager
from edgecaffe.sched.plans import PlanBook
from edgecaffe.sched.policies import Policy
from edgecaffe.sched.speculation import IdleLedger

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
    """Ready tasks in policy order, admitted by a memory manager.

    `memory` is a `MemoryManager` (sched/memory.py); `allow_overcommit=False` turns the
    progress rule's forced admission into a `BudgetError`. `speculation`: when a gated
    instance's tasks may start before its gate opens, "spare" or "idle" (sched/
    speculation.py; only requests with a context other than "aware" plan such instances)."""

    def __init__(self, policy: Policy, memory: MemoryManager,
                 allow_overcommit: bool = True, speculation: str = "spare") -> None:
        self.policy = policy
        self.memory = memory
        self.budget = memory.budget
        self.allow_overcommit = allow_overcommit
        #: Pool -> ready tasks: for ranked policies a heap of keys, for other static ones a heap
        #: of ((key, task id), task), else a list of tasks.
        self._ready: dict[int, list] = {}
        self._waiting: dict[int, Task] = {}  # ranked: key -> ready task
        self._static = policy.static
        self._ranked = policy.ranked
        self._book = PlanBook(memory, policy, self._ready, self._waiting)
        self.running: set[Task] = set()
        self.instances: set[NetworkInstance] = set()
        #: Gated instances whose executions wait for their condition (context-oblivious).
        self._speculative: set[NetworkInstance] = set()
        #: The idle rule's figures (speculation "idle"), else None.
        self._idle = IdleLedger() if speculation == "idle" else None
        self.forced_events = 0
        #: Deadlock avoidance on (sched/memory.py); tasks admitted although not safe.
        self._guarded = memory.guarded
        self.unsafe_events = 0

    @property
    def granularity(self) -> str:
        return self.memory.granularity

    @property
    def active(self) -> set[NetworkInstance]:
        """Network instances whose init has started and that are not over."""
        return self.memory.active

    def reservation(self, task: Task) -> int:
        """Bytes `task` reserves when admitted, under this scheduler's granularity."""
        return self.memory.figures_of(task)[0]

    # -- adding work ---------------------------------------------------------------------------

    def add(self, instances: Iterable[NetworkInstance], now: float) -> list[Task]:
        """Register the instances' tasks; returns those ready at once. The executions of a
        `gated` instance also wait for `open_gate` (its inits and loads may run before)."""
        instances = list(instances)
        candidates = [self._plan_instance(instance, now) for instance in instances]
        if self._guarded:
            self.memory.link(instances)
        for instance in instances:
            if instance.gated:  # its executions wait for its condition too (`open_gate`)
                self._speculative.add(instance)
                pending = instance.pending
                for task in instance.tasks:
                    if task.spec.kind == Kind.EXEC:
                        pending[task.spec.index] += 1
            elif self._idle is not None:
                self._idle.opened(instance)
        ready = []
        for instance, roots in zip(instances, candidates, strict=True):
            tasks, pending = instance.tasks, instance.pending
            for index in roots:
                task = tasks[index]
                if pending[index] == 0 and task.state == WAITING:
                    self._make_ready(task, now)
                    ready.append(task)
        return ready

    def open_gate(self, instance: NetworkInstance, now: float) -> list[Task]:
        """A gated instance's condition held: its executions no longer wait for it. Returns
        the tasks now ready (sched/requests.py calls this; see `add`)."""
        ready: list[Task] = []
        if not instance.gated:
            return ready
        instance.gated = None
        self._speculative.discard(instance)
        if instance.failed is not None or instance not in self.instances:
            return ready
        if self._idle is not None:
            self._idle.gate_opened(instance)
        pending = instance.pending
        for task in instance.tasks:
            if task.spec.kind == Kind.EXEC:
                index = task.spec.index
                pending[index] -= 1
                if not pending[index] and task.state == WAITING:
                    self._make_ready(task, now)
                    ready.append(task)
        return ready

    def _plan_instance(self, instance: NetworkInstance, now: float) -> Sequence[int]:
        """Point the instance's tasks at their plans and count their unfinished dependencies;
        returns the positions that may be ready."""
        self.instances.add(instance)
        instance.created = now
        tasks = instance.tasks
        template = instance.template
        # Tasks linked by hand or across instances have their own dependency lists; the others
        # depend on their template's positions, none of them finished yet.
        if template is not None and len(tasks) == len(template.specs):
            entry = self._book.template(template, tasks)
            for task, plan in zip(tasks, entry.plans, strict=True):
                task.plan = plan
            linked = [task for task in tasks if task.has_own_links] if instance.linked else []
            counts, roots = entry.counts, template.roots
            instance.lean = entry.lean and not self.budget.record and self.memory.cache is None
            instance.held_bytes = entry.residual if instance.lean else 0
        else:
            for task in tasks:
                task.plan = self._book.single(task)
            counts, roots, linked = [0] * len(tasks), (), tasks
            instance.lean = False
        pending = instance.pending = counts.copy()
        for task in linked:
            pending[task.spec.index] = sum(1 for dep in task.deps if dep.state < DONE)
        if linked:
            roots = sorted({*roots, *(task.spec.index for task in linked)})
        return roots

    def _make_ready(self, task: Task, now: float) -> None:
        plan = task.plan
        if self._ranked:
            key = plan.key + task.order
            heappush(plan.heap, key)
            self._waiting[key] = task
        elif self._static:  # the key first: if the policy raises, the task stays as it was
            heappush(plan.heap, ((self.policy.key(task, now), task.id), task))
        else:
            plan.heap.append(task)
        task.state = READY
        task.ready = now
        if self._idle is not None:
            self._idle.made_ready(task)

    @property
    def ready_count(self) -> int:
        return sum(len(heap) for heap in self._ready.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.ready_count > 0

    # -- choosing ------------------------------------------------------------------------------

    def next_task(self, pool: int, now: float, worker: int | None = None) -> Task | None:
        """The next task for a worker of `pool`, admitted and reserved; None if none may run."""
        try:
            heap = self._ready[pool]
        except KeyError:
            return None
        if not heap:
            return None
        # The common case: the policy's best task fits now (a ranked heap's top is a key).
        if self._ranked:
            task = self._waiting[heap[0]]
        elif self._static:
            task = heap[0][1]
        else:
            task = None  # a dynamic policy's order is worked out afresh each time
        plan = None if task is None else task.plan
        if plan is not None and self.memory.fit(plan) is NOW and (
                self.allow_overcommit or self.memory.fit_bytes(plan.nbytes) is NOW) and (
                not self._speculative or self._spare(task)) and (
                not self._guarded or plan.nbytes <= 0 or (  # `_safe`, its common case inline
                    not plan.init and self.budget.capacity_bytes - self.budget.used_bytes
                    - plan.nbytes >= self.memory.total_need)
                or self.memory.safe(task, self.running)):
            if self._ranked:
                del self._waiting[heappop(heap)]
            else:
                heappop(heap)
        else:
            task = self._choose(heap, pool, now)
            if task is None:
                return None
            if not self.allow_overcommit and self.memory.fit_bytes(task.plan.nbytes) is not NOW:
                raise BudgetError(
                    f"{task!r} needs {task.plan.nbytes} bytes but only "
                    f"{self.budget.free_bytes} of {self.budget.capacity_bytes} are free and "
                    "nothing else is running", task)
            self._unready(task)
        if self._idle is not None:
            self._idle.left_ready(task, task._instance())
        # Start it: reserve its memory (a forced admission if that goes over capacity).
        plan = task.plan
        if (plan.nbytes > 0 or plan.init or plan.hit is not None) and \
                self.memory.reserve(task, task._instance(), now):
            task.forced = True
            self.forced_events += 1
        task.state = RUNNING
        task.start = now
        task.worker = worker
        self.running.add(task)
        if plan.init and plan.path is not None:  # a guarded unit becomes active
            self.memory.started(task, task._instance())
        return task

    def _admits(self, task: Task) -> bool:
        """Whether `task`'s memory fits now and, if guarded, leaves the state safe."""
        return self.memory.fit(task.plan) is NOW and (
            not self._speculative or self._spare(task)) and (
            not self._guarded or self._safe(task))

    def _safe(self, task: Task) -> bool:
        """`MemoryManager.safe`, its most common answers first: a task that reserves nothing,
        or that leaves free what every active unit may still need."""
        plan = task.plan
        nbytes = plan.nbytes
        if nbytes <= 0:
            return True
        memory, budget = self.memory, self.budget
        if not plan.init and \
                budget.capacity_bytes - budget.used_bytes - nbytes >= memory.total_need:
            return True
        return memory.safe(task, self.running)

    def _choose(self, heap: list, pool: int, now: float) -> Task | None:
        """The first of the pool's ready tasks, in policy order, whose memory fits now; else
        the progress rule's choice; else None."""
        order = self._in_order(heap, now)
        admits = self._admits
        chosen = next((task for task in order if admits(task)), None)
        if chosen is not None:
            return chosen
        if self.running or self._fits_elsewhere(pool, now, admits):
            return None
        # The progress rule: nothing runs and nothing is admissible anywhere. Never for
        # speculation: its parent (ready, or it would run) comes first.
        if self._guarded:  # not safe, but within the budget (the avoidance rule's fallback)
            fits = lambda task: (self.memory.fit(task.plan) is NOW  # noqa: E731
                                 and not task._instance().gated)
            chosen = next((task for task in order if fits(task)), None)
            if chosen is not None:
                self.unsafe_events += 1
                return chosen
            if self._fits_elsewhere(pool, now, fits):
                return None
        return next((task for task in order if not task._instance().gated), None)

    def _spare(self, task: Task) -> bool:
        """Whether `task` may take its memory as far as speculation goes: a task of a gated
        instance still waiting for its condition only by the speculation rule (sched/
        speculation.py): "spare", when its bytes fit together with what its parent has yet
        to reserve (so that it never holds memory its parent needs to end and resolve it);
        "idle", when no other task is ready and its bytes fit together with what every open
        instance has yet to reserve. Any other task, always."""
        parent = task._instance().gated
        if parent is None or parent.failed is not None:
            return True
        idle = self._idle
        if idle is not None:
            return self.ready_count == idle.ready and \
                self.memory.fit_bytes(task.plan.nbytes + idle.open_need_bytes) is NOW
        need = task.plan.nbytes + sum(t.plan.nbytes for t in parent.tasks
                                      if t.state <= READY and t.plan is not None)
        return self.memory.fit_bytes(need) is NOW

    def _in_order(self, heap: list, now: float) -> list[Task]:
        """The ready tasks of one pool, best first by the policy."""
        if self._ranked:
            return [self._waiting[key] for key in sorted(heap)]
        if self._static:
            return [entry[1] for entry in sorted(heap)]
        return sorted(heap, key=lambda task: (self.policy.key(task, now), task.id))

    def _fits_elsewhere(self, pool: int, now: float, admits) -> bool:
        return any(admits(task) for other, heap in self._ready.items() if other != pool
                   for task in self._in_order(heap, now))

    def _unready(self, task: Task) -> None:
        heap = task.plan.heap
        if self._ranked:
            key = task.plan.key + task.order
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
        if instance.failed is None:  # a failed instance's reservations go when it is over
            if error is not None:
                task.error = str(error)
                self._fail(instance, str(error), now, [] if ready is None else ready, task)
            elif plan.releases or plan.keep is not None:
                self.memory.release_after(task, instance, now)
        if task._dependents is not None:
            self._unblock(task, instance, now, [] if ready is None else ready)
        elif plan.dependents:  # `_unblock`'s common case, here: once per task of a simulation
            pending = instance.pending
            tasks = instance.tasks
            for index in plan.dependents:
                count = pending[index] = pending[index] - 1
                if not count and tasks[index].state == WAITING:
                    self._make_ready(tasks[index], now)
                    if ready is not None:
                        ready.append(tasks[index])
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
        self._speculative.discard(instance)
        self.memory.held_after_failure(instance, failing)
        idle = self._idle
        for task in instance.tasks:
            if task.state in (WAITING, READY):
                if task.state == READY:
                    self._unready(task)
                    if idle is not None:
                        idle.left_ready(task, instance)
                elif idle is not None:
                    idle.skipped(task, instance)
                task.state = SKIPPED
                task.end = now
        for task in instance.tasks:
            if task.state == SKIPPED:
                self._unblock(task, instance, now, ready)

    def _unblock(self, task: Task, instance: NetworkInstance, now: float,
                 ready: list[Task]) -> None:
        """Count `task` as finished for its dependents; those left with none become ready."""
        if task._dependents is None:  # the template's links, by position in the instance
            if task.plan is None:
                return  # its instance was never added: nothing counts on it
            pending = instance.pending
            tasks = instance.tasks
            for index in task.plan.dependents:
                count = pending[index] = pending[index] - 1
                if not count and tasks[index].state == WAITING:
                    self._make_ready(tasks[index], now)
                    ready.append(tasks[index])
            return
        for dependent in task._dependents:  # linked by hand or across instances
            other = dependent._instance()
            if other is None or not other.pending:
                continue  # not added (yet): `add` counts its unfinished dependencies
            index = dependent.spec.index
            other.pending[index] -= 1
            if not other.pending[index] and dependent.state == WAITING:
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
        self.memory.release_instance(instance, now)
        self.instances.discard(instance)
        if self._idle is not None:
            self._idle.over(instance)
        finished.append(instance)
