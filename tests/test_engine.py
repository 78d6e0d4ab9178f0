"""The threaded engine: every mode x policy x granularity gives the plain forward's outputs;
failures stay with their request; closing loses nothing; the trace is consistent."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

import edgecaffe
from edgecaffe.engine import Engine, EngineClosedError, RequestError
from edgecaffe.engine.tasks import network_input
from edgecaffe.errors import ConfigError
from edgecaffe.sched import GRANULARITIES, MODES, POLICIES, BudgetError

NETS = ["TinyAlex", "TinyResidual", "TinyInception"]


@pytest.fixture(scope="module")
def packages(zoo_packages):
    return zoo_packages(NETS)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def expected_outputs(engine: Engine, x) -> dict:
    """The plain layer-by-layer forward, under the engine's BLAS thread count (BLAS results
    depend on it), so equality can be exact."""
    return {name: package.forward(network_input(x, package))
            for name, package in engine.packages.items()}


@pytest.mark.parametrize("granularity", list(GRANULARITIES))
@pytest.mark.parametrize("policy", [None, *POLICIES])
@pytest.mark.parametrize("mode", list(MODES))
def test_outputs_equal_the_plain_forward(packages, mode, policy, granularity):
    budget = "64K" if policy == "masa" else "64M"  # a tight budget exercises the progress rule
    with Engine(packages, mode=mode, policy=policy, budget=budget, granularity=granularity,
                workers=2) as engine:
        futures = [engine.submit(image(seed), NETS) for seed in range(2)]
        results = [future.result(timeout=60) for future in futures]
        for seed, result in enumerate(results):
            expected = expected_outputs(engine, image(seed))
            assert set(result) == set(NETS)
            for name in NETS:
                for blob, array in expected[name].items():
                    np.testing.assert_array_equal(result[name][blob], array)
        assert engine.budget.used_bytes == 0
    trace = engine.trace
    assert [r.status for r in trace.requests.values()] == ["completed", "completed"]
    over = [e for e in trace.ledger if e.used_bytes > trace.capacity_bytes]
    assert not over or trace.forced_events, "over budget without a recorded progress event"


def test_engine_api_and_trace(packages):
    with Engine({name: packages / name for name in NETS}, mode="masa", budget="1G",
                workers=2) as engine:
        future = engine.submit(image(), ["TinyAlex", "TinyResidual"])
        result = future.result(timeout=30)
    assert set(result) == {"TinyAlex", "TinyResidual"} and "prob" in result["TinyAlex"]
    trace = engine.trace
    request = trace.requests[0]
    assert request.status == "completed" and request.response_s > 0
    for task in trace.tasks:
        assert task.created_s <= task.ready_s <= task.start_s <= task.end_s
        assert task.worker in (0, 1)
    ends = {t.task_id: t.end_s for t in trace.tasks}
    for task in trace.tasks:
        for dep in task.depends_on:
            assert ends[dep] <= task.start_s
    assert request.completion_s == max(t.end_s for t in trace.tasks)
    latencies = trace.dispatch_latencies_s()
    assert latencies and min(latencies) >= 0
    assert trace.info["mode"] == "masa"
    assert trace.info["blas_threads"] == "adaptive"  # the default: see test_blas_threads.py
    assert trace.info["cores"] == len(os.sched_getaffinity(0))
    assert trace.ledger[-1].used_bytes == 0


def test_submit_rejects_bad_requests(packages):
    with Engine(packages, mode="masa") as engine:
        with pytest.raises(ValueError, match="unknown network.*'NoNet'"):
            engine.submit(image(), ["TinyAlex", "NoNet"])
        with pytest.raises(ValueError, match="at least one"):
            engine.submit(image(), [])
    with pytest.raises(EngineClosedError):
        engine.submit(image(), ["TinyAlex"])
    with (Engine(packages, mode="masa", budget="1K", allow_overcommit=False) as engine,
          pytest.raises(BudgetError, match="more than the whole budget")):
        engine.submit(image(), ["TinyAlex"])
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        Engine(packages, mode="fast")
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        Engine(packages, policy="best")
    with pytest.raises(ValueError, match="memory size"):
        Engine(packages, budget="lots")


def test_a_corrupt_layer_file_fails_only_its_request(tmp_path, packages):
    broken = tmp_path / "broken"
    shutil.copytree(packages / "TinyResidual", broken / "TinyResidual")
    shutil.copytree(packages / "TinyAlex", broken / "TinyAlex")
    with Engine(broken, mode="masa", budget="1G") as engine:
        good = engine.submit(image(1), ["TinyAlex"])
        # Corrupt a weight file while the engine runs (same size: only the checksum knows).
        weights = engine.packages["TinyResidual"].weight_file("conv2")
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
        bad = engine.submit(image(2), ["TinyAlex", "TinyResidual"])
        after = engine.submit(image(3), ["TinyAlex"])
        with pytest.raises(RequestError) as error:
            bad.result(timeout=30)
        assert "TinyResidual" in str(error.value) and "'conv2'" in str(error.value)
        assert str(weights) in str(error.value)
        assert "prob" in good.result(timeout=30)["TinyAlex"]
        assert "prob" in after.result(timeout=30)["TinyAlex"]
    assert engine.budget.used_bytes == 0
    statuses = [r.status for r in engine.trace.requests.values()]
    assert statuses.count("failed") == 1 and statuses.count("completed") == 2


def test_a_bad_input_fails_its_request_only(packages):
    with Engine(packages, mode="partial", budget="1G") as engine:
        bad = engine.submit(np.zeros((2, 2), np.float32), ["TinyAlex"])
        good = engine.submit(image(), ["TinyAlex"])
        with pytest.raises(RequestError, match="fits neither"):
            bad.result(timeout=30)
        assert "prob" in good.result(timeout=30)["TinyAlex"]


def test_close_finishes_in_flight_requests(packages):
    engine = Engine(packages, mode="masa", budget="1G")
    futures = [engine.submit(image(seed), NETS) for seed in range(6)]
    engine.close()
    assert all(f.done() and not f.cancelled() for f in futures)
    assert all(set(f.result()) == set(NETS) for f in futures)
    assert not any(thread.is_alive() for thread in engine._threads)


def test_close_with_cancel_loses_nothing(packages):
    engine = Engine(packages, mode="linear", budget="1G")
    futures = [engine.submit(image(seed), NETS) for seed in range(8)]
    engine.close(cancel=True)
    assert all(f.done() for f in futures)
    cancelled = [f for f in futures if f.cancelled()]
    completed = [f for f in futures if not f.cancelled()]
    assert cancelled, "eight linear requests cannot all finish before close"
    for future in completed:
        assert set(future.result()) == set(NETS)
    statuses = {r.status for r in engine.trace.requests.values()}
    assert statuses <= {"completed", "cancelled"}
    assert engine.budget.used_bytes == 0


def test_cancelling_a_future_cancels_its_request(packages):
    with Engine(packages, mode="linear", budget="1G") as engine:
        futures = [engine.submit(image(seed), NETS) for seed in range(5)]
        assert futures[-1].cancel()
        for future in futures[:-1]:
            assert set(future.result(timeout=30)) == set(NETS)
    assert engine.trace.requests[4].status == "cancelled"
    assert engine.budget.used_bytes == 0


def test_concurrent_submitters(packages):
    with Engine(packages, mode="masa", budget="256K", workers=3) as engine:
        futures = []
        lock = threading.Lock()

        def submit(seed: int) -> None:
            future = engine.submit(image(seed), NETS[: 1 + seed % 3])
            with lock:
                futures.append(future)

        threads = [threading.Thread(target=submit, args=(seed,)) for seed in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(f.result(timeout=60) for f in futures)
    assert len(engine.trace.requests) == 12
    assert all(r.status == "completed" for r in engine.trace.requests.values())


def test_engine_is_importable_from_the_top():
    assert edgecaffe.Engine is Engine


def test_networks_are_known_by_the_callers_names(packages):
    with Engine({"alex": packages / "TinyAlex"}, mode="masa") as engine:
        result = engine.submit(image(), ["alex"]).result(timeout=30)
    assert list(result) == ["alex"] and "prob" in result["alex"]
    assert engine.trace.tasks[0].network == "alex"


def test_a_network_named_twice_runs_twice(packages):
    with Engine(packages, mode="deepeye") as engine:
        result = engine.submit(image(), ["TinyAlex", "TinyResidual", "TinyAlex"]).result(30)
    assert list(result) == ["TinyAlex", "TinyResidual", "TinyAlex#2"]
    np.testing.assert_array_equal(result["TinyAlex"]["prob"], result["TinyAlex#2"]["prob"])
    assert set(engine.trace.requests[0].network_spans) == set(result)


def test_a_rejected_request_does_not_break_chained_modes(packages):
    """bulk links each network to the previous submission: a rejected request must not be one."""
    # TinyAlex's weights (29.6 kB, loaded at once in bulk) exceed the budget; TinyInception fits.
    with Engine(packages, mode="bulk", budget=25000, allow_overcommit=False) as engine:
        with pytest.raises(BudgetError, match="TinyAlex"):
            engine.submit(image(), ["TinyInception", "TinyAlex"])
        result = engine.submit(image(), ["TinyInception"]).result(timeout=30)
    assert "prob" in result["TinyInception"]


def test_the_never_fits_check_is_remembered_per_request_shape(packages, monkeypatch):
    """A server checks every call: the plan behind the answer is made once per set of
    networks, and a request that can never fit is still refused every time."""
    from edgecaffe.sched.core import Core
    planned = []
    real = Core._never_fits
    monkeypatch.setattr(Core, "_never_fits",
                        lambda self, *args: planned.append(args[0]) or real(self, *args))
    with Engine(packages, mode="bulk", budget=25000, allow_overcommit=False) as engine:
        for _ in range(3):
            with pytest.raises(BudgetError, match="TinyAlex"):
                engine.submit(image(), ["TinyAlex"])
            engine.submit(image(), ["TinyInception"]).result(timeout=30)
        with pytest.raises(ConfigError, match="unknown network"):
            engine.submit(image(), ["NoSuchNet"])
    assert planned == [["TinyAlex"], ["TinyInception"]]
