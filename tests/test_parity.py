"""One scheduler core, two clocks: the threaded engine, with a fake kernel that sleeps a fixed
duration per task, and the simulator, given the durations and arrival times the engine really
had, run the same arrivals to the same schedule (start order, and start times within a
tolerance), for built-in modes and for a policy written by a user.

Replaying the engine's measured durations keeps the test honest on a busy machine, where a
sleep may last twice what it asked for: what is compared is the scheduling decisions, not the
machine's timer. Durations are tens of milliseconds, so thread wake-ups cannot reorder tasks;
pairs of tasks the simulator starts within `TIE_S` of each other may come in either order (a
real tie, or nearly one)."""

from __future__ import annotations

import itertools
import time
import zlib
from dataclasses import dataclass, replace

import pytest

from edgecaffe.blas import BlasHold
from edgecaffe.engine import Engine
from edgecaffe.sched import MODES, Kind, Policy, Task, Trace
from edgecaffe.sim import DeviceProfile, Simulator
from edgecaffe.workload import Arrival, drive

NETS = ["TinyAlex", "TinyResidual"]
TIE_S = 0.008
#: How far an engine start may drift from the simulator's: the engine's dispatch latency (a
#: worker waking up, the lock) accumulates along a chain of tasks (a few tenths of a ms each,
#: more on a busy machine).
DRIFT_S = 0.020


@pytest.fixture(scope="module")
def packages(zoo_packages):
    return zoo_packages(NETS)


def duration_ms(task: Task) -> float:
    """A fixed, irregular duration per planned task (network, kind, layers): 8 to 29 ms."""
    what = f"{task.instance.name}/{task.kind.name}/{','.join(task.layers)}"
    return 8.0 + zlib.crc32(what.encode()) % 22


def sleeping_kernel(task: Task, package) -> None:
    time.sleep(duration_ms(task) / 1e3)


ARRIVALS = [Arrival(0, 0.0, tuple(NETS)), Arrival(1, 40.0, ("TinyResidual",)),
            Arrival(2, 25.0, ("TinyAlex",))]


#: A run whose engine took longer than this to start a ready task on a free worker was
#: disturbed (the machine stalled a thread): its decisions may legitimately differ.
STALL_S = 0.010


def worst_dispatch_latency_s(trace: Trace) -> float:
    """The longest wait of a ready task for a worker that was free (engine overhead and
    machine stalls: zero in the simulator)."""
    free_at: dict[int, float] = {}
    worst = 0.0
    for task in sorted((t for t in trace.tasks if t.start_s is not None),
                       key=lambda t: t.start_s):
        waited_from = max(task.ready_s, free_at.get(task.worker, 0.0))
        worst = max(worst, task.start_s - waited_from)
        free_at[task.worker] = task.end_s
    return worst


def engine_trace(packages, arrivals=ARRIVALS, kernel=sleeping_kernel, **settings) -> Trace:
    """The engine's run; tried again (up to three times) when the machine stalled it."""
    for _ in range(3):
        with Engine(packages, task_runner=kernel, **settings) as engine:
            futures = drive(engine.submit, arrivals, closed_loop=False,
                            load_input=lambda _: None)
            for future in futures:
                future.result(timeout=60)
        stall_s = worst_dispatch_latency_s(engine.trace)
        if stall_s <= STALL_S:
            return engine.trace
    pytest.skip(f"the machine stalled the engine's workers in 3 runs (up to {stall_s:.3f} s "
                "to start a ready task): too busy to compare schedules")


def measured_ms(real: Trace) -> dict[int, float]:
    """Task id -> the duration the engine's run gave it."""
    return {t.task_id: (t.end_s - t.start_s) * 1e3 for t in real.tasks if t.start_s is not None}


