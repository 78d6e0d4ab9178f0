"""A run's results folder, derived from its trace: CSV files with units in the column names."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

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
                per_network.setdefault(key.split("#")[0], []).append(
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
    }


def write_run(folder: str | Path, trace: Trace, config: dict[str, Any],
              rss: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Write one run's folder; returns its summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _write_csv(folder / "tasks.csv",
               ["task_id", "request_id", "instance_id", "network", "kind", "layers", "pool",
                "worker", "created_s", "ready_s", "start_s", "end_s", "state", "reserve_bytes",
                "forced", "depends_on", "error"],
               [[t.task_id, t.request_id, t.instance_id, t.network, t.kind, t.layers, t.pool,
                 t.worker, t.created_s, t.ready_s, t.start_s, t.end_s, t.state, t.reserve_bytes,
                 t.forced, " ".join(map(str, t.depends_on)), t.error or ""]
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
                "forced"],
               [[e.time, e.delta_bytes, e.used_bytes, e.task_id, e.network_instance, e.reason,
                 e.forced] for e in trace.ledger])
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
