"""The simulator: the scheduler core (`sched.Core`) on a virtual clock instead of worker threads
and kernels.

    simulator = Simulator(infos, mode="masa", budget="512M", device=load_device("rpi4-sd"))
    trace = simulator.run(arrivals, closed_loop=False)

Events are task ends and arrivals. At each instant the loop first applies every event of that
instant (tasks end, requests arrive), then offers each idle worker the task
`Scheduler.next_task` picks, exactly as an engine worker asks for one, and sets its end after
the device's duration for it. Arrivals follow the engine driver's `ArrivalSchedule`. The trace
it fills is the engine's.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from heapq import heappop, heappush

from edgecaffe.blas import ADAPTIVE, available_cores, check_blas_threads, shared_threads
from edgecaffe.sched import BudgetError, Core, Kind, NetworkInfo, Policy, Request, Step, Task, Trace
from edgecaffe.sched.graph import TaskSpec
from edgecaffe.sim.device import DeviceProfile
from edgecaffe.workload import Arrival, ArrivalSchedule

INF = float("inf")


class Simulator:
    """Runs arrivals through the scheduler core on virtual workers; returns the trace.

    Arguments as the engine's (`sched.Core`), plus: `device`, the profile that gives each
    task's duration (default: the profiled times of this machine); `task_ms`, any function of
    a task giving its duration in ms instead; `blas_threads`, the engine's BLAS threads per
    execution, a fixed count or "adaptive" (the default, as the engine's: the device's cores
    shared out among the executions running, `blas.shared_threads`; an execution's remaining
    work speeds up or slows down whenever another starts or ends, with its duration at t
    threads from the device: profiled at 1 and at all cores); `record_tasks` /
    `record_ledger`, keep every task span / ledger change (off for very long simulations);
    `context`, the context policy for gated networks ("aware", "oblivious" or "aware-idle", see
    sched/requests.py): an arrival's gated networks run on as many inputs as its drawn
    `detections` say; `workspaces`, execs reserve their kernel's workspace while they run (as
    the engine does under a real limit, `account_runtime`); `keep_weights`, freed weights stay
    on the ledger while the budget has room (sched/cache.py): a load of kept weights (a hit)
    takes no time, and `run` evicts what is kept when it ends, so the ledger returns to 0."""

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
        blas_threads: int | str | None = None,
        allow_overcommit: bool = True,
        record_tasks: bool = True,
        record_ledger: bool = True,
        context: str = "aware",
        workspaces: bool = False,
        keep_weights: bool = False,
    ) -> None:
        self.device = device or DeviceProfile()
        self.core = core = Core(infos, mode, policy, budget, granularity, workers,
                                allow_overcommit, record_tasks, record_ledger,
                                info={"simulated": True, "device": self.device.name},
                                context=context, workspaces=workspaces,
                                keep_weights=keep_weights)
        self.mode, self.policy, self.budget = core.mode, core.policy, core.budget
        self.scheduler, self.book, self.trace = core.scheduler, core.book, core.trace
        self.infos, self.workers = core.infos, core.workers
        #: Networks failed because they could never fit (allow_overcommit=False).
        self.refused = 0
        #: BLAS threads per execution, as the engine would set them (execution times follow).
        self.blas_threads = check_blas_threads(blas_threads)
        self.cores = self.device.cores or available_cores()
        self.trace.info["blas_threads"] = self.blas_threads
        self.trace.info["cores"] = self.cores
        #: Adaptive threads: executions' durations follow the share of cores they get.
        self._adaptive = self.blas_threads == ADAPTIVE and task_ms is None
        fixed = self.cores if self.blas_threads == ADAPTIVE else self.blas_threads
        #: Task -> duration in ms: the device's (memoised per planned task: its network, kind
        #: and layers), or any function of the task.
        self._task_ms = task_ms or partial(self.device.task_ms, threads=fixed)
        self._memo: dict[TaskSpec, float] | None = None if task_ms else {}
        self._exec_memo: dict[tuple[TaskSpec, int], float] = {}
        parallelism = self.device.parallelism
        #: Processor sharing: with more tasks running than the device's parallelism, each runs
        #: at parallelism / running of full speed (`_share`).
        self._parallelism = parallelism if parallelism is not None \
            and parallelism < self.workers else None
        self.now = 0.0

    def run(self, arrivals: Sequence[Arrival], closed_loop: bool = False,
            on_done: Callable[[Request], None] | None = None) -> Trace:
        """Simulate `arrivals` to the end (gaps as in the engine's driver: after the previous
        submission, and in a closed loop not before the previous request has finished).

        Raises ValueError for networks it does not know, RuntimeError if the scheduler stalls."""
        self.core.check_networks(sorted({n for a in arrivals for n in a.networks}
                                        | {child for a in arrivals for child, _ in a.gated}))
        undrawn = [a.index for a in arrivals if a.gated and a.detections is None]
        if undrawn:
            raise ValueError(f"arrivals {undrawn[:5]} have gated networks but no drawn "
                             "detection count (workload.with_detections)")
        self._events(ArrivalSchedule(arrivals, closed_loop, self.now), on_done)
        if self.core.memory.cache is not None:
            self.core.memory.cache.clear(self.now)
        if self.book.open:  # only if the scheduler stalled: say so rather than return a short trace
            raise RuntimeError(f"simulation stalled with {len(self.book.open)} request(s) open")
        return self.trace

    def _events(self, schedule: ArrivalSchedule,
                on_done: Callable[[Request], None] | None) -> None:
        """The event loop: at each instant, the tasks that end, then the requests that arrive,
        then idle workers (in worker order) ask for work. One function, locals only: it runs
        once per task of a simulation of millions."""
        complete, settle, next_task = (self.scheduler.complete, self.book.settle,
                                       self.scheduler.next_task)
        pools, memo, parallelism = self.mode.pools, self._memo, self._parallelism
        # Running tasks' ends: a heap of (end, sequence, task, worker), so that ends of one
        # instant come in the order the tasks started. Idle workers, sorted. Processor
        # sharing: each running task's speed, by sequence number.
        ends: list[tuple[float, int, Task, int]] = []
        idle = list(range(self.workers))
        rates: dict[int, float] = {}
        # Adaptive threads: each running execution's sequence -> the threads its end assumes.
        adaptive, cores = self._adaptive, self.cores
        threads_of: dict[int, int] = {}
        sequence = 0
        waiting_on: Request | None = None  # closed loop: the request the next arrival awaits
        closed: list[Request] = []
        due_s = schedule.due_s()  # the next arrival (changes only when one arrives or ends)
        now = self.now
        while True:
            if ends and ends[0][0] <= due_s:
                now = ends[0][0]
                while ends and ends[0][0] == now:  # every task that ends now
                    _, seq, task, worker = heappop(ends)
                    if parallelism is not None:
                        del rates[seq]
                    if adaptive:
                        threads_of.pop(seq, None)
                    insort(idle, worker)
                    over = complete(task, now)
                    if over:
                        closed += settle(Step(finished=list(over)))
            elif due_s == INF:
                break
            else:
                now = due_s
            self.now = now
            while due_s <= now:  # every request that arrives now (gaps of 0)
                arrival = schedule.submitted(now)
                if arrival.gated:
                    request = self.core.submit(arrival.networks, now, arrival.data,
                                               dict(arrival.gated),
                                               arrival.condition(arrival.data))
                else:
                    request = self.book.submit(arrival.networks,
                                               [self.infos[n] for n in arrival.networks], now,
                                               arrival.data)
                waiting_on = request if schedule.waiting else waiting_on
                due_s = schedule.due_s()
            still_idle = []
            for worker in idle:
                try:
                    task = next_task(worker % pools, now, worker)
                except BudgetError as error:  # allow_overcommit=False: it cannot fit
                    task = self._refused(error, worker % pools, worker, closed)
                if task is None:
                    still_idle.append(worker)
                    continue
                sequence += 1
                if task.cached:  # a hit: its weights were kept in memory, nothing to read
                    duration_s = 0.0
                elif adaptive and task.kind == Kind.EXEC:  # on the cores free now
                    threads_of[sequence] = threads = shared_threads(cores, len(threads_of) + 1)
                    duration_s = self._exec_s(task, threads)
                elif memo is None:  # `task_ms` given: any function of the task
                    duration_s = self._duration_s(task)
                else:  # the device's time depends on the planned task only: once per spec
                    try:
                        duration_s = memo[task.spec]
                    except KeyError:
                        duration_s = self._duration_s(task)
                heappush(ends, (now + duration_s, sequence, task, worker))
                if parallelism is not None:
                    rates[sequence] = 1.0
            idle = still_idle
            if threads_of:  # executions started or ended: the cores shared out again
                share = shared_threads(cores, len(threads_of))
                if any(threads != share for threads in threads_of.values()):
                    ends = self._rethread(ends, threads_of, now, share)
            if parallelism is not None and ends:
                ends = _share(ends, rates, now, min(1.0, parallelism / len(ends)))
            if closed:
                for request in closed:
                    if on_done is not None:
                        on_done(request)
                    if request is waiting_on:
                        waiting_on = None
                        schedule.finished()
                        due_s = max(schedule.due_s(), now)
                closed.clear()

    def _exec_s(self, task: Task, threads: int) -> float:
        """An execution's duration in s on `threads` BLAS threads (memoised per spec)."""
        key = (task.spec, threads)
        try:
            return self._exec_memo[key]
        except KeyError:
            duration_s = self._exec_memo[key] = self.device.task_ms(task, threads) / 1e3
            return duration_s

    def _rethread(self, ends: list[tuple[float, int, Task, int]], threads_of: dict[int, int],
                  now: float, share: int) -> list[tuple[float, int, Task, int]]:
        """The running executions' ends once each runs on `share` threads: the work left of
        each (its time to go on its old threads) now done at the speed of the new count.
        Returns a new heap (a sorted list)."""
        shifted = []
        for end, seq, task, worker in ends:
            threads = threads_of.get(seq)
            if threads is not None and threads != share:
                before = self._exec_s(task, threads)
                if before > 0:
                    end = now + (end - now) * self._exec_s(task, share) / before
                threads_of[seq] = share
            shifted.append((end, seq, task, worker))
        shifted.sort()
        return shifted

    def _duration_s(self, task: Task) -> float:
        duration_s = self._task_ms(task) / 1e3
        if self._memo is not None:
            self._memo[task.spec] = duration_s
        return duration_s

    def _refused(self, error: BudgetError, pool: int, worker: int,
                 closed: list[Request]) -> Task | None:
        """A network that can never fit (allow_overcommit=False): fail it, ask again."""
        while True:
            self.refused += 1
            step = self.scheduler.fail(error.task.instance, str(error), self.now)
            closed += self.book.settle(step)
            try:
                return self.scheduler.next_task(pool, self.now, worker)
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
