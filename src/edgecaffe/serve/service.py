"""The service's state: the repository, the engine over it, admission, metrics, recent samples.

    service = Service(ServeConfig("models/", budget="512M", mode="masa"))
    service.start()          # builds every model in a thread; ready when done
    service.wait_ready()
    future = service.submit(image, ["AgeNet"])   # the engine's future
    future = service.submit_pipeline(image, "faces")   # a PipelineResult's future
    service.stop()           # cancel what is left, close the engine (ledger back to 0)

States: building -> ready -> draining -> stopped (or failed: no model built). The HTTP layer
(`serve/app.py`) only reads and calls this object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecaffe.errors import ConfigError
from edgecaffe.measure import rss_bytes
from edgecaffe.sched.budget import parse_bytes
from edgecaffe.serve.admission import Admission
from edgecaffe.serve.inputs import CallError, Limits
from edgecaffe.serve.metrics import Metrics
from edgecaffe.serve.pipelines import StageRequests, engine_names
from edgecaffe.serve.repository import Repository, scan
from edgecaffe.serve.results import OutputFormat

log = logging.getLogger("edgecaffe.serve")


@dataclass
class ServeConfig:
    """Everything `edgecaffe serve` takes. Engine settings as `Engine`'s; `queue`: requests
    in flight at most (more: 429); `timeout_ms`: the default deadline of a call (None: none);
    `allow_overcommit`: run requests with a task larger than the whole budget over budget (the
    progress rule) instead of refusing them at once (503, the default); `grace_s`: how long a
    shutdown lets calls in flight finish before cancelling them; `keep_weights`: freed weights
    stay in memory while the budget has room (`Engine`'s option)."""

    repository: str | Path
    budget: str | int = "512M"
    mode: str = "masa"
    policy: str | None = None
    granularity: str = "layer"
    workers: int = 2
    blas_threads: int | None = None
    backend: str = "numpy"
    queue: int = 32
    max_upload: str | int = "16M"
    max_pixels: int = 40_000_000
    max_inputs: int = 64
    timeout_ms: float | None = None
    top_k: int = 5
    allow_overcommit: bool = False
    grace_s: float = 10.0
    keep_weights: bool = False

    def limits(self) -> Limits:
        """The request limits; `ConfigError` naming `max_upload` (`--max-upload`) if it is
        not a size."""
        try:
            max_upload = parse_bytes(self.max_upload)
        except ConfigError as error:
            raise ConfigError(f"max_upload (--max-upload): {error}") from None
        return Limits(max_upload, self.max_pixels, self.max_inputs)


def _check_engine_settings(config: ServeConfig) -> None:
    """Mode, policy, budget, granularity, workers and backend checked as the engine will,
    before anything is built (`ConfigError` / `BackendError` naming the setting)."""
    from edgecaffe.ops import backend_kernels
    from edgecaffe.sched import Core

    Core({}, config.mode, config.policy, config.budget, config.granularity, config.workers)
    backend_kernels(config.backend)


class Service:
    """One repository served by one engine. `progress` gets one line per build step;
    `engine_options`: more `Engine` arguments (tests give a `task_runner`). Raises
    `ConfigError` for a repository without models or bad settings (before anything is
    built)."""

    def __init__(self, config: ServeConfig, progress: Callable[[str], None] | None = None,
                 engine_options: dict[str, Any] | None = None) -> None:
        if config.queue < 1:
            raise ConfigError(f"queue must be 1 or more, got {config.queue}")
        _check_engine_settings(config)
        self.config = config
        self.limits = config.limits()
        self.repository: Repository = scan(config.repository)
        self.progress = progress
        self.engine_options = dict(engine_options or {})
        self.engine: Any = None
        self.formats: dict[str, OutputFormat] = {}
        #: Pipeline name -> its runner on the engine; what they submit goes through `stages`.
        self.runners: dict[str, Any] = {}
        self.stages: Any = None
        self.state = "building"
        self.error: str | None = None
        self.admission = Admission(config.queue)
        self.metrics = Metrics(lambda: self.admission.in_flight, config.queue,
                               self.ledger_bytes, lambda: parse_bytes(config.budget))
        self.started_s = time.time()
        #: (engine seconds, RSS bytes, ledger bytes, queue depth), sampled as calls end and
        #: as the live page asks.
        self.samples: deque[tuple[float, int, int, int]] = deque(maxlen=900)
        self._ready = threading.Event()
        self._builder: threading.Thread | None = None
        self._stopping = False
        #: Called (from the build thread) when no model could be built: the CLI stops there.
        self.on_failed: Callable[[], None] | None = None
        #: What the engine's trace keeps (tasks, ledger changes, closed requests): enough for
        #: the live page's window, bounded however long the service runs.
        self.trace_keep = (2000, 5000, 1000)
        #: Engine futures not yet done (cancelled when a shutdown's grace period ends).
        self._in_flight: set[Future] = set()
        self._lock = threading.Lock()
        self._grace_timer: threading.Timer | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Build the models in a thread of their own (the service is live meanwhile)."""
        self._builder = threading.Thread(target=self._build, name="edgecaffe-serve-build",
                                         daemon=True)
        self._builder.start()

    def _build(self) -> None:
        from edgecaffe.engine import Engine

        try:
            self.repository.build(self.progress, stop=lambda: self._stopping)
            packages, pipelines = self.repository.packages, self.repository.pipelines
            ready = len(packages) + len(pipelines)
            failed = len(self.repository.entries) - ready
            self.metrics.models.labels("ready").set(ready)
            self.metrics.models.labels("failed").set(failed)
            if not ready:
                raise ConfigError("no model could be built: "
                                  + "; ".join(f"{e.name}: {e.error}"
                                              for e in self.repository.entries.values()))
            config = self.config
            networks = dict(packages)
            for name, served in pipelines.items():
                networks.update(engine_names(name, served))
            self.engine = Engine(networks, mode=config.mode, policy=config.policy,
                                 budget=config.budget, granularity=config.granularity,
                                 workers=config.workers, blas_threads=config.blas_threads,
                                 allow_overcommit=config.allow_overcommit,
                                 backend=config.backend, keep_weights=config.keep_weights,
                                 **self.engine_options)
            self.formats = {name: OutputFormat(p) for name, p in packages.items()}
            for name in packages:
                self.repository.entries[name].extra["fits_budget"] = self._fits([name]) is None
            self._start_pipelines(pipelines)
            with self._lock:  # a shutdown that began meanwhile wins
                if not self._stopping:
                    self.state = "ready"
            if self._stopping:
                self.engine.close(cancel=True)
                return
            if self.progress:
                self.progress(f"ready: {len(packages)} model(s), {len(pipelines)} pipeline(s)"
                              + (f", {failed} failed" if failed else ""))
        except Exception as error:
            self.state, self.error = "failed", f"{type(error).__name__}: {error}"
            log.error("the service could not start: %s", self.error)
            if self.on_failed is not None:
                self.on_failed()
        finally:
            self._ready.set()

    def _fits(self, networks: list[str]) -> str | None:
        """None if every task of one request for each of `networks` fits in the whole budget,
        else why not (the first that does not)."""
        from edgecaffe.sched import BudgetError

        for network in networks:
            try:
                self.engine.check_fits([network])
            except BudgetError as error:
                return f"{network}: {error}"
        return None

    def _start_pipelines(self, pipelines: dict[str, Any]) -> None:
        """A runner per pipeline on the engine; whether each stage can ever fit."""
        from edgecaffe.pipeline import PipelineRunner

        self.stages = StageRequests(self.engine)
        for name, served in pipelines.items():
            self.runners[name] = PipelineRunner(served.pipeline, engine=self.stages,
                                                packages=served.packages, prefix=f"{name}/")
            reason = self._fits(list(engine_names(name, served)))
            entry = self.repository.entries[name]
            entry.extra["fits_budget"] = reason is None
            if reason is not None:
                entry.extra["budget_error"] = reason

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait for the build to end; True if the service is ready."""
        self._ready.wait(timeout_s)
        return self.state == "ready"

    def drain(self) -> None:
        """Stop admitting calls (a shutdown began); those in flight go on for the grace
        period (`grace_s`), then what is left is cancelled (their calls answer 503)."""
        with self._lock:
            self._stopping = True
            if self.state in ("building", "ready"):
                self.state = "draining"
            if self._grace_timer is None:
                self._grace_timer = threading.Timer(self.config.grace_s, self.cancel_in_flight)
                self._grace_timer.daemon = True
                self._grace_timer.start()

    def cancel_in_flight(self) -> int:
        """Cancel every engine request not yet done; returns how many were."""
        with self._lock:
            futures = list(self._in_flight)
        cancelled = sum(1 for future in futures if future.cancel())
        if cancelled:
            log.warning("cancelled %d request(s) still in flight", cancelled)
        return cancelled

    def stop(self) -> None:
        """Cancel what is still in flight and close the engine: every worker ends, the ledger
        returns to 0. Waits for a build in progress to notice. Calling it again does
        nothing."""
        if self.state == "stopped":
            return
        self.drain()
        with self._lock:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
        self.cancel_in_flight()
        if self._builder is not None:
            self._builder.join()
        if self.engine is not None:
            self.engine.close(cancel=True)
        if self.state != "failed":
            self.state = "stopped"
        log.info("stopped: ledger %d bytes", self.ledger_bytes())

    # -- serving -------------------------------------------------------------------------------

    def check_open(self) -> None:
        """`CallError(503)` unless calls are admitted now."""
        if self.state == "ready":
            return
        reasons = {"building": "models are still being built (see /health/ready)",
                   "draining": "the service is shutting down",
                   "stopped": "the service has stopped",
                   "failed": f"the service failed to start: {self.error}"}
        raise CallError(503, reasons[self.state],
                         {"Retry-After": "1"} if self.state == "building" else None)

    def submit(self, x: Any, networks: Sequence[str]) -> Future:
        """One engine request; `CallError(503)` if it can never fit the budget (unless
        `allow_overcommit`) or the engine is closing."""
        return self._track(lambda: self.engine.submit(x, networks))

    def submit_pipeline(self, x: Any, name: str) -> Future:
        """One image through a pipeline: a future of its `PipelineResult`; cancelling it
        cancels its stages' requests in flight and submits no later stage. `CallError(503)` if
        a stage can never fit the budget (unless `allow_overcommit`) or the engine is
        closing."""
        entry = self.repository.entries[name]
        if not self.config.allow_overcommit and entry.extra.get("fits_budget") is False:
            raise CallError(503, f"can never fit the budget: pipeline {name}: "
                            f"{entry.extra['budget_error']}")
        return self._track(lambda: self.runners[name].submit(x))

    def _track(self, start: Callable[[], Future]) -> Future:
        """Start a request, keeping its future until it is done (a shutdown past its grace
        period cancels it); the engine's refusals as `CallError(503)`."""
        from edgecaffe.engine import EngineClosedError
        from edgecaffe.sched import BudgetError

        try:
            future = start()
        except BudgetError as error:
            raise CallError(503, f"can never fit the budget: {error}") from None
        except EngineClosedError:
            raise CallError(503, "the service is shutting down") from None
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._in_flight.discard(future)

    @property
    def network_names(self) -> list[str]:
        """The networks calls may name (those built)."""
        return list(self.formats)

    @property
    def pipeline_names(self) -> list[str]:
        """The pipelines calls may name (those built)."""
        return list(self.runners)

    @property
    def failed(self) -> dict[str, str]:
        """Models and pipelines that failed to build: name -> the error."""
        return {name: entry.error for name, entry in self.repository.entries.items()
                if entry.error is not None and not entry.ready}

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.input_shape) for name, p in self.repository.packages.items()}

    def ledger_bytes(self) -> int:
        """What the engine's ledger holds, kept weights included (`MemoryBudget.ledger_bytes`:
        the figure RSS is compared with, as on the page's ledger line)."""
        return 0 if self.engine is None else self.engine.budget.ledger_bytes

    def sample(self, min_gap_s: float = 0.1) -> None:
        """Remember RSS, ledger and queue depth now (at most one sample per `min_gap_s`)."""
        if self.engine is None:
            return
        now = self.engine.now()
        if self.samples and now - self.samples[-1][0] < min_gap_s:
            return
        self.samples.append((now, rss_bytes(), self.ledger_bytes(), self.admission.in_flight))

    def after_call(self) -> None:
        """Bookkeeping after each call: a sample (at most every half second: reading RSS
        costs ~0.1 ms, and the page samples as it refreshes), and the engine's trace kept
        bounded."""
        self.sample(min_gap_s=0.5)
        trace = self.engine.trace if self.engine is not None else None
        tasks, ledger, requests = self.trace_keep
        # Trimmed in steps (at twice the size kept), not after every call.
        if trace is not None and (len(trace.tasks) > 2 * tasks or len(trace.ledger) > 2 * ledger
                                  or len(trace.requests) > 2 * requests):
            self.engine.trim_trace(keep_tasks=tasks, keep_ledger=ledger, keep_requests=requests)
