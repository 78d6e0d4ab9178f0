"""Policies: which ready task runs next. Each is a small object with a sort key.

The scheduler walks ready tasks in key order (lowest first) and starts the first one the memory
budget admits; admission is the scheduler's job, ordering is the policy's. To write your own,
subclass `Policy`, give it a `name` and a `key`, and pass an instance to the engine.

Ties go to creation order, `Task.order`: the task's request's place in the queue, then its
id (the id's order, except for tasks planned after their request: a gated network's, or a
request submitted in an earlier one's place, which rank with that request).

The built-in static policies also give a `rank`: their key without the final `task.order`, a
function of the task's network and kind only. The scheduler then orders tasks by (rank, id),
the same order as the key's, but works the rank out once per planned task rather than once per
ready task (see `Scheduler`). A subclass that overrides `key` without `rank` is ordered by its
`key`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from edgecaffe.errors import ConfigError
from edgecaffe.sched.graph import Kind, Task


class Policy:
    name: ClassVar[str] = ""
    #: True when `key` does not depend on the time (the scheduler may then keep a heap).
    static: ClassVar[bool] = True

    def key(self, task: Task, now: float) -> Any:
        raise NotImplementedError

    def rank(self, task: Task) -> Any:
        """For a static policy whose key is `(*rank, task.order)`: that rank, which may depend on
        the task's network and kind only. None: not given (the scheduler uses `key`)."""
        return None

    @property
    def ranked(self) -> bool:
        """Whether `rank` stands for `key`: both come from the same class."""
        owner = next(cls for cls in type(self).__mro__ if "key" in cls.__dict__)
        return self.static and "rank" in owner.__dict__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FCFS(Policy):
    """Task creation order (the original's FCFSScheduler: by task id, not by readiness;
    `Task.order`)."""

    name = "fcfs"

    def key(self, task: Task, now: float) -> tuple:
        return (task.order,)

    def rank(self, task: Task) -> tuple:
        return ()


class ExecFirst(Policy):
    """Executions before loads and inits, each in creation order (the original's execprio)."""

    name = "execprio"

    def key(self, task: Task, now: float) -> tuple:
        return (*self.rank(task), task.order)

    def rank(self, task: Task) -> tuple:
        return (task.kind != Kind.EXEC,)


class Masa(Policy):
    """The paper's Masa: executions first; then loads and inits shortest network first (by mean
    execution time), loads before inits within a network, then creation order (§3.2)."""

    name = "masa"

    def key(self, task: Task, now: float) -> tuple:
        return (*self.rank(task), task.order)

    def rank(self, task: Task) -> tuple:
        return (task.kind != Kind.EXEC, task.instance.info.mean_exec_ms, task.kind)


class SJF(Policy):
    """Shortest job first: tasks of the network with the smallest mean execution time first."""

    name = "sjf"

    def key(self, task: Task, now: float) -> tuple:
        return (*self.rank(task), task.order)

    def rank(self, task: Task) -> tuple:
        return (task.instance.info.mean_exec_ms, task.kind != Kind.EXEC)


class HRRN(Policy):
    """Highest response ratio next: 1 + waiting / service, where waiting is the time since the
    task's request arrived and service its network's mean execution time. Short networks go first
    while nothing has waited; long waits age a network up (what the original left unfinished)."""

    name = "hrrn"
    static = False

    def key(self, task: Task, now: float) -> tuple:
        instance = task.instance
        service_ms = instance.info.mean_exec_ms
        arrival = instance.created if instance.arrival is None else instance.arrival
        waiting_ms = max(0.0, (now - arrival) * 1e3) + 1.0
        ratio = 1.0 + waiting_ms / service_ms if service_ms > 0 else float("inf")
        return (task.kind != Kind.EXEC, -ratio, task.order)


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (FCFS, ExecFirst, Masa, SJF, HRRN)}


def get_policy(policy: str | Policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ConfigError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}") from None