def real_arrivals(real: Trace, arrivals=ARRIVALS) -> list[Arrival]:
    """`arrivals` at the times the engine's run really submitted them."""
    arrivals_s = [record.arrival_s for record in real.requests.values()]
    gaps_ms = [0.0] + [(b - a) * 1e3 for a, b in itertools.pairwise(arrivals_s)]
    return [replace(arrival, index=i, gap_ms=gap)
            for i, (gap, arrival) in enumerate(zip(gaps_ms, arrivals, strict=True))]


def replayed_trace(real: Trace, infos, arrivals=ARRIVALS, **settings) -> Trace:
    """The simulator on the engine's own durations and arrival times."""
    durations = measured_ms(real)

    def task_ms(task: Task) -> float:
        if task.id not in durations:  # a disagreement, as any other (tried again)
            raise AssertionError(f"the simulator started {task!r}, which the engine never ran")
        return durations[task.id]

    simulator = Simulator(infos, task_ms=task_ms, **settings)
    return simulator.run(real_arrivals(real, arrivals), closed_loop=False)


def simulated_trace(infos, **settings) -> Trace:
    """The simulator on the nominal durations and arrivals."""
    return Simulator(infos, task_ms=duration_ms, **settings).run(ARRIVALS, closed_loop=False)


def starts(trace: Trace) -> dict[int, float]:
    """Task id -> start, from the first arrival."""
    origin = min(record.arrival_s for record in trace.requests.values())
    return {task.task_id: task.start_s - origin for task in trace.tasks
            if task.start_s is not None}


def assert_same_schedule(real: Trace, simulated: Trace) -> None:
    ours, theirs = starts(real), starts(simulated)
    assert set(ours) == set(theirs), "the two runs started different tasks"
    labels = {t.task_id: f"{t.network} {t.kind} {t.layers}" for t in simulated.tasks}
    for task, start in theirs.items():
        assert abs(ours[task] - start) <= DRIFT_S + 0.05 * start, (
            f"{labels[task]}: engine {ours[task]:.3f} s, simulator {start:.3f} s")
    order = sorted(theirs, key=theirs.get)
    for position, first in enumerate(order):
        for second in order[position + 1:]:
            if theirs[second] - theirs[first] > TIE_S:
                assert ours[first] < ours[second], (
                    f"{labels[first]} ran before {labels[second]} in the simulator "
                    f"({theirs[first]:.3f} < {theirs[second]:.3f} s), after it in the engine")
    assert [r.status for r in real.requests.values()] == \
        [r.status for r in simulated.requests.values()]
    # The memory manager's decisions: the same admissions forced over the budget.
    assert {t.task_id for t in real.tasks if t.forced} == \
        {t.task_id for t in simulated.tasks if t.forced}
    worst = max(abs(ours[task] - start) for task, start in theirs.items())
    print(f"largest start difference {worst * 1e3:.1f} ms over {len(theirs)} tasks")


def agree_in_one_of_three(packages, infos, arrivals=ARRIVALS, **settings) -> Trace:
    """The engine's run and its replay agree: in one of three tries, since a thread woken a
    little late can, now and then, take a decision a replay cannot know of (a difference that
    every try shows is a real one). Returns the engine's trace."""
    failures = []
    for _ in range(3):
        real = engine_trace(packages, arrivals, **settings)
        try:
            assert_same_schedule(real, replayed_trace(real, infos, arrivals, **settings))
            return real
        except AssertionError as error:
            failures.append(str(error).splitlines()[0])
    pytest.fail("the engine and the simulator disagreed in 3 tries: " + "; ".join(failures))


@pytest.mark.parametrize(("mode", "budget"), [("masa", "300K"), ("linear", "64M"),
                                              ("deepeye", "64M"), ("bulk", "64M")])
def test_engine_and_simulator_give_the_same_schedule(packages, mode, budget):
    settings = dict(mode=mode, budget=budget, workers=2)
    engine = Engine(packages, task_runner=sleeping_kernel, **settings)
    engine.close()
    agree_in_one_of_three(packages, engine.infos, **settings)


