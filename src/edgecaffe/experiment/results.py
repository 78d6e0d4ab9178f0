"""A run's results folder, derived from its trace: CSV files with units in the column names."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from edgecaffe.errors import EdgeCaffeError
from edgecaffe.sched.trace import Trace


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def network_of(key: str) -> str:
    """The network of a result key: `AgeNet` for `AgeNet`, `AgeNet#2` or `AgeNet[0]`."""
    return key.split("#")[0].split("[")[0]


def summarize(trace: Trace, rss: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Response times (per request: arrival to its last network's end; per network), makespan,
    peak ledger and peak RSS of one run."""
    responses = [r.response_s * 1e3 for r in trace.requests.values() if r.status == "completed"]
    per_network: dict[str, list[float]] = {}
    for request in trace.requests.values():
        if request.status != "completed":
            continue
        for key, (_, end) in request.network_spans.items():
            if end is not None:
                per_network.setdefault(network_of(key), []).append(
                    (end - request.arrival_s) * 1e3)
    ends = [r.completion_s for r in trace.requests.values() if r.completion_s is not None]
    arrivals = [r.arrival_s for r in trace.requests.values()]
    network_times = [t for times in per_network.values() for t in times]
    return {
        "requests": len(trace.requests),
        "completed": len(responses),
        "failed": sum(r.status == "failed" for r in trace.requests.values()),
        "mean_response_ms": statistics.mean(responses) if responses else math.nan,
        "median_response_ms": statistics.median(responses) if responses else math.nan,
        "p95_response_ms": percentile(responses, 95),
        # The paper's metric: each network's response (its request's arrival to the network's
        # last task), averaged over all networks of all requests.
        "mean_network_response_ms": statistics.mean(network_times) if network_times
        else math.nan,
        "network_mean_response_ms": {name: statistics.mean(times)
                                     for name, times in per_network.items()},
        "makespan_ms": (max(ends) - min(arrivals)) * 1e3 if ends and arrivals else math.nan,
        "peak_ledger_bytes": max((e.used_bytes for e in trace.ledger),
                                 default=int(trace.info.get("peak_ledger_bytes", 0))),
        "forced_admissions": len(trace.forced_events),
        "peak_rss_bytes": max((value for _, value in rss), default=0) if rss else None,
        # Gated networks: instances run on what their parents found, and conditions that
        # failed (with the context-oblivious policy, each dropped a speculative instance).
        "gated_instances": sum(len(g.instances) for g in trace.gates if g.outcome == "run"),
        "failed_conditions": sum(1 for g in trace.gates if g.count == 0),
    }


#: The files a run folder holds (write_run's, and limits.json from --enforce-memory).
RUN_FILES = ("config.yaml", "tasks.csv", "requests.csv", "networks.csv", "ledger.csv", "rss.csv",
             "gates.csv", "workers.csv", "summary.json", "limits.json", "environment.json",
             "complete.json")


class ResultsError(EdgeCaffeError):
    """A results folder that would be written outside --output or over an earlier run."""


def claim_run_folder(folder: str | Path, output: str | Path, force: bool = False) -> Path:
    """Check that a run may write `folder`: inside `output`, and not over an earlier run's
    results unless `force` (then the earlier run's files, and only those, are removed).

    Raises ResultsError saying which folder, what it holds and what to do."""
    folder, output = Path(folder), Path(output)
    if not folder.resolve().is_relative_to(output.resolve()):
        raise ResultsError(f"results folder {folder} is outside the output folder {output}; "
                           "the run name (output-prefix) must be a plain name")
    earlier = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if earlier and not force:
        what = ""
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
            old = yaml.safe_load((folder / "config.yaml").read_text())
            what = f" (networks {', '.join(map(str, old['networks']))}, mode {old['mode']})"
        raise ResultsError(f"results folder {folder} already holds a run{what}; refusing to "
                           "overwrite it: choose another --output or --output-prefix, or pass "
                           "--force to replace it")
    for path in earlier:
        path.unlink()
    return folder


