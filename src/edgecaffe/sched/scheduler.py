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
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.graph import Kind, NetworkInstance, State, Task
from edgecaffe.sched.policies import Policy

GRANULARITIES = ("layer", "network")


class BudgetError(MemoryError):
    """A network that cannot run within the budget when overcommitting is not allowed."""

    def __init__(self, message: str, task: Task | None = None) -> None:
        super().__init__(message)
        self.task = task


@dataclass
class Step:
    """What one `finish` (or `fail`) changed: tasks now ready, network instances now over."""

    ready: list[Task] = field(default_factory=list)
    finished: list[NetworkInstance] = field(default_factory=list)


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
        self._ready: dict[int, list] = {}
        self.running: set[Task] = set()
        self.active: set[NetworkInstance] = set()
        self.instances: set[NetworkInstance] = set()
        self.forced_events = 0

    # -- planning-time figures -----------------------------------------------------------------

    def reservation(self, task: Task) -> int:
        """Bytes `task` reserves when admitted, under this scheduler's granularity."""
        info = task.instance.info
        if self.granularity == "network":
            return info.peak_bytes if task.kind == Kind.INIT else 0
        if task.kind == Kind.INIT:
            return info.input_bytes
        if task.whole_model:
            if task.kind == Kind.LOAD:
                return info.weight_bytes
            return max(0, info.peak_activation_bytes - info.input_bytes)
        layer = info.layer(task.layers[0])
        if task.kind == Kind.LOAD:
            return layer.weight_bytes + layer.output_bytes
        return 0 if layer.weighted else layer.output_bytes

    # -- adding work ---------------------------------------------------------------------------

    def add(self, instances: Iterable[NetworkInstance], now: float) -> list[Task]:
        """Register the instances' tasks; returns those ready at once."""
        ready = []
        for instance in instances:
            self.instances.add(instance)
            instance.state.setdefault("held", {})
            instance.state["readers"] = instance.info.readers
            for task in instance.tasks:
                task.created = now
                task.reserve_bytes = self.reservation(task)
                task.unfinished = sum(1 for dep in task.deps if not dep.finished)
        for instance in instances:
            for task in instance.tasks:
                if task.state == State.WAITING and task.unfinished == 0:
                    self._make_ready(task, now)
                    ready.append(task)
        return ready

    def _make_ready(self, task: Task, now: float) -> None:
        task.state = State.READY
        task.ready = now
        heap = self._ready.setdefault(task.pool, [])
        if self.policy.static:
            heapq.heappush(heap, (self.policy.key(task, now), task.id, task))
        else:
            heap.append(task)

    @property
    def ready_count(self) -> int:
        return sum(len(heap) for heap in self._ready.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.ready_count > 0

    # -- choosing ------------------------------------------------------------------------------

    def _admits(self, task: Task) -> bool:
        if self.budget.fits(task.reserve_bytes):
            return True
        # The original Masa: an init may always start when no network is active.
        return self.granularity == "network" and task.kind == Kind.INIT and not self.active

    def next_task(self, pool: int, now: float, worker: int | None = None) -> Task | None:
        """The next task for a worker of `pool`, admitted and reserved; None if none may run."""
        heap = self._ready.get(pool)
        if not heap:
            return None
        if self.policy.static and self._admits(heap[0][2]):
            chosen = heap[0][2]  # the common case: the best task fits
            order = [chosen]
        else:
            order = self._in_order(heap, now)
            chosen = next((task for task in order if self._admits(task)), None)
        if chosen is None and not self.running and not self._admissible_elsewhere(pool, now):
            chosen = order[0]  # the progress rule: nothing runs and nothing fits anywhere
        if chosen is None:
            return None
        self._unready(chosen)
        if not self.allow_overcommit and not self.budget.fits(chosen.reserve_bytes):
            self._make_ready(chosen, now)
            raise BudgetError(
                f"{chosen!r} needs {chosen.reserve_bytes} bytes but only "
                f"{self.budget.free_bytes} of {self.budget.capacity_bytes} are free and nothing "
                "else is running",
                chosen,
            )
        self._start(chosen, now, worker)
        return chosen

    def _in_order(self, heap: list, now: float) -> list[Task]:
        """The ready tasks of one pool, best first by the policy."""
        if self.policy.static:
            return [entry[2] for entry in sorted(heap)]
        return sorted(heap, key=lambda task: (self.policy.key(task, now), task.id))

    def _admissible_elsewhere(self, pool: int, now: float) -> bool:
        return any(self._admits(task) for other, heap in self._ready.items() if other != pool
                   for task in self._in_order(heap, now))

    def _start(self, task: Task, now: float, worker: int | None) -> None:
        instance = task.instance
        forced = not self.budget.fits(task.reserve_bytes)
        task.forced = forced
        if forced:
            self.forced_events += 1
        self.budget.reserve(task.reserve_bytes, now, f"{task.label} of {instance.name}", task.id,
                            instance.id, forced)
        self._hold(task)
        if task.kind == Kind.INIT:
            self.active.add(instance)
        task.state = State.RUNNING
        task.start = now
        task.worker = worker
        self.running.add(task)

    def _hold(self, task: Task) -> None:
        """Remember under which keys `task`'s reservation is held, to return it piece by piece."""
        held: dict[str, int] = task.instance.state["held"]
        info = task.instance.info
        if task.reserve_bytes == 0:
            return
        if self.granularity == "network":
            held["network"] = held.get("network", 0) + task.reserve_bytes
            return
        if task.kind == Kind.INIT:
            for blob in info.inputs:
                held[f"a:{blob}"] = info.buffer_bytes[blob]
            return
        if task.whole_model:
            held["w:*" if task.kind == Kind.LOAD else "a:*"] = task.reserve_bytes
            return
        layer = info.layer(task.layers[0])
        if task.kind == Kind.LOAD:
            held[f"w:{layer.name}"] = layer.weight_bytes
        for owner in layer.writes:
            held[f"a:{owner}"] = info.buffer_bytes[owner]

    # -- finishing -----------------------------------------------------------------------------

    def _release(self, instance: NetworkInstance, key: str, now: float, task_id: int | None,
                 reason: str) -> None:
        nbytes = instance.state["held"].pop(key, 0)
        self.budget.release(nbytes, now, reason, task_id, instance.id)

    def finish(self, task: Task, now: float, error: BaseException | str | None = None) -> Step:
        """Record that `task` ended (with `error` if it raised); returns what that unblocked."""
        self.running.discard(task)
        task.end = now
        task.state = State.DONE
        instance = task.instance
        step = Step()
        if error is not None and instance.failed is None:
            task.error = str(error)
            self._fail(instance, str(error), now, step)
        elif instance.failed is None:
            self._release_after(task, now)
        self._unblock(task, now, step)
        self._maybe_finished(instance, now, step)
        return step

    def fail(self, instance: NetworkInstance, reason: str, now: float) -> Step:
        """Give up on a network instance (an error elsewhere, or a cancelled request)."""
        step = Step()
        if instance.failed is None:
            self._fail(instance, reason, now, step)
        self._maybe_finished(instance, now, step)
        return step

    def _fail(self, instance: NetworkInstance, reason: str, now: float, step: Step) -> None:
        instance.failed = reason
        for task in instance.tasks:
            if task.state in (State.WAITING, State.READY):
                if task.state == State.READY:
                    self._unready(task)
                task.state = State.SKIPPED
                task.end = now
        for task in instance.tasks:
            if task.state == State.SKIPPED:
                self._unblock(task, now, step)

    def _unready(self, task: Task) -> None:
        heap = self._ready[task.pool]
        if not self.policy.static:
            heap.remove(task)
        elif heap[0][2] is task:
            heapq.heappop(heap)
        else:
            heap[:] = [entry for entry in heap if entry[2] is not task]
            heapq.heapify(heap)

    def _release_after(self, task: Task, now: float) -> None:
        if self.granularity == "network" or task.kind != Kind.EXEC:
            return
        instance = task.instance
        if task.whole_model:
            return  # bulk: everything goes when the network finishes (this is its last task)
        layer = instance.info.layer(task.layers[0])
        if self.per_layer:
            self._release(instance, f"w:{layer.name}", now, task.id, f"free {layer.name}")
        readers = instance.state["readers"]
        for owner in layer.reads:
            readers[owner] -= 1
            if readers[owner] == 0 and owner not in instance.info.outputs:
                self._release(instance, f"a:{owner}", now, task.id, f"drop {owner}")

    def _unblock(self, task: Task, now: float, step: Step) -> None:
        for dependent in task.dependents:
            dependent.unfinished -= 1
            if dependent.unfinished == 0 and dependent.state == State.WAITING:
                self._make_ready(dependent, now)
                step.ready.append(dependent)

    def _maybe_finished(self, instance: NetworkInstance, now: float, step: Step) -> None:
        if instance not in self.instances:
            return
        if instance.failed is None:
            over = instance.last.state == State.DONE
        else:
            over = all(task.state != State.RUNNING for task in instance.tasks)
        if not over:
            return
        for key in list(instance.state["held"]):
            self._release(instance, key, now, None, f"end of {instance.name}")
        self.active.discard(instance)
        self.instances.discard(instance)
        step.finished.append(instance)