class LongestFirst(Policy):
    """A user's policy: executions first, then the network with the most layers first (the
    opposite of Masa's shortest-first), then creation order."""

    name = "longest-first"

    def key(self, task: Task, now: float) -> tuple:
        return (task.kind != Kind.EXEC, -len(task.instance.info.layers), task.id)


def test_a_user_policy_gives_the_same_schedule_on_both_clocks(packages):
    settings = dict(mode="partial", policy=LongestFirst(), budget="64M", workers=2)
    engine = Engine(packages, task_runner=sleeping_kernel, **settings)
    engine.close()
    real = agree_in_one_of_three(packages, engine.infos, **settings)
    # The comparison can fail: the engine's run replayed under another policy does not match.
    with pytest.raises(AssertionError):
        assert_same_schedule(real, replayed_trace(real, engine.infos,
                                                  **{**settings, "policy": "fcfs"}))
    # The policy has an effect: with fcfs, the same durations give another order.
    ours = starts(simulated_trace(engine.infos, **settings))
    fcfs = starts(simulated_trace(engine.infos, **{**settings, "policy": "fcfs"}))
    assert sorted(ours, key=ours.get) != sorted(fcfs, key=fcfs.get)


#: A gated workload: TinyResidual runs on what TinyAlex "found", 2, 0 and 1 times (drawn
#: outcomes, as experiments draw them; the engine's condition replays them).
GATED_ARRIVALS = [
    Arrival(0, 0.0, ("TinyAlex",), None, (("TinyResidual", "TinyAlex"),), 2),
    Arrival(1, 40.0, ("TinyAlex",), None, (("TinyResidual", "TinyAlex"),), 0),
    Arrival(2, 25.0, ("TinyAlex", "TinyResidual"), None, (("TinyResidual", "TinyAlex"),), 1),
]


@pytest.mark.parametrize("context", ["aware", "oblivious", "aware-idle"])
@pytest.mark.parametrize(("mode", "budget", "granularity"), [
    ("masa", "300K", "layer"), ("linear", "64M", "layer"), ("masa", "64M", "network")])
def test_gated_workloads_give_the_same_schedule_on_both_clocks(packages, mode, budget,
                                                               granularity, context):
    settings = dict(mode=mode, budget=budget, granularity=granularity, workers=2,
                    context=context)
    engine = Engine(packages, task_runner=sleeping_kernel, **settings)
    engine.close()
    real = agree_in_one_of_three(packages, engine.infos, GATED_ARRIVALS, **settings)
    gates = [(g.request_id, g.count, g.outcome) for g in real.gates]
    assert gates == [(0, 2, "run"), (1, 0, "dropped"), (2, 1, "run")]
    keys = {r.request_id: set(r.network_spans) for r in real.requests.values()}
    assert keys[0] == {"TinyAlex", "TinyResidual[0]", "TinyResidual[1]"}
    assert keys[1] == {"TinyAlex"}
    assert keys[2] == {"TinyAlex", "TinyResidual", "TinyResidual[0]"}
    # The speculative settings did speculate (in a chained mode the speculative instance
    # waits for its place in the line; aware-idle plans as aware there).
    if context != "aware" and not MODES[mode].chained:
        first = {g.instances[0]: g.resolved_s for g in real.gates if g.instances}
        assert any(t.instance_id in first and t.start_s < first[t.instance_id]
                   for t in real.tasks if t.start_s is not None)


# -- BLAS threads that fit the schedule ("adaptive": blas.BlasHold, Simulator._rethread) ------

def threaded_ms(task: Task, threads: int | None) -> float:
    """An execution twice as long on one thread as on two or more; other tasks as above."""
    if task.kind != Kind.EXEC:
        return duration_ms(task)
    return duration_ms(task) * (2.0 if threads == 1 else 1.0)


