"""Deadlock avoidance at the layer granularity (sched/memory.py's docstring): when every network
can run alone within the budget, the progress rule never forces a task over it.

The oracle for "runs alone within the budget" is the scheduler itself: one instance, one worker
(per pool), fcfs, an unlimited budget; its ledger's peak. It does not use the avoidance rule's
own figures (`memory.Path`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecaffe.model.network import Layer
from edgecaffe.sched import (
    MODES,
    POLICIES,
    MemoryBudget,
    NetworkInfo,
    Planner,
    Scheduler,
    State,
    get_policy,
    memory_manager,
)
from edgecaffe.sched.avoidance import exact_need
from edgecaffe.sched.memory import LayerMemory
from test_sched_properties import chain, check_run, dense, drive, info_of, networks


def solo_peak_bytes(info: NetworkInfo | Sequence[NetworkInfo], mode: str) -> int:
    """The ledger's peak when `info` (or one request for these networks) runs alone: one
    worker per pool, fcfs, no limit."""
    infos = [info] if isinstance(info, NetworkInfo) else list(info)
    run = drive(MODES[mode], "fcfs", "layer", 2**40, MODES[mode].pools, [(0.0, infos)], [1])
    return run.budget.peak_bytes


def fc_net(name: str, widths: Sequence[int], inputs: int = 4) -> NetworkInfo:
    """Input (1, inputs), then Dense layers: the weights dwarf the activations, like VGG's
    fc6-8."""
    layers = [Layer("data", "Input", [], ["data"], {"shape": [1, inputs]})]
    bottom = "data"
    for index, width in enumerate(widths):
        layers.append(dense(f"fc{index}", bottom, width))
        bottom = f"fc{index}"
    return info_of(layers, name)


@st.composite
def crowded(draw, modes: Sequence[str]):
    """Random networks and arrivals, close together, on a budget between the largest solo
    peak and a little more: memory is short, but every network fits alone (DeepEye: every
    request, whose networks wait on each other's tasks)."""
    mode = draw(st.sampled_from(modes))
    pool = [draw(networks(f"n{index}")) for index in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):  # a weight-heavy network, where prefetching hurts most
        pool.append(fc_net("fc", draw(st.lists(st.integers(2, 64), min_size=2, max_size=4))))
    requests = [(float(draw(st.integers(0, 6))),
                 [draw(st.sampled_from(pool)) for _ in range(draw(st.integers(1, 3)))])
                for _ in range(draw(st.integers(1, 6)))]
    if MODES[mode].arrival_links:  # the networks of one request are one unit
        peaks = [solo_peak_bytes(infos, mode) for _, infos in requests]
    else:
        used = {id(info): info for _, infos in requests for info in infos}.values()
        peaks = [solo_peak_bytes(info, mode) for info in used]
    capacity = max(peaks) + draw(st.integers(0, sum(peaks)))
    return dict(mode=MODES[mode], policy=draw(st.sampled_from(sorted(POLICIES))),
                granularity="layer", capacity=capacity,
                workers=MODES[mode].workers or draw(st.integers(MODES[mode].pools, 4)),
                requests=requests,
                durations=draw(st.lists(st.integers(1, 5), min_size=1, max_size=12)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=crowded(sorted(MODES)))
def test_no_forced_admission_when_every_network_fits_alone(scenario):
    run = drive(**scenario)
    check_run(run)  # every instance ends; the ledger balances; forced events as recorded
    assert run.scheduler.forced_events == 0
    assert run.scheduler.unsafe_events == 0  # the fallback was never needed either
    capacity = run.budget.capacity_bytes
    assert all(event.used_bytes <= capacity for event in run.budget.events)
    assert run.budget.peak_bytes <= capacity


@pytest.mark.parametrize("guarded", [True, False])
def test_prefetched_weights_no_longer_block_the_big_layer(monkeypatch, guarded):
    """VGG's tail in small: fc0 (32 -> 16) takes most of the budget, fc1 and fc2 are small.
    Without the rule, instances prefetch fc1/fc2 while fc0 does not fit, and then wait for
    each other's fc0 (what the instrumented rpi4-sd run showed with ObjectNet's fc6)."""
    info = fc_net("vgg-tail", [16, 8, 4], inputs=32)
    peak = solo_peak_bytes(info, "masa")
    if not guarded:  # the rule off: the same run deadlocks and forces (the test can fail)
        monkeypatch.setattr(LayerMemory, "guarded", False)
    requests = [(0.0, [info] * 4), (1.0, [info] * 2)]
    run = drive(MODES["masa"], "masa", "layer", peak + peak // 8, 2, requests, [3, 1, 2])
    check_run(run)
    if guarded:
        assert run.scheduler.forced_events == 0
        assert run.budget.peak_bytes <= run.budget.capacity_bytes
    else:
        assert run.scheduler.forced_events > 0


def test_the_path_figures_of_a_small_chain():
    """held[k] and need[k] by hand for init, load c0, exec c0, load c1, exec c1 (partial)."""
    info = chain("c", [3, 2])  # input (1, 2, 2, 2): 32 bytes; c0: 3x2 + 3 weights, 48 out
    budget = MemoryBudget(2**20)
    memory = memory_manager("layer", budget)
    scheduler = Scheduler(get_policy("masa"), memory)
    [instance] = Planner("masa").plan(0, [info])
    scheduler.add([instance], 0.0)
    path = instance.tasks[0].plan.path
    labels = [instance.tasks[position].label for position in path.order]
    assert labels == ["init", "load c0", "exec c0", "load c1", "exec c1"]
    w0, o0, w1, o1, x = (3 * 2 + 3) * 4, 3 * 4 * 4, (2 * 3 + 2) * 4, 2 * 4 * 4, 32
    # init holds x; load c0 adds w0; exec c0 adds o0 as it starts and returns w0 and x as it
    # ends; load c1 adds w1; exec c1 adds o1 and returns w1 and o0 (c1's output is the
    # network's: kept to the end). Outputs are reserved by their execs, not their loads.
    assert path.held == [0, x, x + w0, o0, o0 + w1, o1]
    exec0 = max(o0, o0 - w0 - x + w1 + o1)  # exec c0's own output, or what follows it
    assert path.need == [x + w0 + exec0, w0 + exec0, exec0, w1 + o1, o1, 0]
    assert path.need[0] == solo_peak_bytes(info, "masa")


def test_network_granularity_is_not_guarded():
    """The original's rule stays as it was: an init that fits now runs; none is refused for
    safety (its loads and execs reserve nothing)."""
    memory = memory_manager("network", MemoryBudget(2**20))
    assert not memory.guarded
    scheduler = Scheduler(get_policy("masa"), memory)
    [instance] = Planner("masa").plan(0, [chain("c", [3, 2])])
    scheduler.add([instance], 0.0)
    assert all(task.plan.path is None for task in instance.tasks)


def test_a_network_that_cannot_run_alone_is_not_guarded_and_still_runs():
    """Each task fits the budget, the network alone does not (bulk holds every weight during
    its exec): nothing can avoid forcing, and the rule does not stall it."""
    info = fc_net("fat", [32, 32])
    capacity = max(task_bytes(info, "bulk")) + 1
    assert solo_peak_bytes(info, "bulk") > capacity
    run = drive(MODES["bulk"], "fcfs", "layer", capacity, 1, [(0.0, [info, info])], [1])
    check_run(run)
    assert run.scheduler.forced_events > 0


def task_bytes(info: NetworkInfo, mode: str) -> list[int]:
    scheduler = Scheduler(get_policy("fcfs"),
                          memory_manager("layer", MemoryBudget(2**40), MODES[mode].per_layer))
    [instance] = Planner(mode).plan(0, [info])
    scheduler.add([instance], 0.0)
    return [task.plan.nbytes for task in instance.tasks]


def test_a_prefetched_load_is_held_not_needed_again():
    """The quick figure `need[f]` counts a load started ahead of the frontier twice (held, and
    needed when the path reaches it); the exact need does not. init, load c0, exec c0, load c1,
    exec c1, with c1 prefetched."""
    info = chain("c", [2, 8])
    scheduler = Scheduler(get_policy("masa"), memory_manager("layer", MemoryBudget(2**20)))
    [instance] = Planner("masa").plan(0, [info])
    scheduler.add([instance], 0.0)
    path = instance.tasks[0].plan.path
    labels = [instance.tasks[position].label for position in path.order]
    assert labels == ["init", "load c0", "exec c0", "load c1", "exec c1"]
    init, load1 = instance.tasks[path.order[0]], instance.tasks[path.order[3]]
    w0, o0, w1, o1, x = (2 * 2 + 2) * 4, 2 * 4 * 4, (8 * 2 + 8) * 4, 8 * 4 * 4, 32
    assert path.need[1] == w0 + max(o0, o0 - w0 - x + w1 + o1)  # load c1 dominates
    init.state = load1.state = State.DONE  # init ran; load c1 ran ahead of load c0
    # Without load c1 (held already): exec c1's output after exec c0's end dominates.
    assert exact_need(instance, path, 1, init) == (max(w0 + o0, o0 - x + o1), w1)
    load1.state = State.SKIPPED  # skipped (its instance failed): neither held nor to run
    assert exact_need(instance, path, 1, init) == (max(w0 + o0, o0 - x + o1), 0)
