"""A user policy behind a guard: whatever its `key` raises or returns fails only the network
whose task it could not order, never the scheduler or a worker.

The project's own policies (those in `sched/policies.py`) are trusted and run unguarded. A
guarded policy's key for a task is a `_GuardedKey`: it compares as the user's key does, and a
key that raised, or that cannot be compared with another (None, a string against a tuple),
sorts after every other and marks its task's network as failed. The engine fails those networks
as soon as the scheduler call that asked for the keys returns (`take_failures`); a
`KeyboardInterrupt` raised in `key` also asks the engine to shut down. The guard gives no
`rank` (the scheduler then orders by `key`), so every task's key is asked for and guarded; a
policy's `rank` must stand for its `key` anyway (the scheduler checks it), so the order is the
same as the simulator's.
"""

from __future__ import annotations

from typing import Any

from edgecaffe.sched import NetworkInstance, Policy, Task, get_policy
from edgecaffe.sched import policies as builtin_policies


class PolicyGuard(Policy):
    """Wraps a user's `Policy`; `take_failures` lists (instance, reason) for each network whose
    task the policy could not order since the last call; `interrupted` says a Ctrl-C came
    through `key`."""

    def __init__(self, policy: Policy) -> None:
        self.inner = policy
        self.name = policy.name
        self.static = policy.static
        self.interrupted = False
        self._failures: list[tuple[NetworkInstance, str]] = []

    @classmethod
    def wrap(cls, policy: str | Policy | None) -> PolicyGuard | None:
        """A guard for a user's policy object; None for a built-in policy or a name."""
        if policy is None or isinstance(policy, str):
            return None
        policy = get_policy(policy)
        if type(policy).__module__ == builtin_policies.__name__:  # the project's own: trusted
            return None
        return cls(policy)

    @property
    def ranked(self) -> bool:
        return False

    def key(self, task: Task, now: float) -> Any:
        try:
            return _GuardedKey(self.inner.key(task, now), task, self)
        except BaseException as error:  # a user's code: contain all of it
            if isinstance(error, KeyboardInterrupt):
                self.interrupted = True
            self.failed(task, f"key() raised {type(error).__name__}: {error}")
            return _GuardedKey(None, task, self, broken=True)

    def failed(self, task: Task, why: str) -> None:
        instance = task.instance
        if all(failed is not instance for failed, _ in self._failures):
            self._failures.append((instance, f"policy {self.name!r} could not order "
                                             f"{task.label}: {why}"))

    def take_failures(self) -> list[tuple[NetworkInstance, str]]:
        failures, self._failures = self._failures, []
        return failures


class _GuardedKey:
    """A user's key that never raises when compared: a broken one sorts last."""

    __slots__ = ("broken", "guard", "key", "task")

    def __init__(self, key: Any, task: Task, guard: PolicyGuard, broken: bool = False) -> None:
        self.key = key
        self.task = task
        self.guard = guard
        self.broken = broken

    def __lt__(self, other: _GuardedKey) -> bool:
        if self.broken or other.broken:
            return not self.broken and other.broken
        try:
            return bool(self.key < other.key)
        except Exception as error:  # keys that do not compare: this task's network fails
            self.broken = True
            self.guard.failed(self.task, f"its key {self.key!r} does not compare with "
                                         f"{other.key!r} ({type(error).__name__})")
            return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _GuardedKey) or self.broken or other.broken:
            return self is other
        try:
            return bool(self.key == other.key)
        except Exception:
            return False

    __hash__ = None  # type: ignore[assignment]