def threaded_kernel(task: Task, package) -> None:
    """A fake execution whose speed follows the BLAS threads the engine gives it now (read
    every half millisecond, as a kernel's GEMMs read OpenBLAS's count): a share that changes
    mid-task (another execution starts or ends) changes the rest of it."""
    if task.kind != Kind.EXEC:
        time.sleep(duration_ms(task) / 1e3)
        return
    left = 1.0  # the share of the work still to do
    while left > 0:
        total_s = threaded_ms(task, BlasHold.current_threads()) / 1e3
        started = time.perf_counter()
        time.sleep(min(left * total_s, 0.0005))
        left -= (time.perf_counter() - started) / total_s


@dataclass(frozen=True)
class ThreadedDevice(DeviceProfile):
    """The simulator's side of `threaded_kernel`: an execution's duration by the threads it
    has; other tasks replayed (`measured`: task id -> ms, the engine's run), as above."""

    measured: dict | None = None

    def task_ms(self, task: Task, threads: int | None = None) -> float:
        if task.kind == Kind.EXEC or self.measured is None:
            return threaded_ms(task, threads)
        return self.measured[task.id]


def test_adaptive_threads_give_the_same_schedule_on_both_clocks(packages):
    """Two cores shared out: each execution runs at the speed of the share it has at each
    moment, in the engine (the count BlasHold sets) and in the simulator (its model)."""
    settings = dict(mode="masa", budget="300K", workers=2)
    engine = Engine(packages, task_runner=threaded_kernel, cores=2, **settings)
    engine.close()
    failures = []
    # Its fake kernel polls the share every 0.5 ms: more tries than the others on a busy machine.
    for _ in range(5):
        real = engine_trace(packages, kernel=threaded_kernel, cores=2, **settings)
        device = ThreadedDevice(cores=2, measured=measured_ms(real))
        simulated = Simulator(engine.infos, device=device, **settings).run(real_arrivals(real))
        try:
            assert_same_schedule(real, simulated)
            break
        except AssertionError as error:
            failures.append(str(error).splitlines()[0])
    else:
        pytest.fail("the engine and the simulator disagreed in 5 tries: " + "; ".join(failures))
    # The run had executions alone (two threads) and side by side (one each).
    execs = [t for t in simulated.tasks if t.kind == "exec"]
    overlapping = [a for a in execs if any(b is not a and b.start_s < a.end_s
                                           and a.start_s < b.end_s for b in execs)]
    assert overlapping and len(overlapping) < len(execs)
    # The rule matters: the engine's run is not what fixed counts would give.
    for fixed in (1, 2):
        other = Simulator(engine.infos, device=device, blas_threads=fixed,
                          **settings).run(real_arrivals(real))
        with pytest.raises(AssertionError):
            assert_same_schedule(real, other)


def test_exec_workspaces_are_accounted_alike_on_both_clocks(packages):
    """Under a real limit (`account_runtime`) each exec reserves its outputs and its kernel's
    workspace as it starts and returns the workspace as it ends; the simulator told the same
    (`workspaces=True`, the engine's capacity) reserves the same bytes for every task and
    gives the same schedule."""
    from edgecaffe.measure import rss_bytes

    settings = dict(mode="masa", workers=2, account_runtime=True,
                    budget=rss_bytes() + (64 << 20))
    failures = []
    for _ in range(3):
        real = engine_trace(packages, **settings)
        engine = Engine(packages, task_runner=sleeping_kernel, mode="masa", workers=2)
        engine.close()
        simulated = replayed_trace(real, engine.infos, mode="masa", workers=2,
                                   budget=real.capacity_bytes, workspaces=True)
        reserved = {t.task_id: t.reserve_bytes for t in real.tasks}
        assert reserved == {t.task_id: t.reserve_bytes for t in simulated.tasks}
        workspaces = [e for e in real.ledger if e.reason.startswith("end workspace of")]
        assert workspaces and sorted(e.delta_bytes for e in workspaces) == sorted(
            e.delta_bytes for e in simulated.ledger if e.reason.startswith("end workspace"))
        try:
            assert_same_schedule(real, simulated)
            return
        except AssertionError as error:
            failures.append(str(error).splitlines()[0])
    pytest.fail("the engine and the simulator disagreed in 3 tries: " + "; ".join(failures))
