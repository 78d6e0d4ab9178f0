"""The exact scheduler (edgecaffe.optimal): its schedules pass the independent checker, the
checker catches every kind of violation, the optimum equals a brute-force oracle's on tiny
instances and lies between simple lower bounds and what the real scheduler's policies achieve.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Sequence

import pytest

pytest.importorskip("ortools")

from edgecaffe.model.caffe import build_layers, parse_prototxt
from edgecaffe.model.info import network_info
from edgecaffe.model.network import Network
from edgecaffe.model.zoo import ZOO
from edgecaffe.optimal import (
    MISSING_ORTOOLS,
    Instance,
    build_instance,
    check_schedule,
    solve,
)
from edgecaffe.sched import (
    MODES,
    LayerInfo,
    MemoryBudget,
    NetworkInfo,
    Planner,
    Scheduler,
    get_policy,
    memory_manager,
)
from edgecaffe.sched.memory import LayerMemory

# -- networks and durations --------------------------------------------------------------------


def chain(name: str, layers: Sequence[tuple[int, int]], input_bytes: int = 100,
          skip: bool = False) -> NetworkInfo:
    """Layer i has (weight bytes, output bytes) = layers[i] and reads the previous buffer; an
    output of 0 bytes makes a view (no reads, no writes). With `skip`, each layer also reads the
    buffer two back, so buffers outlive their next reader."""
    infos, buffer_bytes, written = [], {"in": input_bytes}, ["in"]
    for index, (weights, output) in enumerate(layers):
        if output == 0:
            infos.append(LayerInfo(f"l{index}", "Dropout", weights, 0, (), ()))
            continue
        reads = (written[-1],) + ((written[-2],) if skip and len(written) > 1 else ())
        owner = f"b{index}"
        buffer_bytes[owner] = output
        infos.append(LayerInfo(f"l{index}", "Conv" if weights else "ReLU", weights, output, reads,
                               (owner,)))
        written.append(owner)
    return NetworkInfo(name, infos, ("in",), input_bytes, frozenset({written[-1]}), buffer_bytes)


def zoo(name: str) -> NetworkInfo:
    return network_info(
        Network(name, build_layers(parse_prototxt(ZOO[name].prototxt()), name)))


class Durations:
    """Durations in ms, drawn once per (network, kind, layer) from a seeded generator."""

    def __init__(self, seed: int, low: int = 1, high: int = 6, init_ms: float | None = None):
        self.rng, self.low, self.high, self.init_ms = random.Random(seed), low, high, init_ms
        self.table: dict[tuple[str, str, str | None], float] = {}

    def __call__(self, info: NetworkInfo, kind: str, layer: str | None) -> float:
        if kind == "init" and self.init_ms is not None:
            return self.init_ms
        return self.table.setdefault((info.name, kind, layer),
                                     self.rng.randint(self.low, self.high))


def random_requests(seed: int, networks: int = 3, max_layers: int = 4):
    rng = random.Random(seed)
    requests, arrival = [], 0
    for index in range(networks):
        layers = [(rng.choice([0, 0, 200, 400, 800]), rng.choice([0, 50, 100, 300]))
                  for _ in range(rng.randint(2, max_layers))]
        info = chain(f"n{seed}_{index}", layers, rng.choice([50, 200]), skip=rng.random() < 0.4)
        if rng.random() < 0.5 and requests:
            requests[-1][1].append(info)  # two networks in one request
        else:
            requests.append((float(arrival), [info]))
        arrival += rng.randint(0, 6)
    return requests


# -- reference schedules -----------------------------------------------------------------------


def serial_starts(instance: Instance) -> dict:
    """Network after network, each task after the previous: feasible whenever its peak fits."""
    starts, now = {}, 0
    for task in instance.tasks:  # init, then (load, exec) per layer, network by network
        now = max(now, task.release)
        starts[task.key] = now
        now += task.duration
    return starts


def peak_bytes(instance: Instance, starts: dict) -> int:
    ends = {key: starts[key] + duration for key, duration in instance.durations.items()}
    spans = [(item.bytes, starts[item.allocated_by], ends[item.released_by])
             for item in instance.items]
    return max(sum(b for b, s, e in spans if s <= t < e or s == e == t) for _, t, _ in spans)


def serial_budget(requests, durations, unit_ms: float = 1.0) -> int:
    """The peak of the serial schedule: a budget that binds but always admits a schedule."""
    instance = build_instance(requests, 2**40, 1, durations, unit_ms)
    return peak_bytes(instance, serial_starts(instance))


def brute_force(instance: Instance) -> tuple[int, dict]:
    """The minimum total response over every precedence-feasible task order, each turned into
    a schedule by the serial schedule-generation scheme (every task at the earliest time its
    dependencies, the workers and the memory allow). For a regular objective the best of these
    is optimal. Items of unplaced releasing tasks are held open-ended. Positive durations only."""
    tasks = {task.key: task for task in instance.tasks}
    assert all(task.duration > 0 for task in tasks.values())
    by_network: dict[int, list] = {}
    for task in instance.tasks:
        by_network.setdefault(task.network, []).append(task)
    best: list = [math.inf, None]
    seen: set = set()

    def spans(starts: dict) -> list[tuple[int, int, float]]:
        return [(item.bytes, starts[item.allocated_by],
                 starts[item.released_by] + tasks[item.released_by].duration
                 if item.released_by in starts else math.inf)
                for item in instance.items if item.allocated_by in starts]

    def fits(starts: dict, key, at: int) -> bool:
        end = at + tasks[key].duration
        running = [(s, s + tasks[k].duration) for k, s in starts.items()]
        points = {at} | {s for s, _ in running if at < s < end}
        if any(sum(s <= p < e for s, e in running) >= instance.workers for p in points):
            return False
        held = spans({**starts, key: at})
        return all(sum(b for b, s, e in held if s <= p < e) <= instance.capacity_bytes
                   for p in {at} | {s for _, s, _ in held if s >= at})

    def bound(starts: dict) -> int:
        """The total response of any completion: each network's unplaced execs run one after
        another after its init and its placed execs (exact once everything is placed)."""
        total = 0
        for network, (_, release, _) in enumerate(instance.networks):
            init, *rest = by_network[network]
            execs = [task for task in rest if task.key[1] == "exec"]
            first = starts.get(init.key, release) + init.duration
            done = [starts[t.key] + t.duration for t in execs if t.key in starts]
            left = sum(t.duration for t in execs if t.key not in starts)
            total += max([first, *done]) + left - release
        return total

    def search(starts: dict) -> None:
        state = frozenset(starts.items())
        if state in seen or bound(starts) >= best[0]:
            return
        seen.add(state)
        if len(starts) == len(tasks):
            best[:] = [bound(starts), dict(starts)]
            return
        for key, task in tasks.items():
            if key in starts or any(dep not in starts for dep in task.deps):
                continue
            ready = max([task.release] + [starts[d] + tasks[d].duration for d in task.deps])
            times = sorted({ready} | {s + tasks[k].duration for k, s in starts.items()}
                           | {e for _, _, e in spans(starts) if e < math.inf})
            at = next((t for t in times if t >= ready and fits(starts, key, t)), None)
            if at is None:  # a dead end: memory held open by unplaced tasks never frees
                continue
            search({**starts, key: at})

    search({})
    return best[0], best[1]


def table_of(instance: Instance, starts: dict, workers: int) -> dict:
    from edgecaffe.optimal import assign_workers

    ends = {key: starts[key] + duration for key, duration in instance.durations.items()}
    return {key: (starts[key], ends[key], worker)
            for key, worker in assign_workers(starts, ends, workers).items()}


def drive_policy(requests, capacity: int, workers: int, durations: dict, policy: str):
    """The real Scheduler (partial mode, layer granularity) on a virtual clock: returns the
    schedule as key -> (start, end, worker), the mean response and the ledger's peak."""
    budget = MemoryBudget(capacity)
    scheduler = Scheduler(get_policy(policy), memory_manager("layer", budget, True))
    planner = Planner(MODES["partial"])
    pending = list(enumerate(requests))
    running: dict[int, tuple] = {}
    table, responses, now = {}, [], 0.0
    arrivals = {}
    while pending or running or scheduler.has_work():
        while pending and pending[0][1][0] <= now:
            request_id, (arrival, infos) = pending.pop(0)
            instances = planner.plan(request_id, infos)
            arrivals.update({instance.id: arrival for instance in instances})
            scheduler.add(instances, now)
        for worker in range(workers):
            if worker not in running and (task := scheduler.next_task(0, now, worker)):
                key = (task.instance.id, task.kind.name.lower(),
                       task.layers[0] if task.layers else None)
                running[worker] = (task, key, now + durations[key])
        if not running:
            now = pending[0][1][0]
            continue
        now = min([end for _, _, end in running.values()] + [a for _, (a, _) in pending[:1]])
        for worker, (task, key, end) in sorted(running.items()):
            if end <= now:
                del running[worker]
                table[key] = (task.start, end, worker)
                step = scheduler.finish(task, now)
                responses += [now - arrivals[instance.id] for instance in step.finished]
    return table, sum(responses) / len(responses), budget.peak_bytes


