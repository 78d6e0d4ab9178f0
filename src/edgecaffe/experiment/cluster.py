"""Campaigns across machines: every run of an experiment matrix as one Dask distributed task.

The submitting machine plans the matrix (configs, seeds, arrivals: exactly as a local run does),
then ships each run as a `RunSpec` to a worker, which runs `runner.run_entry` (the unit a local
run uses too) and sends the run's results folder home as bytes, or writes it to a shared path.

Placement. A real run takes the worker resource `device=1` (a worker started with
`--resources device=1` runs one at a time) and goes only to workers whose declared memory
(`--memory-limit`; 0 means unlimited) is at least the run's budget and, with `worker_device`,
whose name is that device profile or starts with it and a dash (`--name rpi4-a` declares
`rpi4`). Simulated runs need no resource: a worker runs as many at once as it has threads.

Packages. A simulated run carries the submitter's NetworkInfos (small; no weights), so every
worker simulates the very same durations. A real run carries network names: each worker
resolves them itself (zoo networks are built in its cache from the same seed; package and
original folders must be at the same path on the worker), and checks each package's weights
fingerprint (layer names, weight files, sizes and CRC-32s from the manifest) against the
submitter's, so a worker never measures different weights.

Dask distributed is imported only here, and only when a campaign starts: it is the optional
extra `edgecaffe[cluster]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgecaffe.experiment.results import COMPLETE, is_complete
from edgecaffe.model.errors import ModelError

INSTALL_HINT = "pip install 'edgecaffe[cluster]'  (Dask distributed)"


class ClusterError(ModelError):
    """A campaign that cannot run: Dask missing, a bad address, no worker that fits."""


def require_distributed():
    """The `distributed` module, or a one-line ClusterError saying what to install."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"--cluster needs Dask distributed, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return distributed


@dataclass
class RunSpec:
    """One run of a matrix, as shipped to a worker (pickled)."""

    name: str
    config: Any  # ExperimentConfig, resolved for this run
    arrivals: list[Any]
    closed_loop: bool
    budget_bytes: int
    simulate: bool = False
    device: Any = None  # DeviceProfile for simulated runs
    infos: dict[str, Any] | None = None  # simulated runs: the submitter's NetworkInfos
    fingerprints: dict[str, str] = field(default_factory=dict)  # real runs: name -> weights
    shared_folder: str | None = None  # write the results here instead of sending them home
    topic: str = ""  # Dask event topic for start/finish reports


@dataclass
class RunOutcome:
    """What a worker sends back: the summary and the folder's files, or the error."""

    name: str
    worker: str
    ok: bool
    summary: dict[str, Any] | None = None
    files: dict[str, bytes] | None = None
    error: str | None = None
    seconds: float = 0.0


def weights_fingerprint(package) -> str:
    """SHA-256 (first 16 hex digits) over every layer's name and weight file entry (file,
    bytes, CRC-32) in a package's manifest: the same for the same weights on any machine,
    whatever the machine's profiled times."""
    digest = hashlib.sha256()
    for layer in package.manifest.get("layers") or []:
        weights = layer.get("weights") or {}
        digest.update(repr((layer.get("name"), weights.get("file"), weights.get("bytes"),
                            weights.get("crc32"))).encode())
    return digest.hexdigest()[:16]


def fits(worker: Mapping[str, Any], budget_bytes: int, device: str | None) -> bool:
    """Whether a worker (an entry of Dask's `scheduler_info()["workers"]`) may take a real run
    of `budget_bytes`: it declares the `device` resource, enough memory (`memory_limit` 0 is
    unlimited), and, when `device` names a profile, a name equal to it or starting with it
    and a dash."""
    if "device" not in (worker.get("resources") or {}):
        return False
    limit = worker.get("memory_limit") or 0
    if limit and limit < budget_bytes:
        return False
    name = str(worker.get("name", ""))
    return device is None or name == device or name.startswith(device + "-")


def scheduler_workers(client) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler knows: {address: {name, memory_limit, resources, ...}}."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025 lists every worker without being asked
        return client.scheduler_info()["workers"]


# -- on the worker ------------------------------------------------------------------------------

def _worker_name() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # not on a worker (called directly, e.g. in a test)
        return "local"


def _report(topic: str, **message: Any) -> None:
    if not topic:
        return
    from distributed import get_worker

    with contextlib.suppress(ValueError):  # not on a worker
        get_worker().log_event(topic, message)


