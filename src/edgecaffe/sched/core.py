"""The scheduler core as one object: everything the real engine and the simulator share.

    core = Core(infos, mode="masa", budget="512M", workers=2)
    request = core.submit(["AgeNet", "GenderNet"], now, data)    # planned, tasks registered
    task = core.scheduler.next_task(pool, now, worker)           # a driver asks for work ...
    closed = core.book.settle(core.scheduler.finish(task, now))  # ... and reports its end

A driver owns a clock and decides what a task does: the engine (engine/engine.py) runs worker
threads and real kernels at wall-clock times; the simulator (sim/simulator.py) an event loop
with durations from a device profile at virtual times. Mode, policy, memory manager, scheduler,
planner, request book and trace are built here, once, the same way for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.info import NetworkInfo
from edgecaffe.sched.memory import memory_manager
from edgecaffe.sched.planner import MODES, Planner
from edgecaffe.sched.policies import Policy, get_policy
from edgecaffe.sched.requests import Request, RequestBook
from edgecaffe.sched.scheduler import BudgetError, Scheduler
from edgecaffe.sched.trace import Trace


class Core:
    """Mode, policy, memory manager, scheduler, planner, request book and trace of one run.

    `mode`: one of `MODES`; `policy`: a name in `POLICIES` or a `Policy` (default: the mode's);
    `budget`: bytes or '512M'; `granularity`: a name in `sched.memory.GRANULARITIES`;
    `workers`: the worker count (a mode with a fixed count, such as bulk's 1, overrides it).
    `record_tasks` / `record_ledger`: keep every task span / ledger change in the trace (off
    for very long simulations). `info`: facts the driver adds to the trace's info.

    Raises ValueError for an unknown mode, policy or granularity, or fewer than one worker."""

    def __init__(
        self,
        infos: Mapping[str, NetworkInfo],
        mode: str = "masa",
        policy: str | Policy | None = None,
        budget: str | int = "512M",
        granularity: str = "layer",
        workers: int = 2,
        allow_overcommit: bool = True,
        record_tasks: bool = True,
        record_ledger: bool = True,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number, 1 or more, got {workers!r}")
        self.infos = dict(infos)
        for name, network in self.infos.items():
            # The caller's name is the one arrivals, results and the trace use (an original
            # folder's description may say otherwise).
            network.name = name
        self.mode = MODES[mode]
        self.policy = get_policy(policy or self.mode.policy)
        self.workers = self.mode.workers or workers
        self.budget = MemoryBudget(budget, record=record_ledger)
        self.memory = memory_manager(granularity, self.budget, self.mode.per_layer)
        self.scheduler = Scheduler(self.policy, self.memory, allow_overcommit)
        self.planner = Planner(self.mode)
        self.trace = Trace(ledger=self.budget.events, capacity_bytes=self.budget.capacity_bytes,
                           info={"mode": mode, "policy": self.policy.name,
                                 "granularity": granularity, "workers": self.workers,
                                 "budget_bytes": self.budget.capacity_bytes, **(info or {})})
        self.book = RequestBook(self.planner, self.scheduler, self.trace, record_tasks)

    def check_networks(self, networks: Sequence[str]) -> list[NetworkInfo]:
        """The infos of a request's networks; ValueError naming unknown ones, or none."""
        unknown = sorted({name for name in networks if name not in self.infos})
        if unknown:
            raise ValueError(f"unknown network(s) {unknown}; known: {', '.join(self.infos)}")
        if not networks:
            raise ValueError("a request needs at least one network")
        return [self.infos[name] for name in networks]

    def check_fits(self, networks: Sequence[str]) -> None:
        """Raise `BudgetError` if a task of this request needs more than the whole budget.

        Planned on a scratch planner: the real one links networks across requests and must
        only see accepted ones."""
        capacity = self.budget.capacity_bytes
        for instance in Planner(self.mode).plan(-1, self.check_networks(networks)):
            for task in instance.tasks:
                need = self.scheduler.reservation(task)
                if need > capacity:
                    raise BudgetError(
                        f"request for {list(networks)}: {task.label} of {instance.name} needs "
                        f"{need} bytes, more than the whole budget of {capacity}")

    def submit(self, networks: Sequence[str], now: float, data: Any = None) -> Request:
        """Plan one request for `networks` at time `now` and hand its tasks to the scheduler."""
        return self.book.submit(networks, self.check_networks(networks), now, data)
