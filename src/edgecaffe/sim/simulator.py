"""The simulator: the real engine's planner, scheduler, policies and memory budget, driven by an
event loop with a virtual clock instead of worker threads and kernels.

    simulator = Simulator(infos, mode="masa", budget="512M", device=load_device("rpi4-sd"))
    trace = simulator.run(arrivals, closed_loop=False)

Events are task ends and arrivals. At each instant the loop first applies every event of that
instant (tasks end, requests arrive), then offers each idle worker the task
`Scheduler.next_task` picks, exactly as an engine worker asks for one, and sets its end after
the device's duration for it. The trace it fills is the engine's.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from heapq import heappop, heappush

from edgecaffe.blas import default_blas_threads
from edgecaffe.engine.requests import Request, RequestBook
from edgecaffe.engine.trace import Trace
from edgecaffe.sched import (
    MODES,
    BudgetError,
    MemoryBudget,
    NetworkInfo,
    Planner,
    Policy,
    Scheduler,
    Step,
    Task,
    get_policy,
)
from edgecaffe.sched.graph import TaskSpec
from edgecaffe.sim.device import DeviceProfile
from edgecaffe.workload import Arrival


class Simulator:
    """Runs arrivals through the scheduler core on virtual workers; returns the trace."""

    def __init__(
        self,
        infos: Mapping[str, NetworkInfo],
        mode: str = "masa",
        policy: str | Policy | None = None,
        budget: str | int = "512M",
        granularity: str = "layer",
        workers: int = 2,
        device: DeviceProfile | None = None,
        task_ms: Callable[[Task], float] | None = None,
        blas_threads: int | None = None,
        allow_overcommit: bool = True,
        record_tasks: bool = True,
        record_ledger: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self.infos = dict(infos)
        self.mode = MODES[mode]
        self.policy = get_policy(policy or self.mode.policy)
        self.device = device or DeviceProfile()
        self.workers = self.mode.workers or workers
        #: BLAS threads per worker, as the engine would set them (execution times follow).
        self.blas_threads = blas_threads or default_blas_threads(self.workers)
        #: Task -> duration in ms: the device's (memoised per planned task: its network, kind
        #: and layers), or any function of the task.
        self._task_ms = task_ms or partial(self.device.task_ms, threads=self.blas_threads)
        self._memo: dict[TaskSpec, float] | None = None if task_ms else {}
        self.budget = MemoryBudget(budget, record=record_ledger)
        self.scheduler = Scheduler(self.policy, self.budget, granularity, self.mode.per_layer,
                                   allow_overcommit)
        self.trace = Trace(ledger=self.budget.events, capacity_bytes=self.budget.capacity_bytes,
                           info={"mode": mode, "policy": self.policy.name,
                                 "granularity": granularity, "workers": self.workers,
                                 "blas_threads": self.blas_threads,
                                 "budget_bytes": self.budget.capacity_bytes,
                                 "simulated": True, "device": self.device.name})
        self.book = RequestBook(Planner(self.mode), self.scheduler, self.trace, record_tasks)
        self.now = 0.0

    def run(self, arrivals: Sequence[Arrival], closed_loop: bool = False,
            on_done: Callable[[Request], None] | None = None) -> Trace:
        """Simulate `arrivals` to the end (gaps as in the engine's driver: after the previous
        submission, and in a closed loop not before the previous request has finished)."""
        unknown = sorted({n for a in arrivals for n in a.networks} - set(self.infos))
        if unknown:
            raise ValueError(f"unknown network(s) {unknown}; this simulator has "
                             f"{', '.join(self.infos)}")
        book, infos = self.book, self.infos
        next_task, complete, settle = (self.scheduler.next_task, self.scheduler.complete,
                                       book.settle)
        pools = self.mode.pools
        memo, task_ms = self._memo, self._task_ms
        inf = float("inf")
        # The events: the running tasks' ends, a heap of (end, sequence, task, worker), so that
        # ends of one instant come in the order the tasks were started; and the next arrival.
        # At one instant, ends come first, then the arrivals, then idle workers ask for work,
        # in worker order.
        ends: list[tuple[float, int, Task, int]] = []
        idle = list(range(self.workers))  # sorted
        sequence = 0
        index = 0  # next arrival
        next_arrival_s = self.now + arrivals[0].gap_ms / 1e3 if arrivals else inf
        last_submit = self.now
        waiting_on: Request | None = None  # closed loop: the request the next arrival awaits
        closed: list[Request] = []
        # Processor sharing: with more tasks running than the device's parallelism, each runs
        # at parallelism / running of full speed. `rates` holds each running task's current
        # rate (by sequence number); the ends are recomputed whenever the running set changes.
        parallelism = self.device.parallelism
        shared = parallelism is not None and parallelism < self.workers
        rates: dict[int, float] = {}
        while True:
            if ends and ends[0][0] <= next_arrival_s:
                now, seq, task, worker = heappop(ends)
                self.now = now
                while True:  # every task that ends now
                    if shared:
                        del rates[seq]
                    insort(idle, worker)
                    over = complete(task, now)
                    if over:
                        closed += settle(Step(finished=list(over)))
                    if not ends or ends[0][0] != now:
                        break
                    _, seq, task, worker = heappop(ends)
            elif next_arrival_s == inf:
                break
            else:
                now = self.now = next_arrival_s
            while next_arrival_s == now:  # every request that arrives now (gaps of 0)
                arrival = arrivals[index]
                request = book.submit(arrival.networks, [infos[n] for n in arrival.networks],
                                      now, arrival.data)
                last_submit = now
                index += 1
                next_arrival_s = inf
                if index < len(arrivals):
                    if closed_loop:
                        waiting_on = request
                    else:
                        next_arrival_s = now + arrivals[index].gap_ms / 1e3
            if idle:
                still_idle = []
                for worker in idle:
                    try:
                        task = next_task(worker % pools, now, worker)
                    except BudgetError as error:  # allow_overcommit=False: it cannot fit
                        task = self._refused(error, worker % pools, now, worker, closed)
                    if task is None:
                        still_idle.append(worker)
                        continue
                    if memo is None:
                        duration = task_ms(task) / 1e3
                    else:  # the device's time depends on the planned task only
                        try:
                            duration = memo[task.spec]
                        except KeyError:
                            duration = memo[task.spec] = task_ms(task) / 1e3
                    sequence += 1
                    heappush(ends, (now + duration, sequence, task, worker))
                    if shared:
                        rates[sequence] = 1.0
                idle = still_idle
            if shared and ends:
                ends = _share(ends, rates, now, min(1.0, parallelism / len(ends)))
            if closed:
                for request in closed:
                    if on_done is not None:
                        on_done(request)
                    if request is waiting_on:
                        waiting_on = None
                        next_arrival_s = max(now, last_submit + arrivals[index].gap_ms / 1e3)
                closed.clear()
        if book.open:  # only if the scheduler stalled: say so rather than return a short trace
            raise RuntimeError(f"simulation stalled with {len(book.open)} request(s) open")
        return self.trace

    def _refused(self, error: BudgetError, pool: int, now: float, worker: int,
                 closed: list[Request]) -> Task | None:
        """A network that can never fit (allow_overcommit=False): fail it, ask again."""
        while True:
            step = self.scheduler.fail(error.task.instance, str(error), now)
            closed += self.book.settle(step)
            try:
                return self.scheduler.next_task(pool, now, worker)
            except BudgetError as again:
                error = again


def _share(ends: list[tuple[float, int, Task, int]], rates: dict[int, float], now: float,
           rate: float) -> list[tuple[float, int, Task, int]]:
    """The running tasks' ends once each runs at `rate`: the work left of each (its time to
    go at its old rate) now done at the new one. Returns a new heap (a sorted list)."""
    shared = []
    for end, seq, task, worker in ends:
        left = (end - now) * rates[seq]
        rates[seq] = rate
        shared.append((now + left / rate, seq, task, worker))
    shared.sort()
    return shared
