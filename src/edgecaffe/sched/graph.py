"""Tasks and their dependencies: the data a mode's planner produces and a scheduler consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from edgecaffe.sched.info import NetworkInfo


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


@dataclass(eq=False)
class Task:
    """One unit of work: init a network instance, load or execute one layer (or all of them)."""

    id: int
    kind: Kind
    instance: NetworkInstance
    #: The layers it loads or executes, in order; empty for INIT. Whole-model tasks (bulk
    #: modes) hold every layer.
    layers: tuple[str, ...] = ()
    #: Worker pool (DeepEye keeps init + conv on pool 0 and fc on pool 1).
    pool: int = 0
    #: A bulk task: loads or executes the whole model at once.
    whole_model: bool = False
    deps: list[Task] = field(default_factory=list)
    dependents: list[Task] = field(default_factory=list)
    #: Bytes the ledger reserves when the task is admitted (set by the scheduler's granularity).
    reserve_bytes: int = 0
    state: State = State.WAITING
    unfinished: int = 0
    created: float = 0.0
    ready: float | None = None
    start: float | None = None
    end: float | None = None
    worker: int | None = None
    forced: bool = False  # admitted over budget by the progress rule
    error: str | None = None

    def after(self, *tasks: Task | None) -> Task:
        """Add dependencies (None and duplicates ignored)."""
        for task in tasks:
            if task is not None and task is not self and task not in self.deps:
                self.deps.append(task)
                task.dependents.append(self)
        return self

    @property
    def finished(self) -> bool:
        return self.state >= State.DONE

    @property
    def label(self) -> str:
        what = {Kind.INIT: "init", Kind.LOAD: "load", Kind.EXEC: "exec"}[self.kind]
        target = "all layers" if self.whole_model else (self.layers[0] if self.layers else "")
        return f"{what} {target}".strip()

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.label} of {self.instance.name}#{self.instance.id}>"


@dataclass(eq=False)
class NetworkInstance:
    """One network of one request: its tasks and the bookmarks that cross-network links use."""

    id: int
    request_id: int
    info: NetworkInfo
    tasks: list[Task] = field(default_factory=list)
    #: Named tasks for linking: init, first/last of loads and execs per stage, last.
    marks: dict[str, Task] = field(default_factory=dict)
    failed: str | None = None
    #: Runtime state the engine or simulator attaches (weights, activations, outputs).
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def first(self) -> Task:
        return self.tasks[0]

    @property
    def last(self) -> Task:
        return self.marks["last"]
