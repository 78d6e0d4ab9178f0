"""Property-based tests of the scheduler core, driven by a tiny discrete-event loop with a virtual
clock; plus examples of Masa's order (§3.2), HRRN, the budget's progress rule and failures."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecaffe.model.info import network_info
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package.manifest import stages
from edgecaffe.sched import (
    GRANULARITIES,
    MODES,
    POLICIES,
    BudgetError,
    Kind,
    MemoryBudget,
    Mode,
    NetworkInfo,
    NetworkInstance,
    Planner,
    Scheduler,
    State,
    Task,
    get_policy,
    memory_manager,
)

# -- networks ----------------------------------------------------------------------------------


def conv(name: str, bottom: str, out: int, bias: bool = True) -> Layer:
    return Layer(name, "Conv", [bottom], [name], {
        "out_channels": out, "kernel": (1, 1), "stride": (1, 1), "pad": (0, 0),
        "dilation": (1, 1), "group": 1, "bias": bias})


def dense(name: str, bottom: str, out: int, bias: bool = True) -> Layer:
    return Layer(name, "Dense", [bottom], [name],
                 {"out_features": out, "axis": 1, "bias": bias, "transpose": False})


def relu(name: str, bottom: str) -> Layer:
    return Layer(name, "ReLU", [bottom], [name], {})


def info_of(layers: list[Layer], name: str, mean_exec_ms: float | None = None,
            peak_bytes: int | None = None) -> NetworkInfo:
    network = Network(name, layers)
    return network_info(network, stages(network), mean_exec_ms, peak_bytes)


def chain(name: str, widths: Sequence[int], mean_exec_ms: float | None = None,
          first_relu: bool = False, peak_bytes: int | None = None) -> NetworkInfo:
    """Input (1, 2, 2, 2), an optional ReLU, then one 1x1 conv per width."""
    layers = [Layer("data", "Input", [], ["data"], {"shape": [1, 2, 2, 2]})]
    bottom = "data"
    if first_relu:
        layers.append(relu("r0", bottom))
        bottom = "r0"
    for index, width in enumerate(widths):
        layers.append(conv(f"c{index}", bottom, width))
        bottom = f"c{index}"
    return info_of(layers, name, mean_exec_ms, peak_bytes)


@st.composite
def networks(draw, name: str) -> NetworkInfo:
    """A small random network: a chain of 1x1 convs, ReLUs and Dropouts, with branches joined by
    Concat or Eltwise, then maybe Flatten and Dense layers (DeepEye's fc stage)."""
    channels = draw(st.integers(1, 3))
    layers = [Layer("data", "Input", [], ["data"], {"shape": [1, channels, 2, 2]})]
    bottom, count = "data", 0

    def fresh(prefix: str) -> str:
        nonlocal count
        count += 1
        return f"{prefix}{count}"

    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "relu", "dropout", "concat", "eltwise"]))
        if kind == "conv":
            channels = draw(st.integers(1, 8))
            layers.append(conv(fresh("conv"), bottom, channels, draw(st.booleans())))
        elif kind == "relu":
            layers.append(relu(fresh("relu"), bottom))
        elif kind == "dropout":
            layers.append(Layer(fresh("drop"), "Dropout", [bottom], [f"d{count}"],
                                {"ratio": 0.5}))
            layers[-1].outputs = [layers[-1].name]
        elif kind == "concat":
            width = draw(st.integers(1, 6))
            left = conv(fresh("conv"), bottom, width)
            right = (relu(fresh("relu"), bottom) if draw(st.booleans())
                     else conv(fresh("conv"), bottom, draw(st.integers(1, 6))))
            join = Layer(fresh("cat"), "Concat", [left.name, right.name], [], {"axis": 1})
            join.outputs = [join.name]
            layers += [left, right, join]
            channels = width + (channels if right.op == "ReLU" else right.attrs["out_channels"])
        else:
            left = relu(fresh("relu"), bottom)
            right = conv(fresh("conv"), bottom, channels)
            join = Layer(fresh("sum"), "Eltwise", [left.name, right.name, bottom], [],
                         {"operation": "sum", "coeffs": []})
            join.outputs = [join.name]
            layers += [left, right, join]
        bottom = layers[-1].outputs[0]
    if draw(st.booleans()):
        flat = Layer(fresh("flat"), "Flatten", [bottom], [], {"axis": 1, "end_axis": -1})
        flat.outputs = [flat.name]
        layers.append(flat)
        bottom = flat.name
        for _ in range(draw(st.integers(1, 2))):
            layers.append(dense(fresh("fc"), bottom, draw(st.integers(1, 16)),
                                draw(st.booleans())))
            bottom = layers[-1].name
            if draw(st.booleans()):
                layers.append(relu(fresh("relu"), bottom))
                bottom = layers[-1].name
    mean = draw(st.sampled_from([None, 0.0, 3.0, 40.0, 900.0]))
    return info_of(layers, name, mean)


