"""The real engine: worker threads drive the shared scheduler core with real kernels.

    with Engine(packages, mode="masa", budget="512M") as engine:
        future = engine.submit(image, ["AgeNet", "GenderNet"])
        outputs = future.result()      # {"AgeNet": {"prob": ...}, "GenderNet": {...}}

Workers block on one condition variable: a finished task wakes them (dependents became ready,
memory was returned); nothing polls or sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edgecaffe.blas import default_blas_threads, limit_blas
from edgecaffe.engine.requests import RequestBook
from edgecaffe.engine.tasks import run_task
from edgecaffe.engine.trace import Trace
from edgecaffe.model.package import ModelPackage, onnx_package, open_package
from edgecaffe.sched import (
    MODES,
    BudgetError,
    MemoryBudget,
    NetworkInfo,
    Planner,
    Policy,
    Scheduler,
    Step,
    get_policy,
)


class RequestError(RuntimeError):
    """A request whose network failed: names the network and the cause."""


class EngineClosedError(RuntimeError):
    """`submit` after `close`."""


def resolve_packages(packages: Mapping[str, Any] | str | Path) -> dict[str, ModelPackage]:
    """A mapping of name -> package folder, .onnx file or `ModelPackage`, or one folder holding
    packages (and .onnx files, split into the cache on first use)."""
    if isinstance(packages, str | Path):
        folder = Path(packages)
        found = sorted(p.parent for p in folder.glob("*/manifest.yaml"))
        models = sorted(folder.glob("*.onnx"))
        if not found and not models:
            raise ValueError(f"{folder}: holds no model packages (*/manifest.yaml) or .onnx files")
        opened = [open_package(path) for path in found] + [onnx_package(m) for m in models]
        return {package.name: package for package in opened}
    return {name: _package(value) for name, value in packages.items()}


def _package(value: Any) -> ModelPackage:
    if isinstance(value, ModelPackage):
        return value
    if Path(value).suffix.lower() == ".onnx":
        return onnx_package(value)
    return open_package(value)


class Engine:
    """Runs requests for several networks under a memory budget, with N worker threads."""

    def __init__(
        self,
        packages: Mapping[str, Any] | str | Path,
        mode: str = "masa",
        policy: str | Policy | None = None,
        budget: str | int = "512M",
        granularity: str = "layer",
        workers: int = 2,
        blas_threads: int | None = None,
        allow_overcommit: bool = True,
        cold_loads: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self.mode = MODES[mode]
        self.policy = get_policy(policy or self.mode.policy)
        self.packages = resolve_packages(packages)
        self.infos = {name: NetworkInfo.from_package(p) for name, p in self.packages.items()}
        for name, info in self.infos.items():
            info.name = name  # the caller's name for it (an original folder may say otherwise)
        self.budget = MemoryBudget(budget)
        self.scheduler = Scheduler(self.policy, self.budget, granularity, self.mode.per_layer,
                                   allow_overcommit)
        self.planner = Planner(self.mode)
        self.cold_loads = cold_loads
        self.workers = self.mode.workers or workers
        self.blas_threads = blas_threads or default_blas_threads(self.workers)
        self._blas_limit = limit_blas(self.blas_threads)
        self._condition = threading.Condition()
        self._closing = False
        self._epoch = time.perf_counter()
        self.trace = Trace(ledger=self.budget.events, capacity_bytes=self.budget.capacity_bytes,
                           info={"mode": mode, "policy": self.policy.name,
                                 "granularity": granularity, "workers": self.workers,
                                 "blas_threads": self.blas_threads,
                                 "budget_bytes": self.budget.capacity_bytes})
        self.book = RequestBook(self.planner, self.scheduler, self.trace)
        self._threads = [
            threading.Thread(target=self._work, args=(index, index % self.mode.pools),
                             name=f"edgecaffe-worker-{index}", daemon=True)
            for index in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def now(self) -> float:
        """Seconds since the engine started: the clock of every timestamp in the trace."""
        return time.perf_counter() - self._epoch

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, x: Any, networks: Sequence[str]) -> Future:
        """Queue one input for `networks`; the future's result is {network: {blob: array}}.

        A network named twice runs twice; the second result is keyed `name#2`."""
        networks = list(networks)
        unknown = [name for name in networks if name not in self.infos]
        if unknown:
            raise ValueError(f"unknown network(s) {unknown}; this engine has "
                             f"{', '.join(self.infos)}")
        if not networks:
            raise ValueError("a request needs at least one network")
        with self._condition:
            if self._closing:
                raise EngineClosedError("the engine is closed; submit before close()")
            infos = [self.infos[n] for n in networks]
            if not self.scheduler.allow_overcommit:
                self._check_fits(networks, infos)
            request = self.book.submit(networks, infos, self.now(), x)
            request.handle = future = Future()
            self._condition.notify_all()
        request_id = request.record.request_id
        future.add_done_callback(lambda f: self._on_cancel(f, request_id))
        return future

    def _check_fits(self, networks: list[str], infos: list[NetworkInfo]) -> None:
        """Reject a request with a task larger than the whole budget. Planned on a scratch
        planner: the real one links networks across requests and must only see accepted ones."""
        for instance in Planner(self.mode).plan(-1, infos):
            for task in instance.tasks:
                need = self.scheduler.reservation(task)
                if need > self.budget.capacity_bytes:
                    raise BudgetError(
                        f"request for {networks}: {task.label} of {instance.name} needs {need} "
                        f"bytes, more than the whole budget of {self.budget.capacity_bytes}")

    def map(self, inputs: Iterable[Any], networks: Sequence[str]) -> list[Future]:
        return [self.submit(x, networks) for x in inputs]

    # -- workers -------------------------------------------------------------------------------

    def _work(self, worker: int, pool: int) -> None:
        while True:
            with self._condition:
                while True:
                    try:
                        task = self.scheduler.next_task(pool, self.now(), worker)
                    except BudgetError as error:  # allow_overcommit=False and it can never fit
                        self._apply(self.scheduler.fail(error.task.instance, str(error),
                                                        self.now()))
                        continue
                    if task is not None:
                        break
                    if self._closing and not self.scheduler.has_work():
                        self._condition.notify_all()
                        return
                    self._condition.wait()
            error = None
            instance = task.instance
            try:
                if instance.failed is None:
                    run_task(task, self.packages[instance.name], self.mode.per_layer,
                             self.cold_loads)
            except Exception as exc:  # a bad layer file, a kernel error: fail this network only
                error = f"{task.label} failed: {type(exc).__name__}: {exc}"
            with self._condition:
                self._apply(self.scheduler.finish(task, self.now(), error))
                self._condition.notify_all()

    def _apply(self, step: Step) -> None:
        """Resolve the requests whose last network just finished (called under the lock)."""
        for request in self.book.settle(step):
            future: Future = request.handle
            if future.cancelled():
                request.record.status = "cancelled"
            elif request.failed:
                future.set_exception(RequestError(request.record.error))
            else:
                future.set_result({i.state["key"]: i.state.pop("outputs")
                                   for i in request.instances})
            for i in request.instances:
                i.state.clear()

    def _on_cancel(self, future: Future, request_id: int) -> None:
        if not future.cancelled():
            return
        with self._condition:
            request = self.book.open.get(request_id)
            if request is not None:
                for instance in request.instances:
                    self._apply(self.scheduler.fail(instance, "cancelled", self.now()))
            self._condition.notify_all()

    # -- closing -------------------------------------------------------------------------------

    def close(self, cancel: bool = False) -> None:
        """Stop accepting requests and wait for the workers. In-flight requests finish, or with
        `cancel=True` those not yet done are cancelled (their futures say so); none is lost."""
        with self._condition:
            if self._closing and not self._threads[0].is_alive():
                return  # already closed
            self._closing = True
            pending = list(self.book.open.values())
            self._condition.notify_all()
        if cancel:
            for request in pending:
                request.handle.cancel()
        for thread in self._threads:
            thread.join()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)
