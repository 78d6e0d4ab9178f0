"""A user policy behind a guard: an exception in its `key` fails the network whose task it
could not order, never the scheduler or a worker.

The project's own policies (those in `sched/policies.py`) are trusted and run unguarded. A
guarded policy's keys become `(0, key)`, and a task whose key raised gets `(1, task id)`: it
sorts after every other task (no comparison of the user's key with ours), and the engine fails
its network as soon as the scheduler call that asked for the key returns (`take_failures`).
The guard gives no `rank` (the scheduler then orders by `key`), so every task's key is asked
for and guarded; a policy's `rank` must stand for its `key` anyway (the scheduler checks it),
so the order is the same as the simulator's.
"""

from __future__ import annotations

from typing import Any

from edgecaffe.sched import NetworkInstance, Policy, Task, get_policy
from edgecaffe.sched import policies as builtin_policies


class PolicyGuard(Policy):
    """Wraps a user's `Policy`; `take_failures` lists (instance, reason) for each network whose
    task the policy could not order since the last call."""

    def __init__(self, policy: Policy) -> None:
        self.inner = policy
        self.name = policy.name
        self.static = policy.static
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
            return (0, self.inner.key(task, now))
        except Exception as error:
            return self._failed(task, error)

    def _failed(self, task: Task, error: Exception) -> tuple[int, int]:
        self._failures.append((task.instance, f"policy {self.name!r} could not order "
                               f"{task.label}: key() raised {type(error).__name__}: {error}"))
        return (1, task.id)

    def take_failures(self) -> list[tuple[NetworkInstance, str]]:
        failures, self._failures = self._failures, []
        return failures