# -- the discrete-event driver -----------------------------------------------------------------


@dataclass
class Run:
    scheduler: Scheduler
    budget: MemoryBudget
    workers: int
    instances: list[NetworkInstance] = field(default_factory=list)
    finished: list[NetworkInstance] = field(default_factory=list)
    started: list[Task] = field(default_factory=list)
    failed_task: Task | None = None
    max_running: int = 0


def drive(mode: Mode, policy: str, granularity: str, capacity: int, workers: int,
          requests: Sequence[tuple[float, Sequence[NetworkInfo]]], durations: Sequence[int],
          fail_at: int | None = None, max_steps: int = 5000) -> Run:
    """Run requests (arrival time, networks) to the end on `workers` virtual workers.

    At each instant: finish the tasks that end now, add the requests that arrive now, then give
    every free worker the task `next_task` hands it. The `fail_at`-th finishing task raises."""
    budget = MemoryBudget(capacity)
    scheduler = Scheduler(get_policy(policy), memory_manager(granularity, budget, mode.per_layer))
    planner = Planner(mode)
    run = Run(scheduler, budget, workers)
    pending = sorted(enumerate(requests), key=lambda item: item[1][0])
    running: dict[int, Task] = {}
    ends: dict[Task, float] = {}
    now, finishes = 0.0, 0
    for _ in range(max_steps):
        while pending and pending[0][1][0] <= now:
            request_id, (_, infos) = pending.pop(0)
            instances = planner.plan(request_id, infos)
            run.instances += instances
            for task in scheduler.add(instances, now):
                assert task.state == State.READY
                assert all(dep.finished for dep in task.deps)
        for worker in range(workers):
            if worker in running:
                continue
            task = scheduler.next_task(worker % mode.pools, now, worker)
            if task is None:
                continue
            assert task.state == State.RUNNING and task.start == now and task.worker == worker
            assert task.pool == worker % mode.pools
            for dep in task.deps:
                assert dep.finished and dep.end is not None and dep.end <= now, (task, dep)
            running[worker] = task
            ends[task] = now + durations[task.id % len(durations)]
            run.started.append(task)
        assert set(scheduler.running) == set(running.values())
        assert len(running) <= workers
        run.max_running = max(run.max_running, len(running))
        if not running:
            # Nothing runs: the progress rule must have left nothing ready (no deadlock).
            assert scheduler.ready_count == 0, "ready tasks but nothing runs"
            if not pending:
                break
            now = pending[0][1][0]
            continue
        now = min(ends[task] for task in running.values())
        if pending:
            now = min(now, pending[0][1][0])
        for worker in sorted(running):
            task = running[worker]
            if ends[task] > now:
                continue
            del running[worker]
            error = None
            if finishes == fail_at:
                error, run.failed_task = "boom", task
            finishes += 1
            step = scheduler.finish(task, now, error)
            run.finished += step.finished
            for ready in step.ready:
                assert ready.state == State.READY
                assert all(dep.finished for dep in ready.deps)
    else:
        pytest.fail(f"not over after {max_steps} steps")
    return run


def layer_index(task: Task) -> int:
    return [layer.name for layer in task.instance.info.layers].index(task.layers[0])


