"""Tasks and their dependencies: the data a mode's planner produces and a scheduler consumes.

Long simulations create millions of tasks, so a task is a small slotted object: what every copy
of one planned task shares (kind, layers, pool, links to the other tasks of its network) lives
in one `TaskSpec`, and a task has dependency lists of its own only once it is linked beyond its
spec (`after`); the scheduler follows the spec's positions otherwise. A network instance owns its
tasks; a task holds its instance weakly, so that a finished request is freed as soon as nobody
holds it, without the cycle collector.
"""

from __future__ import annotations

import weakref
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from edgecaffe.sched.info import NetworkInfo

if TYPE_CHECKING:
    from edgecaffe.sched.planner import Template


class Kind(IntEnum):
    """Task kinds, numbered as Masa orders them within one network (exec, then load, then init)."""

    EXEC = 0
    LOAD = 1
    INIT = 2


class State(IntEnum):
    WAITING = 0   # dependencies unfinished
    READY = 1     # may run; waiting for a worker and for memory
    RUNNING = 2
    DONE = 3
    SKIPPED = 4   # its network failed or was cancelled before it ran


_LABELS = {Kind.INIT: "init", Kind.LOAD: "load", Kind.EXEC: "exec"}
_WAITING = State.WAITING  # a module constant: faster than the enum class's attribute


class TaskSpec:
    """One task of a network's graph as its mode plans it, shared by every copy of it: position
    in `instance.tasks`, kind, layers, pool, and the positions of its dependencies and dependents
    within the same instance."""

    __slots__ = ("dependents", "deps", "index", "kind", "layers", "pool", "whole_model")

    def __init__(self, index: int, kind: Kind, layers: tuple[str, ...] = (), pool: int = 0,
                 whole_model: bool = False, deps: tuple[int, ...] = (),
                 dependents: tuple[int, ...] = ()) -> None:
        self.index = index
        self.kind = kind
        #: The layers it loads or executes, in order; empty for INIT. Whole-model tasks (bulk
        #: modes) hold every layer.
        self.layers = layers
        #: Worker pool (DeepEye keeps init + conv on pool 0 and fc on pool 1).
        self.pool = pool
        #: A bulk task: loads or executes the whole model at once.
        self.whole_model = whole_model
        self.deps = deps
        self.dependents = dependents


class Task:
    """One unit of work: init a network instance, load or execute one layer (or all of them).

    `kind`, `layers`, `pool` and `whole_model` come from its spec. `deps` and `dependents` are
    lists of tasks, built on first use from the spec's positions (links across instances, added
    with `after`, are kept in them)."""

    __slots__ = ("_dependents", "_deps", "_instance", "cached", "end", "error", "forced", "id",
                 "plan", "ready", "spec", "start", "state", "worker")

    def __init__(self, id: int, spec: TaskSpec, instance: NetworkInstance) -> None:
        self.id = id
        self.spec = spec
        self._instance = instance.ref
        self._deps: list[Task] | None = None
        self._dependents: list[Task] | None = None
        self.state = _WAITING
        self.ready: float | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.worker: int | None = None
        #: Admitted over budget by the progress rule.
        self.forced = False
        #: A load whose weights were kept in memory (sched/cache.py): nothing to read.
        self.cached = False
        self.error: str | None = None
        #: The scheduler's plan for it (memory, pool, order), set when the scheduler adds it.
        self.plan: Any = None

    @property
    def instance(self) -> NetworkInstance:
        """Its network instance. (Held weakly: the instance owns its tasks, and a task that
        owned its instance too would make every finished request a reference cycle, left to
        the cycle collector; millions of them in a long simulation.)"""
        instance = self._instance()
        if instance is None:
            raise ReferenceError(f"task {self.id}: its network instance no longer exists; keep "
                                 "the instance (as a request does) while using its tasks")
        return instance

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    @property
    def layers(self) -> tuple[str, ...]:
        return self.spec.layers

    @property
    def pool(self) -> int:
        return self.spec.pool

    @property
    def whole_model(self) -> bool:
        return self.spec.whole_model

    @property
    def deps(self) -> tuple[Task, ...]:
        """The tasks it waits for (read-only; add with `after`)."""
        if self._deps is not None:
            return tuple(self._deps)
        tasks = self.instance.tasks
        return tuple(tasks[i] for i in self.spec.deps)

    @property
    def dependents(self) -> tuple[Task, ...]:
        """The tasks that wait for it (read-only; linked with `after`)."""
        if self._dependents is not None:
            return tuple(self._dependents)
        tasks = self.instance.tasks
        return tuple(tasks[i] for i in self.spec.dependents)

    @property
    def has_own_links(self) -> bool:
        """Whether its dependencies were changed from its spec's (`after`)."""
        return self._deps is not None

    def keep_links(self) -> Task:
        """Give the task its own dependency and dependents lists, built from its spec now.

        A task that stays linkable after its instance is gone (the last task of a chained
        mode's previous network) needs them: it holds its instance weakly, so it cannot build
        them later."""
        if self._deps is None:
            instance = self.instance
            self._deps = [instance.tasks[i] for i in self.spec.deps]
            instance.linked = True
        if self._dependents is None:
            tasks = self.instance.tasks
            self._dependents = [tasks[i] for i in self.spec.dependents]
        return self

    @property
    def created(self) -> float:
        """When the scheduler was given it (its instance's time of adding)."""
        return self.instance.created

    @property
    def order(self) -> int:
        """Creation order as policies break ties: its request's place in the queue
        (`NetworkInstance.order`), then its id, as one integer (order * 2**64 + id). For
        requests planned whole when submitted this is the id's order; a gated network planned
        later, or a request submitted in an earlier one's place (a pipeline's later stage),
        ranks with that request, not after every task created meanwhile."""
        return (self.instance.order << 64) + self.id

    @property
    def reserve_bytes(self) -> int:
        """Bytes the ledger reserves when the task is admitted (by the scheduler's granularity;
        0 until a scheduler has it)."""
        return 0 if self.plan is None else self.plan.nbytes

    def after(self, *tasks: Task | None) -> Task:
        """Add dependencies (None and duplicates ignored); both sides get their own lists."""
        self.keep_links()
        for task in tasks:
            if task is not None and task is not self and task not in self._deps:
                self._deps.append(task)
                task.keep_links()._dependents.append(self)
        return self

    @property
    def finished(self) -> bool:
        return self.state >= State.DONE

    @property
    def label(self) -> str:
        spec = self.spec
        target = "all layers" if spec.whole_model else (spec.layers[0] if spec.layers else "")
        return f"{_LABELS[spec.kind]} {target}".strip()

    def __repr__(self) -> str:
        instance = self._instance()
        of = "a network instance no longer there" if instance is None else \
            f"{instance.name}#{instance.id}"
        return f"<Task {self.id} {self.label} of {of}>"


