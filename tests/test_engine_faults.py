"""The engine never loses a worker or a future: cancels racing with completion, tasks raising
BaseExceptions, user policies raising in `key`, Ctrl-C inside a task, close(cancel=True) with
work in flight. Every future ends exactly once, the ledger returns to zero, no thread is left.

Tasks here run a fake kernel (`task_runner`) that sleeps or raises, so the faults are injected
exactly where they hurt."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import CancelledError, Future, wait

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgecaffe.engine.engine as engine_module
from edgecaffe.engine import Engine, RequestError
from edgecaffe.model.package import split
from edgecaffe.sched import Kind, Policy, Task

NETS = ["TinyAlex", "TinyResidual"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, zoo_model):
    folder = tmp_path_factory.mktemp("packages")
    for name in NETS:
        split(list(zoo_model(name)), folder / name)
    return folder


def sleeper(seconds: float = 0.0005):
    def run(task: Task, package) -> None:
        time.sleep(seconds)
    return run


def assert_clean(engine: Engine, futures: list[Future]) -> None:
    """After close: every future ended once, the ledger is empty, the workers are gone."""
    assert all(future.done() for future in futures)
    assert engine.budget.used_bytes == 0
    assert not engine.scheduler.running and not engine.scheduler.instances
    assert not engine.book.open
    assert not any(thread.is_alive() for thread in engine._threads)
    statuses = [record.status for record in engine.trace.requests.values()]
    assert "pending" not in statuses
    for future, record in zip(futures, engine.trace.requests.values(), strict=True):
        assert (record.status == "cancelled") == future.cancelled(), record
        if record.status == "completed":
            assert future.exception() is None


def test_a_cancel_between_check_and_set_result_does_not_kill_the_worker(packages, monkeypatch):
    """The race of issue 11: the future is cancelled right before the engine sets its result.
    With one worker, a dead worker would hang every later request."""

    class CancelledJustInTime(Future):
        def set_result(self, result):
            self.cancel()
            super().set_result(result)  # raises InvalidStateError: the future is cancelled

    monkeypatch.setattr(engine_module, "Future", CancelledJustInTime)
    engine = Engine(packages, mode="linear", budget="64M", workers=1, task_runner=sleeper())
    first = engine.submit(None, NETS)
    assert wait([first], timeout=30).done
    monkeypatch.setattr(engine_module, "Future", Future)
    second = engine.submit(None, NETS)
    assert second.result(timeout=30) == {name: {} for name in NETS}
    engine.close()
    assert first.cancelled()
    assert engine.trace.requests[0].status == "cancelled"
    assert_clean(engine, [first, second])


@pytest.mark.parametrize("exception", [SystemExit(3), GeneratorExit(), RuntimeError("boom")])
def test_a_task_raising_any_exception_fails_only_its_request(packages, exception):
    def runner(task: Task, package) -> None:
        if task.instance.request_id == 1 and task.kind == Kind.EXEC:
            raise exception
        time.sleep(0.0005)

    engine = Engine(packages, mode="masa", budget="64M", workers=2, task_runner=runner)
    futures = [engine.submit(None, NETS) for _ in range(3)]
    wait(futures, timeout=30)
    engine.close()
    assert futures[0].result() and futures[2].result()
    with pytest.raises(RequestError, match=type(exception).__name__):
        futures[1].result()
    assert_clean(engine, futures)


def test_ctrl_c_inside_a_task_shuts_the_engine_down_cleanly(packages):
    started = threading.Event()

    def runner(task: Task, package) -> None:
        if task.instance.request_id == 2 and task.kind == Kind.EXEC:
            started.set()
            raise KeyboardInterrupt
        time.sleep(0.002)

    engine = Engine(packages, mode="masa", budget="64M", workers=2, task_runner=runner)
    futures = [engine.submit(None, NETS) for _ in range(8)]
    assert started.wait(30)
    engine.close()  # returns: the interrupt closed the engine and cancelled what was left
    assert_clean(engine, futures)
    assert any(future.cancelled() for future in futures)
    with pytest.raises(RequestError, match="KeyboardInterrupt"):
        futures[2].result()


class Picky(Policy):
    """A user policy whose key raises for one network."""

    name = "picky"

    def key(self, task: Task, now: float):
        if task.instance.name == "TinyResidual" and task.instance.request_id == 1:
            raise ZeroDivisionError("no order for you")
        return (task.kind != Kind.EXEC, task.id)


class DynamicPicky(Picky):
    static = False


@pytest.mark.parametrize("policy", [Picky(), DynamicPicky()])
def test_a_user_policy_raising_in_key_fails_that_request_only(packages, policy):
    engine = Engine(packages, mode="partial", policy=policy, budget="64M", workers=2,
                    task_runner=sleeper())
    futures = [engine.submit(None, NETS) for _ in range(3)]
    wait(futures, timeout=30)
    engine.close()
    with pytest.raises(RequestError, match="'picky' could not order .*ZeroDivisionError"):
        futures[1].result()
    assert futures[0].result() and futures[2].result()
    assert_clean(engine, futures)


def test_close_with_cancel_never_blocks_and_loses_nothing(packages):
    engine = Engine(packages, mode="masa", budget="64M", workers=2,
                    task_runner=sleeper(0.002))
    futures = [engine.submit(None, NETS) for _ in range(30)]
    time.sleep(0.02)
    engine.close(cancel=True)
    assert_clean(engine, futures)
    assert any(f.cancelled() for f in futures)


def test_blas_threads_are_the_process_own_again_once_the_engine_is_idle(packages):
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []

    def runner(task: Task, package) -> None:
        seen.append(blas_threads())

    engine = Engine(packages, mode="linear", budget="64M", workers=1, blas_threads=1,
                    task_runner=runner)
    engine.submit(None, ["TinyAlex"]).result(timeout=30)
    assert blas_threads() == before  # idle: the process's own count
    engine.close()
    assert seen and all(counts == [1] * len(before) for counts in seen)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), workers=st.integers(1, 3),
       mode=st.sampled_from(["masa", "linear", "deepeye", "bulk"]),
       budget=st.sampled_from(["16K", "64M"]))
def test_cancels_at_random_points_leave_nothing_behind(packages, seed, workers, mode, budget):
    rng = random.Random(seed)
    cancel_inside: set[int] = set(rng.sample(range(12), 3))
    futures: list[Future] = []
    lock = threading.Lock()

    def runner(task: Task, package) -> None:
        # Some requests cancel themselves from inside one of their tasks (the completion
        # path included: the last task of a network).
        request = task.instance.request_id
        if request in cancel_inside and rng.random() < 0.3:
            with lock:
                future = futures[request] if request < len(futures) else None
            if future is not None:
                future.cancel()
        time.sleep(rng.random() * 0.001)

    engine = Engine(packages, mode=mode, budget=budget, workers=workers, task_runner=runner)
    for _ in range(12):
        future = engine.submit(None, NETS)
        with lock:
            futures.append(future)
        if rng.random() < 0.3:
            futures[rng.randrange(len(futures))].cancel()
        time.sleep(rng.random() * 0.002)
    engine.close(cancel=rng.random() < 0.5)
    assert_clean(engine, futures)
    for future in futures:  # each ended exactly once: a result, an error or a cancel
        if future.cancelled():
            with pytest.raises(CancelledError):
                future.result(timeout=0)
        elif future.exception(timeout=0) is None:
            assert set(future.result(timeout=0)) == set(NETS)
        else:
            assert isinstance(future.exception(timeout=0), RequestError)


def test_the_result_has_every_network_its_status_and_timings(packages):
    def runner(task: Task, package) -> None:
        time.sleep(0.003)
        if task.instance.name == "TinyResidual" and task.kind == Kind.EXEC \
                and task.instance.request_id == 1:
            raise ValueError("bad layer file")

    engine = Engine(packages, mode="linear", budget="64M", workers=1, task_runner=runner)
    first = engine.submit(None, [*NETS, "TinyAlex"])
    second = engine.submit(None, NETS)
    result = first.result(timeout=30)
    with pytest.raises(RequestError, match="bad layer file") as failure:
        second.result(timeout=30)
    engine.close()
    assert result.request_id == 0 and result.status == "completed"
    assert list(result) == ["TinyAlex", "TinyResidual", "TinyAlex#2"]
    alex = result.networks["TinyAlex"]
    trace = engine.trace
    tasks = [t for t in trace.tasks if t.instance_id == 0]
    assert alex.status == "completed" and alex.error is None and alex.forced == 0
    assert alex.load_ms == pytest.approx(sum((t.end_s - t.start_s) * 1e3 for t in tasks
                                             if t.kind == "load"))
    assert alex.exec_ms == pytest.approx(sum((t.end_s - t.start_s) * 1e3 for t in tasks
                                             if t.kind == "exec"))
    assert alex.exec_ms >= 3 * sum(t.kind == "exec" for t in tasks) - 1e-6
    arrival = trace.requests[0].arrival_s
    assert alex.queued_ms == pytest.approx((min(t.start_s for t in tasks) - arrival) * 1e3)
    assert alex.response_ms == pytest.approx((max(t.end_s for t in tasks) - arrival) * 1e3)
    assert result.response_ms == pytest.approx(trace.requests[0].response_s * 1e3)
    # The failed request still carries its other network's outputs and the failure's cause.
    partial = failure.value.result
    assert partial.status == "failed" and list(partial) == ["TinyAlex"]
    assert partial.networks["TinyResidual"].status == "failed"
    assert "bad layer file" in partial.networks["TinyResidual"].error
    with pytest.raises(KeyError, match="failed"):
        partial["TinyResidual"]