# -- 1. solver schedules pass the checker; 4. bounds -------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_solver_schedules_pass_the_checker(seed):
    requests = random_requests(seed)
    durations = Durations(seed, init_ms=0.0 if seed == 0 else None)  # seed 0: zero-length inits
    tight = serial_budget(requests, durations)
    for capacity, workers in itertools.product([tight, 10 * tight], [1, 2]):
        instance = build_instance(requests, capacity, workers, durations)
        schedule = solve(instance, time_limit_s=10)
        assert schedule.status == "optimal"
        problems = check_schedule(requests, capacity, workers, instance.durations,
                                  schedule.table())
        assert problems == []
        assert schedule.lower_bound_ms == pytest.approx(schedule.objective_ms)
        # The reported responses are the schedule's own.
        for (_, release, last), response in zip(instance.networks, schedule.responses_ms,
                                                   strict=True):
            assert response == schedule.ends[last] - release
        assert schedule.objective_ms == pytest.approx(sum(schedule.responses_ms)
                                                      / len(instance.networks))
        # 4. Each network alone: its init, then every exec one after another (and each load
        # before its exec).
        for network in range(len(instance.networks)):
            own = {t.key: t.duration for t in instance.tasks if t.network == network}
            execs = [key for key in own if key[1] == "exec"]
            floor = own[(network, "init", None)] + sum(own[key] for key in execs)
            for index, key in enumerate(execs):
                load = (network, "load", key[2])
                if load in own:
                    floor = max(floor, own[load] + sum(own[k] for k in execs[index:]))
            assert schedule.responses_ms[network] >= floor