def check_run(run: Run) -> None:
    scheduler = run.scheduler
    # Every instance finished exactly once; nothing left anywhere.
    assert Counter(i.id for i in run.finished) == Counter(i.id for i in run.instances)
    assert all(count == 1 for count in Counter(map(id, run.finished)).values())
    assert not scheduler.running and scheduler.ready_count == 0 and not scheduler.instances
    assert not scheduler.active
    for instance in run.instances:
        for task in instance.tasks:
            if instance.failed is None:
                assert task.state == State.DONE, task
                assert task.error is None
            else:
                assert task.state in (State.DONE, State.SKIPPED), task
            if task.state == State.SKIPPED:
                assert task.start is None
            else:
                assert task.start is not None and task.end is not None
                assert task.start <= task.end
        # Executions of one instance run one after another, in layer order.
        execs = sorted((t for t in instance.tasks if t.kind == Kind.EXEC and t.start is not None),
                       key=lambda t: (t.start, t.id))
        for before, after in itertools.pairwise(execs):
            assert before.end <= after.start
            if not before.whole_model:
                assert layer_index(before) < layer_index(after)
        if instance.failed is None:
            assert instance.last.end == max(t.end for t in instance.tasks)
    if run.failed_task is not None:
        assert run.failed_task.instance.failed == "boom"
        assert run.failed_task.error == "boom"
        assert [i for i in run.instances if i.failed] == [run.failed_task.instance]
    # No two tasks overlap on one worker.
    by_worker: dict[int, list[Task]] = {}
    for task in run.started:
        by_worker.setdefault(task.worker, []).append(task)
    for tasks in by_worker.values():
        tasks.sort(key=lambda t: (t.start, t.end))
        for before, after in itertools.pairwise(tasks):
            assert before.end <= after.start
    assert run.max_running <= run.workers
    check_ledger(run)


def check_ledger(run: Run) -> None:
    """The budget is exceeded only by forced reservations (and until they are returned)."""
    budget, capacity = run.budget, run.budget.capacity_bytes
    previous_used = 0
    for event in budget.events:
        assert event.used_bytes == previous_used + event.delta_bytes
        assert event.used_bytes >= 0
        if event.delta_bytes > 0 and not event.forced:
            assert event.used_bytes <= capacity, event
        if event.used_bytes > capacity:
            # Over capacity: a forced reservation did it, or we were already over before.
            assert event.forced or previous_used > capacity, event
        previous_used = event.used_bytes
    forced_tasks = [t for t in run.started if t.forced]
    assert run.scheduler.forced_events == len(forced_tasks)
    if not forced_tasks:
        assert all(event.used_bytes <= capacity for event in budget.events)
        assert budget.peak_bytes <= capacity
    assert {e.task_id for e in budget.events if e.forced} <= {t.id for t in forced_tasks}
    assert budget.used_bytes == 0
    # Each instance gets back exactly what it reserved.
    balance: Counter = Counter()
    for event in budget.events:
        balance[event.network_instance] += event.delta_bytes
    assert all(value == 0 for value in balance.values())


# -- strategies --------------------------------------------------------------------------------

capacities = st.one_of(st.integers(1, 40), st.integers(40, 3000), st.just(2**30))


@st.composite
def scenarios(draw):
    pool = [draw(networks(f"n{index}")) for index in range(draw(st.integers(1, 3)))]
    requests = [
        (float(draw(st.integers(0, 12))),
         [draw(st.sampled_from(pool)) for _ in range(draw(st.integers(1, 3)))])
        for _ in range(draw(st.integers(1, 3)))
    ]
    mode = MODES[draw(st.sampled_from(sorted(MODES)))]
    workers = mode.workers or draw(st.integers(max(1, mode.pools), 4))
    return dict(
        mode=mode,
        policy=draw(st.sampled_from(sorted(POLICIES))),
        granularity=draw(st.sampled_from(sorted(GRANULARITIES))),
        capacity=draw(capacities),
        workers=workers,
        requests=requests,
        durations=draw(st.lists(st.integers(1, 5), min_size=1, max_size=12)),
    )


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_every_request_finishes_within_the_rules(scenario):
    run = drive(**scenario)
    check_run(run)
    assert all(instance.failed is None for instance in run.instances)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), fail_at=st.integers(0, 30))
