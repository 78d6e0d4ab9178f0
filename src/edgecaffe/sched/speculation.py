"""Speculative loads of gated networks: how much of the budget they may take.

A gated network's speculative instance (a context setting other than "aware", sched/
requests.py) may init and load before its gate resolves; its executions wait for the gate.
Two rules say when such a task may start, one per setting:

* `oblivious` (`spare`): whenever the policy puts it first and its bytes fit together with
  what its own parent has yet to reserve, so that it never holds what its parent needs to end
  and resolve it.
* `aware-idle` (`idle`): a speculative task starts only when no task of an ungated or opened
  network is ready (every one of them has started, in policy order, or waits for its
  dependencies) and its bytes fit together with everything the open ungated and opened
  instances have yet to reserve. Speculation then only takes budget and workers nothing else
  asks for, and whatever it holds never makes those instances wait for memory: the ledger
  keeps `used + open need <= capacity` from one speculative start to the next, since an open
  instance's start only turns its need into use. It covers the instances open when the
  speculative task starts: a request that arrives later may find memory that speculation
  holds until its gate resolves (at the latest when its parent ends), and a ready task
  that arrives while a speculative load runs may wait for that load's worker (tasks are not
  preempted).

`IdleLedger` keeps the two figures the idle rule reads, up to date as tasks become ready,
start and are skipped, so that the check costs O(1) (a simulation asks it for every
speculative task it considers).
"""

from __future__ import annotations

from edgecaffe.sched.graph import NetworkInstance, State, Task

#: The scheduler's rule per context setting (None: nothing is speculative).
RULES = {"aware": None, "oblivious": "spare", "aware-idle": "idle"}

WAITING, READY = State.WAITING, State.READY


def unstarted_bytes(instance: NetworkInstance) -> int:
    """What an instance's tasks that have not started will reserve (each task's `Plan.nbytes`
    at least 0: an upper bound of what it still needs beyond what it holds)."""
    return sum(max(0, task.plan.nbytes) for task in instance.tasks
               if task.state <= READY and task.plan is not None)


class IdleLedger:
    """The idle rule's figures: bytes the open (ungated or opened) instances have yet to
    reserve (`open_need_bytes`), and how many ready tasks are speculative (`ready`)."""

    __slots__ = ("counted", "open_need_bytes", "ready")

    def __init__(self) -> None:
        self.open_need_bytes = 0
        self.ready = 0
        #: The instances whose unstarted bytes are in `open_need_bytes`.
        self.counted: set[NetworkInstance] = set()

    def opened(self, instance: NetworkInstance) -> None:
        """An ungated instance was added, or a speculative one's gate opened: its unstarted
        tasks' bytes count from now on (and its ready tasks stop being speculative)."""
        if instance in self.counted or instance.failed is not None:
            return
        self.counted.add(instance)
        self.open_need_bytes += unstarted_bytes(instance)

    def gate_opened(self, instance: NetworkInstance) -> None:
        """`opened` for a speculative instance whose gate just opened."""
        self.ready -= sum(1 for task in instance.tasks if task.state == READY)
        self.opened(instance)

    def made_ready(self, task: Task) -> None:
        if task._instance().gated is not None:
            self.ready += 1

    def left_ready(self, task: Task, instance: NetworkInstance) -> None:
        """`task` (ready) started or was skipped."""
        if instance.gated is not None:
            self.ready -= 1
        elif instance in self.counted:
            self.open_need_bytes -= max(0, task.plan.nbytes)

    def skipped(self, task: Task, instance: NetworkInstance) -> None:
        """`task` (waiting) was skipped: its instance failed."""
        if instance.gated is None and instance in self.counted and task.plan is not None:
            self.open_need_bytes -= max(0, task.plan.nbytes)

    def over(self, instance: NetworkInstance) -> None:
        self.counted.discard(instance)