def test_zoo_networks_and_unit_rounding():
    alex, residual = zoo("TinyAlex"), zoo("TinyResidual")
    requests = [(0.0, [alex]), (2.5, [residual])]
    durations = Durations(7, low=1, high=30)
    tight = serial_budget(requests, durations, unit_ms=2.0)
    for capacity, workers in [(tight, 2), (4 * tight, 2), (tight, 1)]:
        instance = build_instance(requests, capacity, workers, durations, unit_ms=2.0)
        assert instance.networks[1].release == 2  # 2.5 ms rounds up to the 2nd 2-ms unit
        schedule = solve(instance, time_limit_s=10)
        assert schedule.optimal
        assert check_schedule(requests, capacity, workers, instance.durations, schedule.table(),
                              unit_ms=2.0) == []


def test_a_finer_unit_gives_the_same_optimum():
    """Durations in whole ms at a 0.1-ms unit: solved on the 10-unit grid, same optimum."""
    requests = random_requests(21)
    durations = Durations(21)
    capacity = serial_budget(requests, durations)
    coarse = solve(build_instance(requests, capacity, 2, durations), time_limit_s=10)
    instance = build_instance(requests, capacity, 2, durations, unit_ms=0.1)
    fine = solve(instance, time_limit_s=10)
    assert fine.stats["step_units"] == 10 and coarse.optimal and fine.optimal
    assert fine.total_response_units == 10 * coarse.total_response_units
    assert fine.objective_ms == pytest.approx(coarse.objective_ms)
    assert check_schedule(requests, capacity, 2, instance.durations, fine.table(),
                          unit_ms=0.1) == []