def test_a_failing_task_fails_only_its_instance(scenario, fail_at):
    run = drive(**scenario, fail_at=fail_at)
    check_run(run)
    if run.failed_task is not None:
        failed = run.failed_task.instance
        # Its tasks that had not started are skipped; the other instances are untouched.
        for task in failed.tasks:
            if task.start is None or task.start > run.failed_task.end:
                assert task.state == State.SKIPPED
        for instance in run.instances:
            if instance is not failed:
                assert instance.failed is None
                assert all(task.state == State.DONE for task in instance.tasks)


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=1, max_size=4),
       mode=st.sampled_from(sorted(MODES)), policy=st.sampled_from(sorted(POLICIES)),
       granularity=st.sampled_from(sorted(GRANULARITIES)))
def test_a_tiny_budget_runs_everything_forced_one_task_at_a_time(widths, mode, policy,
                                                                 granularity):
    """A budget smaller than any reservation: the progress rule admits tasks over budget."""
    info = chain("tiny", widths)
    run = drive(MODES[mode], policy, granularity, 1, MODES[mode].workers or 3,
                [(0.0, [info, info]), (2.0, [info])], [2, 1, 3])
    check_run(run)
    assert run.scheduler.forced_events > 0
    assert run.budget.peak_bytes > run.budget.capacity_bytes


# -- examples: allow_overcommit=False ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["masa", "bulk", "linear", "deepeye"])
def test_without_overcommit_an_impossible_task_raises_budget_error(mode):
    info = chain("big", [8, 8])  # the input alone is 32 bytes
    budget = MemoryBudget(8)
    scheduler = Scheduler(get_policy(MODES[mode].policy),
                          memory_manager("layer", budget, MODES[mode].per_layer),
                          allow_overcommit=False)
    [instance] = Planner(mode).plan(0, [info])
    scheduler.add([instance], 0.0)
    with pytest.raises(BudgetError, match="bytes"):
        scheduler.next_task(0, 0.0, 0)
    # Nothing ran, nothing was reserved; the task is still ready and raises again.
    assert instance.first.state == State.READY and not instance.first.forced
    assert budget.used_bytes == 0 and budget.events == [] and not scheduler.running
    assert scheduler.forced_events == 0
    with pytest.raises(BudgetError):
        scheduler.next_task(0, 1.0, 0)


def test_without_overcommit_a_task_that_fits_later_waits_instead_of_raising():
    info = chain("a", [2])
    budget = MemoryBudget(info.input_bytes)  # room for one network's input at a time
    scheduler = Scheduler(get_policy("masa"), memory_manager("layer", budget),
                          allow_overcommit=False)
    planner = Planner("masa")
    a, b = planner.plan(0, [info, chain("b", [2])])
    scheduler.add([a, b], 0.0)
    first = scheduler.next_task(0, 0.0, 0)
    assert first is a.first and budget.used_bytes == budget.capacity_bytes
    assert scheduler.next_task(0, 0.0, 1) is None  # b's init waits; something runs


def test_without_overcommit_network_granularity_also_refuses_an_impossible_init():
    info = chain("big", [8, 8])
    budget = MemoryBudget(info.peak_bytes - 1)
    scheduler = Scheduler(get_policy("masa"), memory_manager("network", budget),
                          allow_overcommit=False)
    [instance] = Planner("masa").plan(0, [info])
    scheduler.add([instance], 0.0)
    with pytest.raises(BudgetError):
        task = scheduler.next_task(0, 0.0, 0)
        # What happens instead: admitted over budget.
        assert task.forced and budget.used_bytes > budget.capacity_bytes


# -- examples: failures ------------------------------------------------------------------------