def environment() -> dict[str, Any]:
    """Where and with what a run ran: UTC date, host, machine, CPUs, package versions and the
    BLAS library numpy calls (threadpoolctl's view: implementation, version and the CPU kernel
    it chose). Written next to each run as environment.json."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("edgecaffe", "numpy", "protobuf", "pillow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    blas = "unknown (threadpoolctl not installed)"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        # The thread count is the run's (config: blas_threads), not this moment's.
        blas = "; ".join(f"{p.get('internal_api')} {p.get('version')}, kernel "
                         f"{p.get('architecture', '?')}" for p in pools) or "none loaded"
    except ImportError:
        pass
    return {"date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "cpus": os.cpu_count(),
            "versions": versions, "blas": blas}


def write_run(folder: str | Path, trace: Trace, config: dict[str, Any],
              rss: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Write one run's folder; returns its summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "environment.json").write_text(json.dumps(environment(), indent=2))
    _write_csv(folder / "tasks.csv",
               ["task_id", "request_id", "instance_id", "network", "kind", "layers", "pool",
                "worker", "created_s", "ready_s", "start_s", "end_s", "state", "reserve_bytes",
                "forced", "depends_on", "error", "cached"],
               [[t.task_id, t.request_id, t.instance_id, t.network, t.kind, t.layers, t.pool,
                 t.worker, t.created_s, t.ready_s, t.start_s, t.end_s, t.state, t.reserve_bytes,
                 t.forced, " ".join(map(str, t.depends_on)), t.error or "", t.cached]
                for t in sorted(trace.tasks, key=lambda t: t.task_id)])
    _write_csv(folder / "requests.csv",
               ["request_id", "networks", "arrival_s", "completion_s", "response_ms", "status",
                "error"],
               [[r.request_id, " ".join(r.networks), r.arrival_s, r.completion_s,
                 None if r.response_s is None else r.response_s * 1e3, r.status, r.error or ""]
                for r in trace.requests.values()])
    _write_csv(folder / "networks.csv",
               ["request_id", "network", "start_s", "end_s", "response_ms"],
               [[r.request_id, name, start, end,
                 None if end is None else (end - r.arrival_s) * 1e3]
                for r in trace.requests.values() for name, (start, end) in r.network_spans.items()])
    _write_csv(folder / "ledger.csv",
               ["time_s", "delta_bytes", "used_bytes", "task_id", "instance_id", "reason",
                "forced", "cached_bytes"],
               [[e.time, e.delta_bytes, e.used_bytes, e.task_id, e.network_instance, e.reason,
                 e.forced, e.cached_bytes] for e in trace.ledger])
    if trace.gates:
        _write_csv(folder / "gates.csv",
                   ["request_id", "network", "parent", "context", "count", "resolved_s",
                    "instance_ids", "outcome", "error"],
                   [[g.request_id, g.network, g.parent, g.context, g.count, g.resolved_s,
                     " ".join(map(str, g.instances)), g.outcome, g.error or ""]
                    for g in trace.gates])
    if rss is not None:
        _write_csv(folder / "rss.csv", ["time_s", "rss_bytes"], [list(s) for s in rss])
    busy: dict[int, float] = {}
    for task in trace.tasks:
        if task.worker is not None and task.start_s is not None and task.end_s is not None:
            busy[task.worker] = busy.get(task.worker, 0.0) + task.end_s - task.start_s
    summary = summarize(trace, rss)
    span_s = summary["makespan_ms"] / 1e3 if summary["makespan_ms"] == summary["makespan_ms"] \
        else 0.0
    _write_csv(folder / "workers.csv", ["worker", "busy_s", "idle_s", "utilisation"],
               [[w, b, max(0.0, span_s - b), b / span_s if span_s else math.nan]
                for w, b in sorted(busy.items())])
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# -- completeness: what `--resume` trusts -------------------------------------------------------

#: Written last into a run's folder; lists every other file with its size. A folder without it,
#: or whose files do not match it, is incomplete (a run interrupted, a copy cut short).
COMPLETE = "complete.json"


def mark_complete(folder: str | Path, run: str = "") -> None:
    """Write `folder`'s completeness marker (after every other file of the run)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE}
    (folder / COMPLETE).write_text(json.dumps({"run": run, "files_bytes": files}, indent=2))


def is_complete(folder: str | Path) -> bool:
    """True when `folder` holds a completeness marker and every file it lists, at its size."""
    folder = Path(folder)
    try:
        files = json.loads((folder / COMPLETE).read_text())["files_bytes"]
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