# -- 2. the checker catches each kind of violation ---------------------------------------------


@pytest.fixture(scope="module")
def solved():
    requests = [(0.0, [chain("a", [(400, 100), (0, 100), (300, 50)])]),
                (2.0, [chain("b", [(500, 100), (200, 50)])])]
    durations = Durations(3)
    capacity = serial_budget(requests, durations)
    instance = build_instance(requests, capacity, 2, durations)
    schedule = solve(instance, time_limit_s=10)
    args = (requests, capacity, 2, instance.durations)
    assert check_schedule(*args, schedule.table()) == []
    return args, schedule.table(), instance


def corrupt(table: dict, key, start=None, worker=None, length=None) -> dict:
    table = dict(table)
    old_start, old_end, old_worker = table[key]
    start = old_start if start is None else start
    length = old_end - old_start if length is None else length
    table[key] = (start, start + length, old_worker if worker is None else worker)
    return table


def one_problem(problems: list[str], *words: str) -> None:
    assert any(all(word in problem for word in words) for problem in problems), problems


def test_checker_catches_a_broken_dependency(solved):
    args, table, _ = solved
    exec_key = (0, "exec", "l1")
    bad = corrupt(table, exec_key, start=table[(0, "exec", "l0")][0])
    one_problem(check_schedule(*args, bad), str(exec_key), "before its dependency",
                "(0, 'exec', 'l0')")


def test_checker_catches_worker_overlap(solved):
    args, table, _ = solved
    long = next(key for key, (start, end, _) in table.items() if end - start >= 2)
    other = next(key for key, (start, end, _) in table.items() if key != long and end > start)
    start, _, worker = table[long]
    bad = corrupt(table, other, start=start + 1, worker=worker)
    one_problem(check_schedule(*args, bad), f"worker {worker}: task", "while", "runs until")
    one_problem(check_schedule(*args, corrupt(table, long, worker=2)), "worker 2 is not one of")


def test_checker_catches_memory_over_budget(solved):
    (requests, capacity, workers, durations), table, instance = solved
    problems = check_schedule(requests, capacity - 1, workers, durations, table)
    one_problem(problems, "memory over budget at t=", f"> {capacity - 1}")
    # Both networks side by side, each serially from its arrival: over the serial peak.
    starts = {}
    for network, (_, release, _) in enumerate(instance.networks):
        for task in instance.tasks:
            if task.network == network:
                starts[task.key], release = release, release + task.duration
    problems = check_schedule(requests, capacity, 2, durations, table_of(instance, starts, 2))
    one_problem(problems, "memory over budget", "a#0", "b#1")


def test_checker_catches_early_start_wrong_duration_and_missing_tasks(solved):
    args, table, _ = solved
    init_b = (1, "init", None)
    one_problem(check_schedule(*args, corrupt(table, init_b, start=1)), str(init_b),
                "before its request arrives at 2 ms")
    load = (1, "load", "l0")
    one_problem(check_schedule(*args, corrupt(table, load, length=99)), str(load), "lasts 99")
    missing = {key: span for key, span in table.items() if key != load}
    one_problem(check_schedule(*args, missing), f"missing task {load}")
    extra = {**table, (5, "exec", "x"): (0, 1, 0)}
    one_problem(check_schedule(*args, extra), "unknown task (5, 'exec', 'x')")