def test_failure_in_bulk_skips_the_rest_of_its_instance_and_the_chain_goes_on():
    infos = [chain("a", [3, 4]), chain("b", [2]), chain("c", [5])]
    budget = MemoryBudget(2**20)
    scheduler = Scheduler(get_policy("fcfs"), memory_manager("layer", budget, per_layer=False))
    planner = Planner("bulk")
    first = planner.plan(0, infos[:2])
    second = planner.plan(1, infos[2:])
    a, b, c = first + second
    scheduler.add(first, 0.0)
    scheduler.add(second, 0.5)
    assert scheduler.next_task(0, 1.0, 0) is a.first
    scheduler.finish(a.first, 2.0)
    load = scheduler.next_task(0, 2.0, 0)
    assert load is a.tasks[1] and budget.used_bytes > 0
    step = scheduler.finish(load, 3.0, error="boom")
    assert step.finished == [a] and a.failed == "boom" and load.error == "boom"
    assert [t.state for t in a.tasks] == [State.DONE, State.DONE, State.SKIPPED]
    assert step.ready == [b.first], "the chained next network is released"
    assert budget.used_bytes == 0, "the failed instance's reservations are returned"
    finished, now = [], 3.0
    while (task := scheduler.next_task(0, now, 0)) is not None:
        now += 1
        finished += scheduler.finish(task, now).finished
    assert finished == [b, c]
    assert all(t.state == State.DONE for t in b.tasks + c.tasks)
    assert budget.used_bytes == 0 and not scheduler.has_work()


def test_failure_waits_for_the_instances_running_tasks_before_it_is_over():
    info = chain("a", [3, 4, 5])
    budget = MemoryBudget(2**20)
    scheduler = Scheduler(get_policy("masa"), memory_manager("layer", budget))
    [a] = Planner("masa").plan(0, [info])
    scheduler.add([a], 0.0)
    scheduler.finish(scheduler.next_task(0, 0.0, 0), 1.0)
    loads = [scheduler.next_task(0, 1.0, w) for w in range(3)]
    assert [t.kind for t in loads] == [Kind.LOAD] * 3
    step = scheduler.finish(loads[0], 2.0, error=RuntimeError("boom"))
    assert step.finished == [] and a.failed == "boom"
    assert all(t.state == State.SKIPPED for t in a.tasks if t.kind == Kind.EXEC)
    assert scheduler.next_task(0, 2.0, 0) is None
    assert scheduler.finish(loads[1], 3.0).finished == []
    assert budget.used_bytes > 0
    assert scheduler.finish(loads[2], 4.0).finished == [a]
    assert budget.used_bytes == 0 and not scheduler.has_work()


def test_cancelling_an_instance_with_fail():
    info = chain("a", [3])
    budget = MemoryBudget(2**20)
    scheduler = Scheduler(get_policy("fcfs"), memory_manager("layer", budget))
    planner = Planner("linear")
    a, b = planner.plan(0, [info, info])
    scheduler.add([a, b], 0.0)
    step = scheduler.fail(a, "cancelled", 0.0)
    assert step.finished == [a] and step.ready == [b.first]
    assert all(t.state == State.SKIPPED for t in a.tasks)
    assert scheduler.next_task(0, 0.0, 0) is b.first


# -- examples: Masa's order (§3.2) -------------------------------------------------------------


def masa_scheduler(capacity: int = 2**30, granularity: str = "layer") -> Scheduler:
    return Scheduler(get_policy("masa"), memory_manager(granularity, MemoryBudget(capacity)))


