"""The scheduler core as one object: everything the real engine and the simulator share.

    core = Core(infos, mode="masa", budget="512M", workers=2)
    request = core.submit(["AgeNet", "GenderNet"], now, data)    # planned, tasks registered
    task = core.scheduler.next_task(pool, now, worker)           # a driver asks for work ...
    closed = core.book.settle(core.scheduler.finish(task, now))  # ... and reports its end

Gated networks (sched/requests.py): `core.submit(["FaceNet"], now, image,
gated={"AgeNet": "FaceNet"}, condition=faces)` plans AgeNet only once FaceNet's end resolves
its condition (`faces(child, parent_instance) -> inputs`, one AgeNet instance per input), or,
without a condition, when the driver calls `core.resolve(request, "AgeNet", count, now)`.
`context` ("aware" | "oblivious" | "aware-idle") says whether gated networks load before that
(never; whenever the policy and their parent's need allow; only into otherwise idle budget).

A driver owns a clock and decides what a task does: the engine (engine/engine.py) runs worker
threads and real kernels at wall-clock times; the simulator (sim/simulator.py) an event loop
with durations from a device profile at virtual times. Mode, policy, memory manager, scheduler,
planner, request book and trace are built here, once, the same way for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgecaffe.errors import ConfigError
from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.info import NetworkInfo
from edgecaffe.sched.memory import NEVER, memory_manager
from edgecaffe.sched.planner import MODES, Planner
from edgecaffe.sched.policies import Policy, get_policy
from edgecaffe.sched.requests import CONTEXTS, Condition, Request, RequestBook, result_keys
from edgecaffe.sched.scheduler import BudgetError, Scheduler, Step
from edgecaffe.sched.speculation import RULES
from edgecaffe.sched.trace import Trace


class Core:
    """Mode, policy, memory manager, scheduler, planner, request book and trace of one run.

    `mode`: one of `MODES`; `policy`: a name in `POLICIES` or a `Policy` (default: the mode's);
    `budget`: bytes or '512M'; `granularity`: a name in `sched.memory.GRANULARITIES`;
    `workers`: the worker count (a mode with a fixed count, such as bulk's 1, overrides it).
    `record_tasks` / `record_ledger`: keep every task span / ledger change in the trace (off
    for very long simulations). `info`: facts the driver adds to the trace's info.
    `context`: when gated networks are planned, "aware" (once their condition holds),
    "oblivious" (with their request, loading speculatively) or "aware-idle" (with their
    request, loading speculatively only into otherwise idle budget; sched/requests.py, sched/
    speculation.py).
    `workspaces`: each exec also reserves its kernel's workspace (`LayerInfo.workspace_bytes`)
    while it runs (layer granularity; what the engine does under a real memory limit).
    `keep_weights`: freed weights stay in memory while the budget has room, so that a later
    load of the same layer is a hit (sched/cache.py; off: the original's load/free).

    Raises `ConfigError` (a ValueError) for an unknown mode, policy or granularity, a budget
    that is not a size, or fewer than one worker."""

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
        context: str = "aware",
        workspaces: bool = False,
        keep_weights: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a whole number, 1 or more, got {workers!r}")
        if context not in CONTEXTS:
            raise ConfigError(f"unknown context policy {context!r}; choose from "
                              f"{', '.join(CONTEXTS)}")
        self.infos = dict(infos)
        for name, network in self.infos.items():
            # The caller's name is the one arrivals, results and the trace use (an original
            # folder's description may say otherwise).
            network.name = name
        self.mode = MODES[mode]
        self.policy = get_policy(policy or self.mode.policy)
        self.workers = self.mode.workers or workers
        self.budget = MemoryBudget(budget, record=record_ledger)
        self.memory = memory_manager(granularity, self.budget, self.mode.per_layer,
                                     workspaces, keep_weights)
        self.scheduler = Scheduler(self.policy, self.memory, allow_overcommit,
                                   RULES[context] or "spare")
        self.planner = Planner(self.mode)
        self.trace = Trace(ledger=self.budget.events, capacity_bytes=self.budget.capacity_bytes,
                           info={"mode": mode, "policy": self.policy.name,
                                 "granularity": granularity, "workers": self.workers,
                                 "budget_bytes": self.budget.capacity_bytes,
                                 "context": context, "workspaces": workspaces,
                                 "keep_weights": keep_weights,
                                 **(info or {})})
        #: check_fits' answers by request shape (None: it fits).
        self._fits: dict[tuple, str | None] = {}
        self.book = RequestBook(self.planner, self.scheduler, self.trace, record_tasks,
                                context)
        self.context = context

    def check_networks(self, networks: Sequence[str]) -> list[NetworkInfo]:
        """The infos of a request's networks; `ConfigError` naming unknown ones, or none."""
        unknown = sorted({name for name in networks if name not in self.infos})
        if unknown:
            raise ConfigError(f"unknown network(s) {unknown}; known: {', '.join(self.infos)}")
        if not networks:
            raise ConfigError("a request needs at least one network")
        return [self.infos[name] for name in networks]

    def check_gated(self, networks: Sequence[str], gated: Mapping[str, str] | None
                    ) -> list[tuple[NetworkInfo, str]]:
        """A request's gated networks as (child info, parent's result key) pairs.

        Raises `ConfigError` for an unknown child, or a parent that is not one of the
        request's own (ungated) networks (`AgeNet#2` names a second AgeNet)."""
        if not gated:
            return []
        if not isinstance(gated, Mapping):
            raise ConfigError(f"gated must map each gated network to its parent, got {gated!r}")
        keys = result_keys(networks)
        pairs = []
        for child, parent in gated.items():
            if parent not in keys:
                raise ConfigError(f"gated network {child!r}: its parent {parent!r} is not one "
                                  f"of the request's networks ({', '.join(keys)})")
            pairs.append((self.check_networks([child])[0], parent))
        return pairs

    def check_fits(self, networks: Sequence[str], gated: Mapping[str, str] | None = None
                   ) -> None:
        """Raise `BudgetError` if a task of this request (gated networks included) needs
        more than the whole budget.

        Planned on a scratch planner: the real one links networks across requests and must
        only see accepted ones. The answer depends only on the networks (the budget and the
        mode are fixed), so it is remembered per request shape: a server checks every call."""
        key = request_shape(networks, gated)
        if key is not None and key in self._fits:
            why = self._fits[key]
        else:
            why = self._never_fits(networks, gated)
            if key is not None:
                if len(self._fits) >= 4096:  # bounded: callers may vary the set without end
                    self._fits.clear()
                self._fits[key] = why
        if why is not None:
            raise BudgetError(why)

    def _never_fits(self, networks: Sequence[str], gated: Mapping[str, str] | None
                    ) -> str | None:
        """Why a task of this request can never fit, or None. Raises `ConfigError` for
        unknown networks or a bad `gated` (not remembered)."""
        infos = self.check_networks(networks) + [i for i, _ in self.check_gated(networks, gated)]
        for instance in Planner(self.mode).plan(-1, infos):
            for task in instance.tasks:
                need = self.scheduler.reservation(task)
                if self.memory.fit_bytes(need) is NEVER:
                    return (f"request for {list(networks)}: {task.label} of {instance.name} "
                            f"needs {need} bytes, more than the whole budget of "
                            f"{self.budget.capacity_bytes}")
        return None

    def submit(self, networks: Sequence[str], now: float, data: Any = None,
               gated: Mapping[str, str] | None = None, condition: Condition | None = None,
               handle: Any = None, order: int | None = None) -> Request:
        """Plan one request for `networks` at time `now` and hand its tasks to the scheduler.

        `gated`: {child network: parent} for networks that run on what their parent (a result
        key of `networks`) found; `condition(child, parent_instance)` gives a child's inputs
        when its parent ends (an empty sequence: the condition failed). Without a condition,
        call `resolve` for each gated network once its parent has ended. `order`: the id of
        an earlier request whose place in the queue this one takes (`Task.order`). Raises
        `ConfigError` for unknown networks, a bad `gated` or a bad `order`."""
        infos = self.check_networks(networks)
        pairs = self.check_gated(networks, gated)
        return self.book.submit(networks, infos, now, data, handle, pairs, condition, order)

    def resolve(self, request: Request, child: str, count: int, now: float,
                data: Sequence[Any] | None = None) -> Step:
        """Resolve a gated network of `request` by hand: `count` inputs (0: its condition
        failed), given as `data` (a sequence of `count` inputs) or, when None, the request's
        own input `count` times. Returns the `Step` it made (tasks now ready, instances now
        over); pass it to `book.settle` as a `finish`'s. Raises `ConfigError` for a count
        that is not a whole number >= 0, a `data` of another length, or a child that is not
        an unresolved gated network of the request."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"gated network {child!r}: count must be a whole number >= 0, "
                              f"got {count!r}")
        inputs = [request.data] * count if data is None else list(data)
        if len(inputs) != count:
            raise ConfigError(f"gated network {child!r}: {len(inputs)} inputs for a count "
                              f"of {count}")
        return self.book.resolve(request, child, inputs, now)


def request_shape(networks: Sequence[str], gated: Mapping[str, str] | None) -> tuple | None:
    """A hashable key for a request's networks and gates; None for input that is not plain
    (then checked each time, never remembered)."""
    try:
        key = (tuple(networks), tuple(sorted(gated.items())) if gated else ())
        hash(key)
    except (AttributeError, TypeError):
        return None
    return key