class NetworkInstance:
    """One network of one request: its tasks and the bookmarks that cross-network links use."""

    __slots__ = ("__weakref__", "arrival", "created", "dropped", "failed", "frontier", "gated",
                 "group", "held",
                 "held_bytes", "id", "info", "input", "lean", "linked", "marks", "order",
                 "pending", "ref", "request_id", "result_key", "tasks", "template", "work")

    def __init__(self, id: int, request_id: int, info: NetworkInfo,
                 tasks: list[Task] | None = None, marks: dict[str, Task] | None = None) -> None:
        self.id = id
        self.request_id = request_id
        self.info = info
        #: What its tasks hold it by.
        self.ref = weakref.ref(self)
        self.tasks: list[Task] = [] if tasks is None else tasks
        #: Named tasks for linking: init, first/last of loads and execs per stage, last.
        self.marks: dict[str, Task] = {} if marks is None else marks
        self.failed: str | None = None
        #: A gated network (sched/requests.py): `gated` is its parent instance while its execs
        #: wait for its condition (a context-oblivious speculative instance, whose input is
        #: not known yet), else None;
        #: `dropped` once its condition failed (it then also has `failed` set, as the reason,
        #: but its request does not fail for it).
        self.gated: NetworkInstance | None = None
        self.dropped = False
        #: When its request arrived (the driver's clock; None: when the scheduler got it),
        #: its key in the request's result (`AgeNet`, `AgeNet#2` for a second AgeNet) and its
        #: input (whatever the driver submitted; the core never reads it).
        self.arrival: float | None = None
        self.result_key = ""
        self.input: Any = None
        #: What the engine's tasks keep while the instance runs (the simulator: nothing).
        self.work: Any = None
        #: The planner's template its tasks were copied from (None: built task by task), and
        #: whether a task has its own dependency list (linked with `after`).
        self.template: Template | None = None
        self.linked = False
        #: The scheduler's bookkeeping: when it was added; the bytes it holds per ledger key,
        #: or in all (`lean`: no ledger to write, see sched/memory.py); per task (by position)
        #: how many dependencies have not finished.
        self.created = 0.0
        self.held: dict[str, int] = {}
        self.held_bytes = 0
        self.lean = False
        self.pending: list[int] = []
        #: Deadlock avoidance (sched/avoidance.py): how many tasks of its path have started;
        #: the group it belongs to when its tasks wait on other instances' (DeepEye).
        self.frontier = 0
        self.group: Any = None
        #: Its request's place in the queue (`Task.order`): the request id, or an earlier
        #: request's when submitted in its place (sched/requests.py); 0 when built by hand.
        self.order = 0

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def first(self) -> Task:
        return self.tasks[0]

    @property
    def last(self) -> Task:
        return self.marks["last"]

    def __repr__(self) -> str:
        return f"<NetworkInstance {self.name}#{self.id} of request {self.request_id}>"