def test_masa_runs_executions_first_then_loads_and_inits_shortest_network_first():
    planner = Planner("masa")
    slow = planner.plan(0, [chain("slow", [4, 4], mean_exec_ms=500, first_relu=True)])[0]
    fast = planner.plan(1, [chain("fast", [4], mean_exec_ms=5)])[0]
    fast2 = planner.plan(2, [chain("fast2", [4], mean_exec_ms=5)])[0]
    scheduler = masa_scheduler()
    scheduler.add([slow], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is slow.first
    scheduler.finish(slow.first, 1.0)
    scheduler.add([fast, fast2], 1.0)
    order = [scheduler.next_task(0, 1.0, w) for w in range(8)]
    labels = [(t.instance.name, t.label) for t in order if t is not None]
    assert labels == [
        ("slow", "exec r0"),  # an execution wins over everything, even a longer network's
        ("fast", "init"),  # then the shortest network's init (mean 5 ms)
        ("fast2", "init"),  # same mean: creation order
        ("slow", "load c0"),  # the long network's loads last
        ("slow", "load c1"),
    ]


def test_masa_puts_a_networks_loads_before_a_same_speed_networks_init():
    planner = Planner("masa")
    later = planner.plan(0, [chain("later", [4, 4], mean_exec_ms=5)])[0]
    first = planner.plan(1, [chain("first", [4, 4], mean_exec_ms=5)])[0]
    slow = planner.plan(2, [chain("slow", [4], mean_exec_ms=50)])[0]
    scheduler = masa_scheduler()
    scheduler.add([first], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is first.first
    scheduler.finish(first.first, 1.0)
    scheduler.add([later, slow], 1.0)
    order = [scheduler.next_task(0, 1.0, w) for w in range(4)]
    # "later"'s init was created before "first"'s loads, yet loads come before inits.
    assert later.first.id < first.tasks[1].id
    assert [(t.instance.name, t.label) for t in order] == [
        ("first", "load c0"), ("first", "load c1"), ("later", "init"), ("slow", "init")]


def test_masa_unknown_mean_time_counts_as_longest():
    planner = Planner("masa")
    unknown = planner.plan(0, [chain("unknown", [4])])[0]
    slow = planner.plan(1, [chain("slow", [4], mean_exec_ms=13138)])[0]
    scheduler = masa_scheduler()
    scheduler.add([unknown, slow], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is slow.first
    assert scheduler.next_task(0, 0.0, 1) is unknown.first


@pytest.mark.parametrize("forced", [False, True])
def test_masa_network_granularity_init_waits_while_a_network_is_active(forced):
    planner = Planner("masa")
    long = chain("long", [4, 4], mean_exec_ms=500)
    short = chain("short", [4], mean_exec_ms=5,
                  peak_bytes=long.peak_bytes + (1 if forced else 0))
    scheduler = masa_scheduler(capacity=long.peak_bytes, granularity="network")
    budget = scheduler.budget
    [a] = planner.plan(0, [long])
    scheduler.add([a], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is a.first
    [b] = planner.plan(1, [short])
    scheduler.add([b], 0.5)
    now = 1.0
    scheduler.finish(a.first, now)
    # b is shorter, so Masa would take its init first, but it does not fit while a is active:
    # no head-of-line blocking, a's loads go on.
    while a in scheduler.instances:
        assert a in scheduler.active
        task = scheduler.next_task(0, now, 0)
        assert task is not None and task.instance is a, task
        now += 1
        scheduler.finish(task, now)
    assert b.first.state == State.READY
    # No network active any more: b's init runs, recorded as forced if over capacity.
    assert scheduler.next_task(0, now, 0) is b.first
    assert b.first.forced is forced
    event = budget.events[-1]
    assert event.task_id == b.first.id and event.delta_bytes == short.peak_bytes
    assert event.forced is forced
    assert (budget.used_bytes > budget.capacity_bytes) is forced


def test_masa_network_granularity_init_that_fits_runs_alongside():
    planner = Planner("masa")
    a_info = chain("a", [4], mean_exec_ms=500)
    b_info = chain("b", [4], mean_exec_ms=5)
    scheduler = masa_scheduler(a_info.peak_bytes + b_info.peak_bytes, "network")
    a, b = planner.plan(0, [a_info, b_info])
    scheduler.add([a, b], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is b.first
    assert scheduler.next_task(0, 0.0, 1) is a.first
    assert scheduler.budget.used_bytes == scheduler.budget.capacity_bytes
    assert not b.first.forced and not a.first.forced


def test_masa_zero_byte_tasks_are_always_admitted_even_over_capacity():
    info = chain("big", [4, 4, 4], mean_exec_ms=10)
    scheduler = masa_scheduler(capacity=info.peak_bytes // 2, granularity="network")
    [a] = Planner("masa").plan(0, [info])
    scheduler.add([a], 0.0)
    init = scheduler.next_task(0, 0.0, 0)
    assert init.forced  # over capacity, by the "no active network" rule
    scheduler.finish(init, 1.0)
    loads = [scheduler.next_task(0, 1.0, w) for w in range(3)]
    # Loads reserve nothing at network granularity: all three may run at once.
    assert all(t is not None and t.kind == Kind.LOAD and not t.forced for t in loads)


# -- examples: HRRN ----------------------------------------------------------------------------


def test_hrrn_is_sjf_when_nothing_has_waited():
    planner = Planner("partial")
    long = planner.plan(0, [chain("long", [4], mean_exec_ms=100)])[0]
    short = planner.plan(1, [chain("short", [4], mean_exec_ms=1)])[0]
    scheduler = Scheduler(get_policy("hrrn"), memory_manager("layer", MemoryBudget(2**30)))
    scheduler.add([long, short], 0.0)
    assert scheduler.next_task(0, 0.0, 0) is short.first


def test_hrrn_prefers_a_long_waiting_task_over_a_new_short_one():
    planner = Planner("partial")
    long = planner.plan(0, [chain("long", [4], mean_exec_ms=100)])[0]
    short = planner.plan(1, [chain("short", [4], mean_exec_ms=1)])[0]
    scheduler = Scheduler(get_policy("hrrn"), memory_manager("layer", MemoryBudget(2**30)))
    scheduler.add([long], 0.0)
    scheduler.add([short], 1.0)  # seconds: long has waited 1000 ms
    # long: 1 + 1001 / 100 = 11.01; short: 1 + 1 / 1 = 2.
    assert scheduler.next_task(0, 1.0, 0) is long.first
    assert scheduler.next_task(0, 1.0, 1) is short.first


def test_hrrn_after_a_short_wait_keeps_the_sjf_order():
    planner = Planner("partial")
    long = planner.plan(0, [chain("long", [4], mean_exec_ms=100)])[0]
    short = planner.plan(1, [chain("short", [4], mean_exec_ms=1)])[0]
    scheduler = Scheduler(get_policy("hrrn"), memory_manager("layer", MemoryBudget(2**30)))
    scheduler.add([long], 0.0)
    scheduler.add([short], 0.005)  # 5 ms later: 1 + 6/100 < 1 + 1/1
    assert scheduler.next_task(0, 0.005, 0) is short.first


def test_policies_agree_on_an_empty_pool_and_a_single_task():
    for name in POLICIES:
        scheduler = Scheduler(get_policy(name), memory_manager("layer", MemoryBudget(2**30)))
        assert scheduler.next_task(0, 0.0, 0) is None
        [a] = Planner("partial").plan(0, [chain("a", [1])])
        scheduler.add([a], 0.0)
        assert scheduler.next_task(0, 0.0, 0) is a.first
        assert scheduler.next_task(0, 0.0, 1) is None
        assert math.isinf(a.info.mean_exec_ms)


@pytest.mark.parametrize("mode", ["partial", "bulk"])
def test_layer_granularity_ledger_of_one_small_network(mode):
    info = chain("a", [4])  # input 2*2*2 floats = 32 B; c0: (2*4+4)*4 = 48 B weights, 64 B out
    assert (info.input_bytes, info.layer("c0").weight_bytes, info.layer("c0").output_bytes) == (
        32, 48, 64)
    budget = MemoryBudget(2**20)
    scheduler = Scheduler(get_policy("fcfs"),
                          memory_manager("layer", budget, MODES[mode].per_layer))
    [a] = Planner(mode).plan(0, [info])
    scheduler.add([a], 0.0)
    now = 0.0
    while (task := scheduler.next_task(0, now, 0)) is not None:
        now += 1
        scheduler.finish(task, now)
    deltas = [(event.delta_bytes, event.reason) for event in budget.events]
    if mode == "partial":
        # The output is reserved when the exec starts, not with the load.
        assert deltas == [(32, "init of a"), (48, "load c0 of a"), (64, "exec c0 of a"),
                          (-48, "free c0"), (-32, "drop data"), (-64, "end of a")]
    else:  # whole model: all weights, then the forward pass's extra activations; back at the end
        assert deltas[:3] == [(32, "init of a"), (48, "load all layers of a"),
                              (64, "exec all layers of a")]
        assert sorted(deltas[3:]) == [(-64, "end of a"), (-48, "end of a"), (-32, "end of a")]
    assert budget.used_bytes == 0 and budget.peak_bytes == 144