# -- 3. exactness against brute force ----------------------------------------------------------


TINY = [
    # (networks per request with arrivals, workers, budget factor of the serial peak)
    ([(0.0, [[(300, 40), (200, 40)]]), (1.0, [[(250, 40), (0, 40)]])], 1, 1.0),
    ([(0.0, [[(300, 40), (200, 40)]]), (1.0, [[(250, 40), (0, 40)]])], 2, 1.0),
    ([(0.0, [[(300, 40), (200, 40)], [(100, 40), (300, 20)]])], 2, 1.0),
    ([(0.0, [[(300, 40), (200, 40)], [(100, 40), (300, 20)]])], 2, 1.3),
    ([(0.0, [[(200, 40), (0, 40), (200, 40)]]), (2.0, [[(300, 40), (100, 40)]])], 2, 1.0),
    ([(0.0, [[(200, 40)]]), (0.0, [[(300, 20), (0, 40)]]), (1.0, [[(100, 40)]])], 2, 1.0),
    ([(0.0, [[(300, 40), (200, 40), (250, 30)]]), (1.0, [[(250, 40), (100, 40), (300, 20)]])], 2,
     1.0),
    ([(0.0, [[(300, 40), (200, 40), (250, 30)]]), (1.0, [[(250, 40), (100, 40), (300, 20)]])], 1,
     1.0),
    ([(0.0, [[(300, 40), (200, 40)], [(100, 40), (300, 20)]]),
      (2.0, [[(200, 30), (0, 30), (100, 10)]])], 2, 1.0),
    ([(0.0, [[(300, 40), (200, 40)], [(100, 40), (300, 20)]]),
      (2.0, [[(200, 30), (0, 30), (100, 10)]])], 3, 1.2),
]


@pytest.mark.parametrize("case", range(len(TINY)))
def test_optimum_equals_brute_force(case):
    shapes, workers, factor = TINY[case]
    requests = [(arrival, [chain(f"n{case}_{i}_{j}", layers) for j, layers in enumerate(nets)])
                for i, (arrival, nets) in enumerate(shapes)]
    durations = Durations(case, low=1, high=4)
    capacity = int(factor * serial_budget(requests, durations))
    instance = build_instance(requests, capacity, workers, durations)
    schedule = solve(instance, time_limit_s=10)
    total, starts = brute_force(instance)
    assert schedule.optimal
    assert schedule.total_response_units == total
    # The oracle's best schedule is itself feasible by the independent checker.
    assert check_schedule(requests, capacity, workers, instance.durations,
                          table_of(instance, starts, workers)) == []
    # The budget binds whenever tasks could run side by side: without it the optimum is better.
    loose = solve(build_instance(requests, 2**40, workers, durations), time_limit_s=10)
    assert loose.total_response_units < total if workers > 1 else \
        loose.total_response_units == total


# -- the real scheduler's policies: feasible by the checker exactly when they kept the budget,
# and never better than the optimum -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["fcfs", "masa", "execprio"])
def test_policies_are_checked_and_never_beat_the_optimum(policy):
    requests = random_requests(11, networks=3, max_layers=4)
    durations = Durations(11)
    tight = serial_budget(requests, durations)
    outcomes = set()
    # At `tight` a schedule always exists and deadlock avoidance (sched/memory.py) finds one;
    # without it the policies deadlock there and the progress rule forces: both outcomes of
    # the checker are exercised.
    for capacity, workers, guarded in [(tight, 2, True), (2 * tight, 2, True), (tight, 1, True),
                                       (tight, 2, False), (tight, 1, False)]:
        instance = build_instance(requests, capacity, workers, durations)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LayerMemory, "guarded", guarded)
            table, mean, peak = drive_policy(requests, capacity, workers, instance.durations,
                                             policy)
        problems = check_schedule(requests, capacity, workers, instance.durations, table)
        assert [p for p in problems if not p.startswith("memory")] == []
        # Over budget exactly when the progress rule forced a task in over the ledger.
        assert bool(problems) == (peak > capacity), problems
        outcomes.add(bool(problems))
        if not problems:
            optimum = solve(instance, time_limit_s=10)
            assert optimum.objective_ms <= mean + 1e-9
    assert outcomes == {True, False}


