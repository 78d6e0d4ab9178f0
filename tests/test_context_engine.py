"""Gated networks in the threaded engine: children run on the inputs the condition returns,
with the plain forward's outputs, under both context policies, every mode and granularity; a
failed condition leaves no key in the result and (context-aware) no task in the trace; the
ledger returns to zero."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgecaffe.engine import Engine, RequestError
from edgecaffe.engine.tasks import network_input, run_task
from edgecaffe.errors import ConfigError
from edgecaffe.sched import GRANULARITIES, MODES, Kind

NETS = ["TinyAlex", "TinyResidual", "TinyInception"]
GATED = {"TinyResidual": "TinyAlex", "TinyInception": "TinyAlex"}


@pytest.fixture(scope="module")
def packages(zoo_packages):
    return zoo_packages(NETS)


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def crops(count: int, seed: int):
    """A condition that 'finds' `count` things: distinct images, as crops would be. It checks
    that it was given the parent's outputs."""
    def condition(child, outputs):
        assert isinstance(outputs, dict) and outputs
        return [image(100 * seed + i) for i in range(count)]
    return condition


@pytest.mark.parametrize("context", ["aware", "oblivious", "aware-idle"])
@pytest.mark.parametrize("granularity", list(GRANULARITIES))
@pytest.mark.parametrize("mode", list(MODES))
def test_gated_outputs_equal_the_plain_forward(packages, mode, granularity, context):
    counts = [0, 2, 1]
    with Engine(packages, mode=mode, budget="64M", granularity=granularity, workers=2,
                context=context) as engine:
        futures = [engine.submit(image(seed), ["TinyAlex"], gated=GATED,
                                 condition=crops(k, seed))
                   for seed, k in enumerate(counts)]
        results = [future.result(timeout=60) for future in futures]
    assert engine.budget.used_bytes == 0
    for seed, (k, result) in enumerate(zip(counts, results, strict=True)):
        expected = {f"{child}[{i}]": engine.packages[child].forward(
            network_input(image(100 * seed + i), engine.packages[child]))
            for child in GATED for i in range(k)}
        assert set(result) == {"TinyAlex", *expected}
        for key, blobs in expected.items():
            for blob, array in blobs.items():
                np.testing.assert_array_equal(result[key][blob], array)
    trace = engine.trace
    assert [r.status for r in trace.requests.values()] == ["completed"] * 3
    children = [t for t in trace.tasks if t.request_id == 0 and t.network in GATED]
    if context == "aware" or (context == "aware-idle" and MODES[mode].chained):
        # Nothing of them was planned, loaded or run (a chained mode's aware-idle plans as
        # aware: sched/requests.py).
        assert children == []
    else:
        assert children and all(t.state == "skipped" for t in children if t.kind == "exec")
    sums: dict[int, int] = {}
    for event in trace.ledger:
        sums[event.network_instance] = sums.get(event.network_instance, 0) + event.delta_bytes
    assert set(sums.values()) <= {0}


def test_gated_requests_are_checked(packages):
    with Engine(packages, budget="64M") as engine:
        with pytest.raises(ConfigError, match="need a condition"):
            engine.submit(image(0), ["TinyAlex"], gated=GATED)
        with pytest.raises(ConfigError, match="not one of the request's networks"):
            engine.submit(image(0), ["TinyAlex"], gated={"TinyResidual": "TinyInception"},
                          condition=crops(1, 0))
        assert not engine.book.open


@pytest.mark.parametrize("context", ["aware", "oblivious", "aware-idle"])
def test_a_condition_that_raises_fails_its_request_only(packages, context):
    def broken(child, outputs):
        raise KeyError("detection_out")

    with Engine(packages, budget="64M", context=context) as engine:
        bad = engine.submit(image(0), ["TinyAlex"], gated=GATED, condition=broken)
        good = engine.submit(image(1), ["TinyAlex"], gated=GATED, condition=crops(1, 1))
        with pytest.raises(RequestError, match="detection_out") as failure:
            bad.result(timeout=60)
        assert "TinyAlex" in failure.value.result  # the parent's outputs are there
        assert set(good.result(timeout=60)) == {"TinyAlex", "TinyResidual[0]",
                                                "TinyInception[0]"}
    assert engine.budget.used_bytes == 0


def test_cancelling_a_gated_request_ends_it(packages):
    with Engine(packages, mode="linear", budget="64M", context="oblivious") as engine:
        futures = [engine.submit(image(i), ["TinyAlex"], gated=GATED, condition=crops(2, i))
                   for i in range(4)]
        futures[-1].cancel()
        for future in futures[:-1]:
            future.result(timeout=60)
    assert futures[-1].cancelled()
    assert engine.budget.used_bytes == 0 and not engine.book.open


@pytest.mark.parametrize("context", ["oblivious", "aware-idle"])
def test_dropped_speculative_weights_stay_kept(packages, context):
    """Kept weights on: the second request's speculative loads take the first's kept copies
    (hits) and, its condition failing, keep them again, so that the third request's loads
    are hits too, with the plain forward's outputs."""
    def slow_detector(task, package):
        # TinyAlex's executions take a while, so that a worker is idle while it runs (as a
        # real detector's chain of layers leaves one): both settings then speculate.
        if task.kind == Kind.EXEC and task.instance.info.name == "TinyAlex":
            time.sleep(0.01)
        run_task(task, package, per_layer=True, keep=True)

    with Engine(packages, mode="masa", budget="64M", workers=2, context=context,
                keep_weights=True, task_runner=slow_detector) as engine:
        results = [engine.submit(image(seed), ["TinyAlex"], gated=GATED,
                                 condition=crops(k, seed)).result(timeout=60)
                   for seed, k in enumerate([1, 0, 1])]
        trace = engine.trace
        assert [g.outcome for g in trace.gates] == ["run", "run", "dropped", "dropped",
                                                    "run", "run"]
        for request_id in (1, 2):
            loads = [t for t in trace.tasks if t.request_id == request_id
                     and t.network in GATED and t.kind == "load" and t.state == "done"]
            assert loads and all(t.cached for t in loads), request_id
    assert engine.budget.used_bytes == 0 and engine.budget.cached_bytes == 0
    for child in GATED:
        expected = engine.packages[child].forward(
            network_input(image(200), engine.packages[child]))
        for blob, array in expected.items():
            np.testing.assert_array_equal(results[2][f"{child}[0]"][blob], array)