def _worker_packages(spec: RunSpec, worker: str) -> dict[str, Any]:
    """Resolve the run's networks on this worker (one resolver at a time per machine: two
    workers must not build the same zoo package at once) and check their weights."""
    import fcntl

    from edgecaffe.experiment.networks import resolve_networks
    from edgecaffe.model.zoo import cache_dir

    config = spec.config
    pool = config.arrivals_networks() if config.arrivals is not None else config.networks
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        packages = resolve_networks(pool, config)
    for name, package in packages.items():
        expected = spec.fingerprints.get(name)
        found = weights_fingerprint(package)
        if expected is not None and found != expected:
            raise ClusterError(f"network {name!r} at {package.directory} on worker "
                               f"{worker} has other weights than the submitter's "
                               f"(fingerprint {found}, expected {expected})")
    return packages


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` as {relative posix path: bytes}."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_here(spec: RunSpec, folder: Path, worker: str) -> dict[str, Any]:
    """Run `spec` in this process into `folder` (`runner.run_entry`); returns its summary."""
    from edgecaffe.experiment.runner import run_entry

    networks = spec.infos if spec.simulate else _worker_packages(spec, worker)
    return run_entry(spec.name, spec.config, spec.arrivals, spec.closed_loop, networks, folder,
                     simulate=spec.simulate, device=spec.device)


def _cancel_check() -> Callable[[], bool]:
    """Whether the submitter has cancelled the task this thread runs (Dask cannot stop a
    running task; the worker marks it cancelled or forgets it)."""
    from distributed import get_worker

    try:
        worker = get_worker()
        key = worker.get_current_task()
    except ValueError:  # not on a worker
        return lambda: False

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    return cancelled


def execute(spec: RunSpec) -> RunOutcome:
    """Run one matrix entry on this worker (the Dask task): a simulated run in this thread, a
    real one in a process of its own (`isolated.run_in_child`: its RSS is the run's, and a
    cancel stops it). Never raises for a failing run: the outcome carries the error and the
    worker's name, for the report and the retry."""
    from edgecaffe.experiment.isolated import run_in_child

    worker, started = _worker_name(), time.perf_counter()
    _report(spec.topic, event="start", run=spec.name, worker_name=worker)
    if spec.simulate:
        def run(folder: Path) -> dict[str, Any]:
            return run_here(spec, folder, worker)
    else:
        cancelled = _cancel_check()

        def run(folder: Path) -> dict[str, Any]:
            return run_in_child(spec, folder, worker, cancelled)
    try:
        files = None
        if spec.shared_folder is not None:
            folder = Path(spec.shared_folder)
            if folder.exists():
                shutil.rmtree(folder)  # an incomplete earlier attempt
            summary = run(folder)
        else:
            with tempfile.TemporaryDirectory(prefix="edgecaffe-run-") as temp:
                summary = run(Path(temp) / "run")
                files = read_folder(Path(temp) / "run")
        outcome = RunOutcome(spec.name, worker, True, summary, files)
    except Exception as error:  # the run failed: report it, keep the worker alive
        text = "".join(traceback.format_exception_only(error)).strip()
        # A real run's error already carries its process's traceback.
        detail = traceback.format_exc(limit=-3) if spec.simulate else ""
        outcome = RunOutcome(spec.name, worker, False, error=f"{text}\n{detail}".strip())
    outcome.seconds = time.perf_counter() - started
    _report(spec.topic, event="finish" if outcome.ok else "error", run=spec.name,
            worker_name=worker)
    return outcome


# -- on the submitting machine ------------------------------------------------------------------

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
    `allowed-failures`). Ctrl-C (KeyboardInterrupt) cancels every pending run and re-raises.
    Returns the campaign's counters; `summaries` holds each done run's summary."""
    from distributed import as_completed

    topic = f"edgecaffe-campaign-{uuid.uuid4().hex[:12]}"
    campaign = Campaign(len(specs))
    lock = threading.Lock()  # the event thread and this one both update `campaign`

    def handle(event) -> None:  # runs in the client's event loop thread
        with lock:
            _handle(event)

    def _handle(event) -> None:
        _, message = event
        # Dask sets "worker" to the address; the name is ours
        worker, run = message["worker_name"], message["run"]
        if message["event"] == "start":
            earlier = campaign.started.get(run)
            if earlier is not None and campaign.running.get(earlier) == run:
                log(f"{run}: its worker {earlier} was lost; restarted on {worker}")
                campaign.running.pop(earlier, None)
            campaign.started[run] = worker
            campaign.running[worker] = run
            log(f"[{worker}] started {run}")
        elif campaign.running.get(worker) == run:
            del campaign.running[worker]
        if on_event is not None:
            on_event(message)
        if on_progress is not None:
            on_progress(campaign)

    client.subscribe_topic(topic, handle)
    # future -> (spec, attempt, the worker addresses it may run on; None: any)
    pending: dict[Any, tuple[RunSpec, int, list[str] | None]] = {}
    keys = iter(range(1 << 62))

    def submit(spec: RunSpec, attempt: int):
        spec.topic = topic
        options: dict[str, Any] = {}
        addresses = None
        if not spec.simulate:
            workers = scheduler_workers(client)
            addresses = [a for a, w in workers.items()
                         if fits(w, spec.budget_bytes, worker_device)]
            if not addresses:
                described = "; ".join(
                    f"{w.get('name')}: memory {w.get('memory_limit') or 'unlimited'}, "
                    f"resources {w.get('resources') or {}}" for w in workers.values())
                raise ClusterError(
                    f"no worker fits a real run of {spec.budget_bytes} bytes"
                    + (f" on device {worker_device!r}" if worker_device else "")
                    + f" (needs resources device=1; workers: {described or 'none'})")
            options = dict(resources={"device": 1}, workers=addresses,
                           allow_other_workers=False)
        future = client.submit(execute, spec, key=f"{topic}-{next(keys)}-{spec.name}",
                               pure=False, **options)
        pending[future] = (spec, attempt, addresses)
        return future

    try:
        for spec in specs:
            try:
                submit(spec, 0)
            except ClusterError as error:
                campaign.failed += 1
                campaign.failures[spec.name] = str(error)
                log(f"{spec.name}: FAILED: {error}")
        batch = as_completed(list(pending))
        while not batch.is_empty():
            finished = batch.next_batch(block=False)
            if not finished:
                time.sleep(poll_s)
                _resubmit_stranded(client, pending, batch, submit)
                if on_progress is not None:  # what each worker runs, as it changes
                    with lock:
                        on_progress(campaign)
                continue
            for future in finished:
                if future not in pending:  # cancelled and resubmitted
                    continue
                spec, attempt, _ = pending.pop(future)
                outcome = _outcome(future, spec)
                with lock:
                    _account(campaign, outcome, spec, output_folders, log)
                    retry = not outcome.ok and attempt < retries
                    if retry:
                        log(f"{spec.name}: retry {attempt + 1} of {retries}")
                        campaign.failed -= 1
                    if on_progress is not None:
                        on_progress(campaign)
                if retry:
                    try:
                        batch.add(submit(spec, attempt + 1))
                    except ClusterError as error:  # no fitting worker left
                        with lock:
                            campaign.failed += 1
                            log(f"{spec.name}: FAILED: {error}")
    except BaseException:  # Ctrl-C or an error: nothing pending may keep running
        client.cancel(list(pending), force=True)
        raise
    finally:
        with contextlib.suppress(Exception):  # the connection may already be gone
            client.unsubscribe_topic(topic)
    return campaign


def _outcome(future, spec: RunSpec) -> RunOutcome:
    try:
        return future.result()
    except Exception as error:  # the task itself failed: KilledWorker, a lost connection
        return RunOutcome(spec.name, "?", False, error=f"{type(error).__name__}: {error}")


def _account(campaign: Campaign, outcome: RunOutcome, spec: RunSpec,
             output_folders: Mapping[str, Path], log: Callable[[str], None]) -> None:
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


def _resubmit_stranded(client, pending, batch, submit) -> None:
    """A real run restricted to workers that have all left (a worker restarted under a new
    address) would wait forever: cancel it and place it again among the workers there now."""
    alive = set(scheduler_workers(client))
    for future, (spec, attempt, addresses) in list(pending.items()):
        if addresses is None or future.done() or set(addresses) & alive:
            continue
        try:
            replacement = submit(spec, attempt)
        except ClusterError:
            continue  # nothing fits yet: keep waiting for a worker
        del pending[future]
        future.cancel()
        batch.add(replacement)
