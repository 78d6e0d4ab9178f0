"""Campaigns across machines: every run of an experiment matrix as one Dask distributed task;
this module is the worker's side and what both sides share (`campaign.py` submits).

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

Dask distributed is imported only inside functions, when a campaign starts: it is the optional
extra `edgecaffe[cluster]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    enforce_memory: bool = False  # real runs: inside a memory cgroup of the budget (root)
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


def scratch_dir() -> str | None:
    """The worker's own local directory (Dask removes it when the worker closes, and a later
    worker on the machine purges one a killed worker left), so temporary run folders go
    there, not to /tmp; None when not on a worker."""
    from distributed import get_worker

    try:
        return get_worker().local_directory
    except ValueError:
        return None


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
            # Build (zoo) and check the packages here, outside the run's memory limit; the
            # run's process then only opens them.
            _worker_packages(spec, worker)
            return run_in_child(spec, folder, worker, cancelled)
    try:
        files = None
        if spec.shared_folder is not None:
            folder = Path(spec.shared_folder)
            if folder.exists():
                shutil.rmtree(folder)  # an incomplete earlier attempt
            summary = run(folder)
        else:
            with tempfile.TemporaryDirectory(prefix="edgecaffe-run-", dir=scratch_dir()) as temp:
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