def test_zero_length_tasks_hold_memory_at_their_instant():
    """A 0-ms task holds what it reserves at its instant, with everything reserved then (so the
    schedule is safe in whatever order the instant's events run): A (all 0 ms) and B's load
    cannot both be at time 0; best is A at 0 and B's load a unit later (or the other way round,
    worse)."""
    a = chain("a", [(0, 500)], input_bytes=10)
    b = chain("b", [(600, 10)], input_bytes=10)
    times = {("a", "init"): 0, ("a", "exec"): 0, ("b", "init"): 0, ("b", "load"): 5,
             ("b", "exec"): 5}
    requests = [(0.0, [a, b])]
    instance = build_instance(requests, 700, 2, lambda info, kind, _: times[info.name, kind])
    schedule = solve(instance, time_limit_s=10)
    assert schedule.optimal and schedule.total_response_units == 11
    table = schedule.table()
    assert check_schedule(requests, 700, 2, instance.durations, table) == []
    both_at_0 = {**table, (1, "load", "l0"): (0, 5, 0), (1, "exec", "l0"): (5, 10, 0)}
    one_problem(check_schedule(requests, 700, 2, instance.durations, both_at_0),
                "memory over budget at t=0", "1120 bytes")


# -- 5. clear errors ---------------------------------------------------------------------------


def test_too_many_tasks():
    requests = [(0.0, [zoo("TinyInception")] * 3)]
    with pytest.raises(ValueError, match=r"87 tasks, more than max_tasks=60"):
        build_instance(requests, 10**9, 2, Durations(0))


def test_an_item_larger_than_the_budget_names_network_and_layer():
    requests = [(0.0, [chain("small", [(100, 10)]), chain("big", [(100, 10), (5000, 10)])])]
    with pytest.raises(ValueError, match=r"network 'big'.*layer 'l1'.*weights of l1 5000"):
        build_instance(requests, 1000, 2, Durations(0))


@pytest.mark.parametrize("seed", range(4))
def test_build_instance_refuses_exactly_the_infeasible(seed):
    """The serial schedule's peak is the least budget that admits any schedule (each network
    in layer order holds no more than some task must hold at once): build_instance accepts it,
    and refuses one byte less, naming what cannot fit. The checker agrees on the peak."""
    requests = random_requests(100 + seed)
    durations = Durations(seed)
    peak = serial_budget(requests, durations)
    instance = build_instance(requests, peak, 1, durations)
    serial = table_of(instance, serial_starts(instance), 1)
    assert check_schedule(requests, peak, 1, instance.durations, serial) == []
    assert check_schedule(requests, peak - 1, 1, instance.durations, serial) != []
    with pytest.raises(ValueError, match=r"network 'n\d+_\d' \(instance \d\) cannot run"):
        build_instance(requests, peak - 1, 1, durations)


def test_missing_ortools_is_explained(monkeypatch):
    instance = build_instance([(0.0, [chain("a", [(10, 10)])])], 1000, 1, Durations(0))
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    monkeypatch.setitem(sys.modules, "ortools.sat.python.cp_model", None)
    with pytest.raises(ImportError, match=r"pip install 'edgecaffe\[optimal\]'") as error:
        solve(instance)
    assert str(error.value) == MISSING_ORTOOLS
