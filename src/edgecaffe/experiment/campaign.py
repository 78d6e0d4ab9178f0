"""The submitting side of a campaign (`cluster.py` holds the worker's side): every run of a
matrix submitted as a Dask task, placed, retried, its results written home, progress reported.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgecaffe.experiment.cluster import (
    ClusterError,
    RunOutcome,
    RunSpec,
    execute,
    fits,
    scheduler_workers,
)
from edgecaffe.experiment.results import COMPLETE, is_complete


def write_home(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write a run's files under `folder`, the completeness marker last; an earlier incomplete
    folder is replaced. Paths must stay inside `folder`."""
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ClusterError(f"a worker sent a file outside its run folder: {name!r}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in sorted(files, key=lambda n: n == COMPLETE):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[name])


@dataclass
class Campaign:
    """Counters and per-worker activity of a running campaign."""

    total: int
    done: int = 0
    failed: int = 0
    running: dict[str, str] = field(default_factory=dict)  # worker -> run
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # run -> last error
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: dict[str, str] = field(default_factory=dict)  # run -> worker that started it

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed

    def status(self) -> str:
        busy = ", ".join(f"{w}: {r}" for w, r in sorted(self.running.items()))
        return (f"{self.done} done, {self.failed} failed, {self.remaining} remaining"
                + (f" | {busy}" if busy else ""))

    def worker(self, name: str) -> dict[str, float]:
        return self.per_worker.setdefault(name, {"done": 0, "failed": 0, "busy_s": 0.0})


def run_campaign(client, specs: Sequence[RunSpec], output_folders: Mapping[str, Path], *,
                 retries: int = 1, worker_device: str | None = None,
                 log: Callable[[str], None] = print,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_progress: Callable[[Campaign], None] | None = None,
                 poll_s: float = 0.5) -> Campaign:
    """Run `specs` on `client`'s cluster; write each successful run's files to
    `output_folders[name]` (unless the spec writes to a shared folder). A failing run is
    logged with its worker and error and submitted again, at most `retries` more times (a
    lost worker is the scheduler's business: Dask reruns the task elsewhere, up to its
    `allowed-failures`). Ctrl-C (KeyboardInterrupt) cancels every pending run (running real
    runs stop) and re-raises. Returns the campaign's counters; `summaries` holds each done
    run's summary. `on_event` gets each start/finish message from the workers."""
    return _Submitter(client, specs, output_folders, retries, worker_device, log, on_event,
                      on_progress, poll_s).run()


class _Submitter:
    """One campaign's state on the submitting machine. Dask's event thread (start/finish
    messages) and the calling thread (finished futures) both update it, under `lock`."""

    def __init__(self, client, specs, output_folders, retries, worker_device, log, on_event,
                 on_progress, poll_s) -> None:
        self.client, self.specs, self.output_folders = client, specs, output_folders
        self.retries, self.worker_device, self.log = retries, worker_device, log
        self.on_event, self.on_progress, self.poll_s = on_event, on_progress, poll_s
        self.topic = f"edgecaffe-campaign-{uuid.uuid4().hex[:12]}"
        self.campaign = Campaign(len(specs))
        self.lock = threading.Lock()
        # future -> (spec, attempt, the worker addresses it may run on; None: any)
        self.pending: dict[Any, tuple[RunSpec, int, list[str] | None]] = {}
        self.keys = iter(range(1 << 62))
        self.batch = None

    def run(self) -> Campaign:
        from distributed import as_completed

        self.client.subscribe_topic(self.topic, self.event)
        try:
            for spec in self.specs:
                self.submit_or_fail(spec, 0)
            self.batch = as_completed(list(self.pending))
            while not self.batch.is_empty():
                finished = self.batch.next_batch(block=False)
                if not finished:
                    time.sleep(self.poll_s)
                    self.resubmit_stranded()
                    self.progress()  # what each worker runs, as it changes
                for future in finished:
                    if future in self.pending:  # else: cancelled and resubmitted
                        self.finish(future)
        except BaseException:  # Ctrl-C or an error: nothing pending may keep running
            self.client.cancel(list(self.pending), force=True)
            raise
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                self.client.unsubscribe_topic(self.topic)
        return self.campaign

    def progress(self) -> None:
        if self.on_progress is not None:
            with self.lock:
                self.on_progress(self.campaign)

    def event(self, event) -> None:
        """A worker's start/finish message (in Dask's event thread)."""
        _, message = event
        # Dask sets "worker" to the worker's address; the name is ours.
        worker, run = message["worker_name"], message["run"]
        with self.lock:
            campaign = self.campaign
            if message["event"] == "start":
                earlier = campaign.started.get(run)
                if earlier is not None and campaign.running.get(earlier) == run:
                    self.log(f"{run}: its worker {earlier} was lost; restarted on {worker}")
                    campaign.running.pop(earlier, None)
                campaign.started[run] = worker
                campaign.running[worker] = run
                self.log(f"[{worker}] started {run}")
            elif campaign.running.get(worker) == run:
                del campaign.running[worker]
        if self.on_event is not None:
            self.on_event(message)
        self.progress()

    def placement(self, spec: RunSpec) -> dict[str, Any]:
        """Dask submit options: a real run takes `device=1` on the workers that fit it."""
        if spec.simulate:
            return {}
        workers = scheduler_workers(self.client)
        addresses = [a for a, w in workers.items()
                     if fits(w, spec.budget_bytes, self.worker_device)]
        if not addresses:
            described = "; ".join(
                f"{w.get('name')}: memory {w.get('memory_limit') or 'unlimited'}, "
                f"resources {w.get('resources') or {}}" for w in workers.values())
            raise ClusterError(
                f"no worker fits a real run of {spec.budget_bytes} bytes"
                + (f" on device {self.worker_device!r}" if self.worker_device else "")
                + f" (needs resources device=1; workers: {described or 'none'})")
        return dict(resources={"device": 1}, workers=addresses, allow_other_workers=False)

    def submit(self, spec: RunSpec, attempt: int):
        spec.topic = self.topic
        options = self.placement(spec)
        future = self.client.submit(execute, spec, pure=False,
                                    key=f"{self.topic}-{next(self.keys)}-{spec.name}",
                                    **options)
        self.pending[future] = (spec, attempt, options.get("workers"))
        if self.batch is not None:
            self.batch.add(future)
        return future

    def submit_or_fail(self, spec: RunSpec, attempt: int) -> None:
        try:
            self.submit(spec, attempt)
        except ClusterError as error:  # no worker fits
            with self.lock:
                self.campaign.failed += 1
                self.campaign.failures[spec.name] = str(error)
                self.log(f"{spec.name}: FAILED: {error}")

    def finish(self, future) -> None:
        spec, attempt, _ = self.pending.pop(future)
        try:
            outcome = future.result()
        except Exception as error:  # the task itself failed: KilledWorker, a lost connection
            outcome = RunOutcome(spec.name, "?", False, error=f"{type(error).__name__}: {error}")
        with self.lock:
            _account(self.campaign, outcome, spec, self.output_folders, self.log)
            retry = not outcome.ok and attempt < self.retries
            if retry:
                self.log(f"{spec.name}: retry {attempt + 1} of {self.retries}")
                self.campaign.failed -= 1  # not failed yet
        if retry:
            self.submit_or_fail(spec, attempt + 1)
        self.progress()

    def resubmit_stranded(self) -> None:
        """A real run restricted to workers that have all left (a worker restarted under a
        new address) would wait forever: place it again among the workers there now."""
        alive = set(scheduler_workers(self.client))
        for future, (spec, attempt, addresses) in list(self.pending.items()):
            if addresses is None or future.done() or set(addresses) & alive:
                continue
            try:
                self.submit(spec, attempt)
            except ClusterError:
                continue  # nothing fits yet: keep waiting for a worker
            del self.pending[future]
            future.cancel()


def _account(campaign: Campaign, outcome: RunOutcome, spec: RunSpec,
             output_folders: Mapping[str, Path], log: Callable[[str], None]) -> None:
    """Count a finished attempt; write its files home; log a failure with its error."""
    worker = campaign.worker(outcome.worker)
    worker["busy_s"] += outcome.seconds
    if campaign.running.get(outcome.worker) == spec.name:
        del campaign.running[outcome.worker]
    if outcome.ok:
        folder = output_folders[spec.name]
        if outcome.files is not None:
            write_home(folder, outcome.files)
        if not is_complete(folder):
            outcome.ok, outcome.error = False, f"{folder}: results incomplete after the run"
    if outcome.ok:
        campaign.done += 1
        worker["done"] += 1
        campaign.summaries[spec.name] = outcome.summary or {}
        campaign.failures.pop(spec.name, None)
    else:
        campaign.failed += 1
        worker["failed"] += 1
        campaign.failures[spec.name] = outcome.error or "unknown error"
        log(f"{spec.name}: FAILED on worker {outcome.worker}: {outcome.error}")
