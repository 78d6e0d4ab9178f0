"""The real engine: worker threads drive the shared scheduler core with real kernels.

    with Engine(packages, mode="masa", budget="512M") as engine:
        future = engine.submit(image, ["AgeNet", "GenderNet"])
        result = future.result()       # {"AgeNet": {"prob": ...}, "GenderNet": {...}}
        result.networks["AgeNet"]      # its status, error and timings

Workers block on one condition variable: a finished task wakes them (dependents became ready,
memory was returned); nothing polls or sleeps.

Futures follow `concurrent.futures`: every future ends exactly once (result, exception or
cancelled); a request may be cancelled until it is done, and a cancel that races with its
completion never reaches a worker. Nothing a task or a user policy raises kills a worker: the
affected request fails, the others go on, and the ledger returns to zero.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from functools import partial
from pathlib import Path
from typing import Any

from edgecaffe.blas import BlasHold, available_cores, check_blas_threads
from edgecaffe.engine.guard import PolicyGuard
from edgecaffe.engine.kept import KeptWeights
from edgecaffe.engine.limit import fit_packages, refused_alone
from edgecaffe.engine.result import NetworkResult, RequestError, RequestResult
from edgecaffe.engine.tasks import run_task
from edgecaffe.errors import ConfigError
from edgecaffe.model.info import package_info
from edgecaffe.model.package import ModelPackage, onnx_package, open_package
from edgecaffe.ops import backend_kernels
from edgecaffe.ops.conv import release_band_cap
from edgecaffe.sched import (
    MODES,
    BudgetError,
    Core,
    Kind,
    NetworkInstance,
    Policy,
    Request,
    Step,
    Task,
)
from edgecaffe.sched.core import request_shape

#: What `_wait_for_task` returns when it settled requests itself: flush, then wait again.
_SETTLED = object()


class EngineClosedError(RuntimeError):
    """`submit` after `close`."""


class EngineError(RuntimeError):
    """The engine stopped on an internal error; requests still open fail with it."""


#: What a task does: given the task and its network's package, load or run it. The default
#: reads weight files and runs the numpy kernels (`engine/tasks.py`).
TaskRunner = Callable[[Task, ModelPackage], None]


#: A gated network's condition, as the engine calls it: (child network, its parent's outputs
#: {blob: array}) -> the child's inputs (none: the condition failed).
Condition = Callable[[str, Mapping[str, Any]], Sequence[Any]]


def _on_outputs(condition: Condition | None
                ) -> Callable[[str, NetworkInstance], Sequence[Any]] | None:
    """The core's condition (child, parent instance) from the engine's (child, outputs)."""
    if condition is None:
        return None
    # A task runner of the caller's (a test's fake kernel) may leave no outputs: then {}.
    return lambda child, parent: condition(child, getattr(parent.work, "outputs", None) or {})


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
    """Runs requests for several networks under a memory budget, with N worker threads.

    `packages`: name -> package folder or `ModelPackage`, or one folder of packages. `mode`,
    `policy`, `budget`, `granularity`, `workers`, `allow_overcommit`: see `sched.Core`.
    `blas_threads`: BLAS threads of each execution while requests are in flight: "adaptive"
    (the default: the `cores` shared out among the executions running, `blas.shared_threads`;
    one running alone gets all of them) or a fixed count; the process's own count comes back
    whenever the engine is idle. `cores`: what the adaptive rule shares out (default: the
    cores this process may run on). The onnxruntime backend's intra-op threads follow the
    same count.
    `cold_loads`: drop each weight file's cached pages before reading it (SD-card-like loads).
    `task_runner`: what a task does (default: real weight files and kernels); tests give a
    fake kernel here. `backend`: the default runner's kernels, "numpy" (the reference) or
    "onnxruntime" (`pip install edgecaffe[fast]`); raises `ops.BackendError` if unavailable.
    `context`: when gated networks (`submit(..., gated=...)`) load: "aware", once their
    condition holds; "oblivious", speculatively with their request; "aware-idle",
    speculatively only into budget nothing else asks for (sched/requests.py).

    `account_runtime`: `budget` is the process's whole memory limit (a cgroup's): the
    runtime's own footprint, measured now, is not schedulable, so the ledger's capacity is
    `budget` less it (`runtime_bytes`; raises `BudgetError` when nothing is left); each exec
    reserves its kernel's workspace in the ledger while it runs (`Core(workspaces=True)`),
    and convolution bands are capped to follow the capacity (`max_band_bytes`, restored at
    `close`); freed arrays are returned to the system (`measure.return_freed_memory`).
    `load_method`: how loads bring weights in ("mmap" or "read", see
    `model.package.package`). `max_block`: packages with Dense/Conv layers over this size
    run from a blocked copy (`model.package.blocks.block_package`, derived into the cache
    once); "auto" (the default) blocks a package with a layer over a quarter of the ledger's
    capacity, at `auto_block_bytes` of it (`blocked_packages`); None never.
    `keep_weights`: freed weights stay in memory while the budget has room, on the ledger as
    evictable bytes, so that a later load of the same layer reads nothing (sched/cache.py,
    engine/kept.py; the trace marks such loads `cached`); off (the default), every load
    reads its layer, as the original did. What is kept is evicted at `close`."""

    def __init__(
        self,
        packages: Mapping[str, Any] | str | Path,
        mode: str = "masa",
        policy: str | Policy | None = None,
        budget: str | int = "512M",
        granularity: str = "layer",
        workers: int = 2,
        blas_threads: int | str | None = None,
        allow_overcommit: bool = True,
        cold_loads: bool = False,
        task_runner: TaskRunner | None = None,
        backend: str = "numpy",
        context: str = "aware",
        cores: int | None = None,
        account_runtime: bool = False,
        load_method: str | None = None,
        max_block: str | int | None = "auto",
        keep_weights: bool = False,
    ) -> None:
        self.packages = resolve_packages(packages)
        # Bad settings fail before anything is held (a band cap, a runtime measure).
        backend_kernels(backend)  # an unknown or missing backend fails here, not in a task
        self.blas_threads = check_blas_threads(blas_threads)
        self._band = None
        try:
            count = getattr(MODES.get(mode), "workers", None) or workers
            self.packages, budget, runtime, self._band = fit_packages(
                self.packages, budget, count, account_runtime, max_block, load_method, backend)
            infos = {name: package_info(p) for name, p in self.packages.items()}
            self._guard = PolicyGuard.wrap(policy)
            # Under a real limit each exec reserves its kernel's workspace while it runs.
            self.core = core = Core(infos, mode, self._guard or policy, budget, granularity,
                                    workers, allow_overcommit, context=context,
                                    workspaces=account_runtime, keep_weights=keep_weights)
        except BaseException:  # no engine: its band cap must not outlive it
            if self._band is not None:
                release_band_cap(self._band)
            raise
        self.mode, self.policy, self.budget = core.mode, core.policy, core.budget
        self.scheduler, self.book, self.trace = core.scheduler, core.book, core.trace
        self.infos, self.workers = core.infos, core.workers
        #: What the process held at start (interpreter, libraries, BLAS buffers) when
        #: `account_runtime`: not schedulable, so the ledger's capacity is the budget less it.
        self.runtime_bytes = runtime
        #: Bytes set aside for exec workspaces: none, each exec reserves its own in the
        #: ledger while it runs (`account_runtime`); None without `account_runtime`.
        self.workspace_bytes = None if runtime is None else 0
        if runtime is not None:
            core.trace.info.update(runtime_bytes=runtime, workspace_bytes=0,
                                   limit_bytes=runtime + self.budget.capacity_bytes)
        self.cores = cores or available_cores()
        core.trace.info["blas_threads"] = self.blas_threads
        core.trace.info["cores"] = self.cores
        self._blas = BlasHold(self.blas_threads, self.cores)
        self._blas_held = False
        #: Requests settled and futures to cancel, waiting for `_flush` (outside the lock).
        self._outcomes: list[tuple[Request, Any]] = []
        self._cancels: list[Future] = []
        self.cold_loads = cold_loads
        self.backend = backend
        self._run_task = task_runner or partial(run_task, per_layer=self.mode.per_layer,
                                                cold=cold_loads, backend=backend,
                                                keep=keep_weights)
        #: Kept weights' arrays (engine/kept.py), moved as the core's cache decides.
        self._kept = KeptWeights(self.packages) if keep_weights else None
        if self._kept is not None:
            core.memory.cache.listener = self._kept
        #: check_fits' simulated alone runs by request shape (None: it fits).
        self._alone: dict[tuple, str | None] = {}
        self._condition = threading.Condition()
        self._closing = False
        self._broken: str | None = None
        self._epoch = time.perf_counter()
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

    def submit(self, x: Any, networks: Sequence[str], gated: Mapping[str, str] | None = None,
               condition: Condition | None = None, order: int | None = None) -> Future:
        """Queue one input (an image path, an H x W x 3 BGR uint8 array, or an NCHW array of
        the network's input shape) for `networks`.

        The future's result is a `RequestResult`: a mapping network -> {blob: array} with each
        network's status and timings in `.networks`; if a network fails, `result()` raises
        `RequestError`, whose `.result` holds the others' outputs. A network named twice runs
        twice; the second result is keyed `name#2`. Raises ValueError for unknown networks,
        `BudgetError` (with `allow_overcommit=False`) for a request that can never fit,
        `EngineClosedError` after `close`; anything raised while the request is registered
        (an interrupt) withdraws it and goes on to the caller.

        Gated networks: `gated={"AgeNet": "FaceNet"}` runs AgeNet on what FaceNet (a network
        of `networks`) found. When FaceNet ends, the engine calls `condition("AgeNet",
        outputs)` with FaceNet's outputs ({blob: array}); it returns AgeNet's inputs (each
        as `x` may be: an image, an H x W x 3 array, an NCHW array), one AgeNet instance
        each, keyed `AgeNet[0]`, `AgeNet[1]`, ... in the result; none: the condition failed
        and AgeNet has no key. It runs on a worker, under the engine's lock: keep it quick
        and do not call the engine from it; if it raises, the request fails with its
        error. Raises ValueError (a `ConfigError`) for a bad `gated` or a missing
        `condition`.

        `order`: the id (`RequestResult.request_id`) of an earlier request whose place in the
        queue this one takes: the policies break ties by it (`sched.Task.order`), so a
        pipeline's later stage for an image that has started runs before the stages of images
        that arrived after it (default: its own id, i.e. after every earlier request). Raises
        `ConfigError` for an id not submitted before."""
        networks = list(networks)
        self.core.check_networks(networks)
        self.core.check_gated(networks, gated)
        if gated and condition is None:
            raise ConfigError("gated networks need a condition: condition(child, "
                              "parent_outputs) -> the child's inputs")
        future: Future = Future()
        with self._condition:
            if self._closing:
                raise EngineClosedError("the engine is closed; submit before close()")
            if not self.scheduler.allow_overcommit:
                self.check_fits(networks, gated)
            self._hold_blas()
            try:
                request = self.core.submit(networks, self.now(), x, gated,
                                           _on_outputs(condition), handle=future, order=order)
            finally:
                self._release_blas_if_idle()
                self._settle_policy_failures()
            self._condition.notify_all()
        self._flush()
        request_id = request.record.request_id
        future.add_done_callback(lambda f: self._on_cancel(f, request_id))
        return future

    def check_fits(self, networks: Sequence[str], gated: Mapping[str, str] | None = None
                   ) -> None:
        """Raise `BudgetError` if one request for `networks` (gated ones included, as if
        their condition held) can never run within the budget without the progress rule: a
        task larger than the whole budget (`Core.check_fits`), or a run that needs more than
        the budget even alone (every task fits, but not the layers a network must hold at
        once: found by simulating the request alone on this engine's core settings, with
        tasks of equal length). Remembered per request shape."""
        self.core.check_fits(networks, gated)  # also refuses a malformed `gated`
        key = request_shape(networks, gated)
        why = self._alone.get(key) if key in self._alone else \
            refused_alone(self.core, [*networks, *(gated or {})])
        if key is not None:
            self._alone[key] = why
        if why is not None:
            raise BudgetError(why)

    def map(self, inputs: Iterable[Any], networks: Sequence[str]) -> list[Future]:
        """Several inputs for the same networks, one request each (futures in input order)."""
        return [self.submit(x, networks) for x in inputs]

    # -- workers -------------------------------------------------------------------------------

    def _work(self, worker: int, pool: int) -> None:
        try:
            while True:
                with self._condition:
                    task = self._wait_for_task(pool, worker)
                self._flush()
                if task is _SETTLED:
                    continue
                if task is None:
                    return
                error, interrupted = self._execute(task)
                spent = None
                with self._condition:
                    step = self.scheduler.finish(task, self.now(), error)
                    if self._kept is not None:  # what the cache did not keep is dropped
                        spent = self._kept.take_spent(task)
                    self._apply(step)
                    self._settle_policy_failures()
                    if interrupted:
                        self._begin_close(cancel=True)
                    self._condition.notify_all()
                if spent is not None:
                    self._kept.drop_spent(spent)
                self._flush()
        except BaseException as exc:  # a bug in the engine itself: fail what is open, stop
            self._stop_on_error(f"worker {worker}: {type(exc).__name__}: {exc}\n"
                                f"{traceback.format_exc()}")

    def _wait_for_task(self, pool: int, worker: int) -> Any:
        """The next task for this worker (called under the lock; blocks). None: time to stop;
        `_SETTLED`: requests were settled here (a network failed for the budget) and their
        futures must be set (outside the lock) before waiting: nothing else may ever wake
        this worker, and the request's caller would wait for ever."""
        while True:
            if self._broken is not None:
                return None
            try:
                task = self.scheduler.next_task(pool, self.now(), worker)
            except BudgetError as error:  # allow_overcommit=False and it can never fit
                self._apply(self.scheduler.fail(error.task.instance, str(error), self.now()))
                continue
            finally:
                self._settle_policy_failures()
            if task is not None:
                return task
            if self._closing and not self.scheduler.has_work():
                self._evict_kept()
                self._condition.notify_all()
                return None
            if self._outcomes:
                return _SETTLED
            self._condition.wait()

    def _execute(self, task: Task) -> tuple[str | None, bool]:
        """Run one task outside the lock: (error message or None, whether it was a Ctrl-C)."""
        instance = task.instance
        if instance.failed is not None:
            return None, False  # failed or cancelled meanwhile: nothing to do
        try:
            if task.kind == Kind.EXEC:  # its BLAS threads: see `blas.BlasHold`
                BlasHold.exec_begin()
                try:
                    self._run_task(task, self.packages[instance.name])
                finally:
                    BlasHold.exec_end()
            else:
                self._run_task(task, self.packages[instance.name])
        except Exception as exc:  # a bad layer file, a kernel error: fail this network only
            return f"{task.label} failed: {type(exc).__name__}: {exc}", False
        except KeyboardInterrupt:
            return f"{task.label} interrupted (KeyboardInterrupt); the engine shuts down", True
        except BaseException as exc:  # SystemExit and the like: the request fails, not us
            return f"{task.label} failed: {type(exc).__name__}: {exc}", False
        return None, False

    # -- settling requests (under the lock; futures are set after it, by `_flush`) -------------

    def _apply(self, step: Step) -> None:
        """Settle the requests whose last network just finished."""
        for instance in step.finished:
            if instance.failed is not None:
                instance.work = None  # its weights and activations go now, as the ledger's did
        for request in self.book.settle(step):
            self._resolve(request)
        self._release_blas_if_idle()

    def _resolve(self, request: Request) -> None:
        """Work out the request's `RequestResult` (or `RequestError`); its future is set by
        `_flush`, outside the lock, so that done-callbacks may call the engine."""
        cancelled = request.handle.cancelled()
        networks = {i.result_key: NetworkResult.of(i, getattr(i.work, "outputs", None),
                                                   cancelled and i.failed is not None)
                    for i in request.instances if not i.dropped}
        record = request.record
        failed = record.status == "failed"
        response_ms = None if failed else (record.completion_s - record.arrival_s) * 1e3
        result = RequestResult(record.request_id, networks, response_ms)
        outcome = RequestError(record.error, result) if failed else result
        self._outcomes.append((request, outcome))
        if cancelled:
            record.status = "cancelled"
        for instance in request.instances:
            instance.work = instance.input = None

    def _flush(self) -> None:
        """Set the futures of the requests settled so far and cancel those `close` asked to
        (outside the lock: done-callbacks run here). A future cancelled meanwhile stays
        cancelled."""
        with self._condition:
            outcomes, self._outcomes = self._outcomes, []
            cancels, self._cancels = self._cancels, []
        for request, outcome in outcomes:
            future: Future = request.handle
            try:
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            except InvalidStateError:  # cancelled concurrently: its callback found it closed
                with self._condition:
                    request.record.status = "cancelled"
        for future in cancels:
            future.cancel()  # its callback (`_on_cancel`) fails what is left

    def _settle_policy_failures(self) -> None:
        """Fail the networks a user policy could not order (called under the lock)."""
        if self._guard is None:
            return
        for instance, reason in self._guard.take_failures():
            self._apply(self.scheduler.fail(instance, reason, self.now()))
        if self._guard.interrupted:
            self._guard.interrupted = False
            self._begin_close(cancel=True)

    def _on_cancel(self, future: Future, request_id: int) -> None:
        if not future.cancelled():
            return
        # The executor's side of the `concurrent.futures` contract: without this, `wait` and
        # `as_completed` never see a cancelled future as done.
        future.set_running_or_notify_cancel()
        with self._condition:
            request = self.book.open.get(request_id)
            if request is not None:
                for instance in list(request.instances):
                    self._apply(self.scheduler.fail(instance, "cancelled", self.now()))
            self._condition.notify_all()
        self._flush()

    def _evict_kept(self) -> None:
        """Closing: kept weights go (under the lock), the ledger returns to 0."""
        cache = self.core.memory.cache
        if cache is not None and cache.entries:
            cache.clear(self.now())

    def _hold_blas(self) -> None:
        if not self._blas_held:
            self._blas.enter()
            self._blas_held = True

    def _release_blas_if_idle(self) -> None:
        # Before any future of the batch is set: a caller woken by `result()` finds the
        # process's own BLAS thread count again.
        if self._blas_held and not self.book.open:
            self._blas.leave()
            self._blas_held = False

    def _stop_on_error(self, reason: str) -> None:
        """An internal error: stop every worker, fail every open request with it, and return
        what they held to the ledger."""
        with self._condition:
            self._broken = reason
            self._closing = True
            for request in list(self.book.open.values()):
                for instance in request.instances:
                    with contextlib.suppress(Exception):  # the state may be what broke
                        self.scheduler.fail(instance, reason, self.now())
                request.record.status = "failed"
                request.record.error = reason
                if request.handle is not None:
                    self._outcomes.append((request, EngineError(reason)))
            self.book.open.clear()
            with contextlib.suppress(Exception):
                self._evict_kept()
            self._release_blas_if_idle()
            self._condition.notify_all()
        self._flush()

    # -- closing -------------------------------------------------------------------------------

    def _begin_close(self, cancel: bool) -> None:
        """Stop accepting requests; with `cancel`, fail what has not finished (under the lock;
        the cancels themselves happen in `_flush`)."""
        self._closing = True
        if cancel:
            for request in list(self.book.open.values()):
                if any(i.failed and not i.dropped for i in request.instances):
                    # Already failing: it ends as failed, with its own reason first.
                    for instance in request.instances:
                        self._apply(self.scheduler.fail(instance, "the engine is closing",
                                                        self.now()))
                else:
                    self._cancels.append(request.handle)
        self._condition.notify_all()

    def close(self, cancel: bool = False) -> None:
        """Stop accepting requests and wait for the workers. In-flight requests finish, or with
        `cancel=True` those not yet done are cancelled (their futures say so); none is lost.

        Called from inside the engine (a task, or a done-callback running on a worker), it
        cannot wait for its own worker: it stops the engine accepting work and returns; the
        workers end when the work in flight is done."""
        with self._condition:
            self._begin_close(cancel)
        self._flush()
        if threading.current_thread() in self._threads:
            return
        for thread in self._threads:
            thread.join()
        if self._band is not None:  # this engine's band cap no longer applies
            release_band_cap(self._band)
            self._band = None
        if self._broken is not None:
            raise EngineError(f"the engine stopped on an internal error: {self._broken}")

    def trim_trace(self, keep_tasks: int = 2000, keep_ledger: int = 5000,
                   keep_requests: int = 1000) -> None:
        """Forget the oldest task records, ledger events and closed requests' records (see
        `Trace.trim`), under the engine's lock: for long-running callers such as the HTTP
        service, whose trace would otherwise grow with every request."""
        with self._condition:
            self.trace.trim(keep_tasks, keep_ledger, keep_requests, self.book.open)

    def open_tasks(self) -> list[tuple[int, int, str, str, float, float | None, bool]]:
        """(task id, worker, network, kind, start_s, end_s or None while it runs, forced) of
        every task that has started in the requests still open, on the engine's clock. The
        trace records a network's tasks when the network ends; with these, a live view shows
        the workers' tasks as they run (the HTTP service's page)."""
        with self._condition:
            return [(task.id, task.worker, instance.name, task.kind.name.lower(), task.start,
                     task.end, task.forced)
                    for request in self.book.open.values() for instance in request.instances
                    for task in instance.tasks
                    if task.start is not None and task.worker is not None]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)
