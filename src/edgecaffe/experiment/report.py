"""`edgecaffe report`: results folders -> a Markdown and an HTML report with PNG plots.

Plots need matplotlib (the `plot` extra; drawn by `report_plots`). The HTML embeds its images,
so it opens in a browser from disk with no server. Runs are read column by column into numpy
arrays (a 1000-arrival simulation has a third of a million tasks), and the plots aggregate or
sample what a picture cannot show, saying so in their captions.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgecaffe import errors

PLOT_HINT = "pip install 'edgecaffe[plot]'"

ReportError = errors.ReportError  # defined with the other errors; importable from here too


def _columns(path: Path, spec: dict[str, str]) -> dict[str, Any]:
    """The CSV file's columns named in `spec` (name -> 'f' float, NaN when empty; 'i' int, -1
    when empty; 's' str list), read in one streaming pass; empty columns when the file is
    missing."""
    raw: dict[str, list[str]] = {name: [] for name in spec}
    if path.exists():
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [name for name in spec if name not in header]
            if missing:
                raise ReportError(f"{path}: no column {', '.join(missing)}")
            where = [(header.index(name), raw[name]) for name in spec]
            for row in reader:
                for index, values in where:
                    values.append(row[index])
    out: dict[str, Any] = {}
    for name, kind in spec.items():
        values = raw[name]
        if kind == "s":
            out[name] = values
        else:
            empty = "nan" if kind == "f" else "-1"
            array = np.array([v if v not in ("", "None") else empty for v in values], dtype=float)
            out[name] = array if kind == "f" else array.astype(np.int64)
    return out


def _yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster when built
    return yaml.load(path.read_text(), Loader=loader) if path.exists() else None


@dataclass
class Run:
    """One results folder, its CSV files as numpy columns (times in s, sizes in bytes)."""

    folder: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    environment: dict[str, Any] | None
    requests: dict[str, Any]
    networks: dict[str, Any]
    tasks: dict[str, Any]
    ledger: dict[str, Any]
    rss: dict[str, Any]
    workers: dict[str, Any]
    #: A heading unique among the reported runs (the folder relative to their common parent).
    name: str = ""

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))

    @property
    def policy(self) -> str:
        return str(self.config.get("policy", self.mode))

    @property
    def simulated(self) -> bool:
        return bool(self.config.get("simulated"))

    @property
    def label(self) -> str:
        label = self.mode if self.policy == _default_policy(self.mode) else \
            f"{self.mode}/{self.policy}"
        if self.config.get("gated"):  # the context experiment: policy and share of faces
            label += f" {self.config.get('context', 'aware')} " \
                     f"p={float(self.config.get('context_share', 1.0)):g}"
        if self.simulated:
            device = (self.config.get("device") or {}).get("name", "host")
            label += " (sim)" if device == "host" else f" (sim {device})"
        return label

    @property
    def budget(self) -> str:
        nbytes = int(self.config.get("budget_bytes", 0))
        return f"{nbytes / 2**30:g}G" if nbytes >= 2**30 else f"{nbytes / 2**20:g}M"

    @property
    def network_set(self) -> str:
        if self.config.get("gated") and isinstance(self.config.get("networks"), dict):
            return "+".join(sorted(self.config["networks"]))  # those that ran depend on p
        return "+".join(sorted({n.split("#")[0].split("[")[0]
                                for n in self.networks["network"]}))

    def network_responses_ms(self) -> np.ndarray:
        values = self.networks["response_ms"]
        return values[~np.isnan(values)]


def _default_policy(mode: str) -> str:
    from edgecaffe.sched import MODES

    return MODES[mode].policy if mode in MODES else mode


def load_run(folder: Path) -> Run:
    """Read one results folder (written by `results.write_run`)."""
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise ReportError(f"{folder}: not a results folder (no summary.json); give folders "
                          "written by `edgecaffe experiment` or `edgecaffe demo`")
    environment_path = folder / "environment.json"
    return Run(
        folder, _yaml(folder / "config.yaml") or {}, json.loads(summary_path.read_text()),
        json.loads(environment_path.read_text()) if environment_path.exists() else None,
        _columns(folder / "requests.csv", {"request_id": "i", "networks": "s", "arrival_s": "f",
                                           "completion_s": "f", "response_ms": "f",
                                           "status": "s"}),
        _columns(folder / "networks.csv", {"network": "s", "response_ms": "f"}),
        _columns(folder / "tasks.csv", {"request_id": "i", "network": "s", "kind": "s",
                                        "worker": "i", "start_s": "f", "end_s": "f"}),
        _columns(folder / "ledger.csv", {"time_s": "f", "used_bytes": "f"}),
        _columns(folder / "rss.csv", {"time_s": "f", "rss_bytes": "f"}),
        _columns(folder / "workers.csv", {"utilisation": "f"}))


def find_folders(paths: list[str | Path]) -> list[Path]:
    """Results folders given directly or found below the given folders."""
    folders = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path}: no such folder")
        found = [path] if (path / "summary.json").exists() else sorted(
            p.parent for p in path.rglob("summary.json"))
        if not found:
            raise ReportError(f"{path}: holds no results folders (no summary.json below it)")
        folders += found
    return folders


def find_runs(paths: list[str | Path],
              on_step: Callable[[str], None] | None = None) -> list[Run]:
    """The runs of `find_folders(paths)`, each with a unique `name`."""
    folders = find_folders(paths)
    runs = []
    for folder in folders:
        runs.append(load_run(folder))
        if on_step is not None:
            on_step(f"read {folder.name}")
    resolved = [f.resolve() for f in folders]
    root = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    seen: dict[str, int] = {}
    for run, path in zip(runs, resolved, strict=True):
        name = str(path.relative_to(root)) if path != root else path.name
        seen[name] = seen.get(name, 0) + 1
        run.name = name if seen[name] == 1 else f"{name} ({seen[name]})"
    return runs


def network_totals_ms(run: Run) -> dict[str, tuple[float, float]]:
    """Per network, (total load ms, total exec ms) in isolation as the run recorded them (from
    the profile or the simulated device); a network whose times are unknown is left out."""
    recorded = run.config.get("network_totals_ms") or {}
    return {name: (float(load), float(execute)) for name, (load, execute) in recorded.items()
            if not (math.isnan(float(load)) or math.isnan(float(execute)))}


def work_bounds_ms(run: Run) -> dict[int, float]:
    """Per completed request id, a lower bound of its response (ms) in this very run: the time
    its own tasks ran (each clipped to the request's arrival..completion) shared over the run's
    workers, or its longest task if that is longer. At most one task runs per worker at a time,
    so no schedule on these workers finishes them sooner: response / bound >= 1 always, and the
    excess is time the request waited. Empty when the run recorded no tasks."""
    tasks, requests = run.tasks, run.requests
    ran = (tasks["worker"] >= 0) & ~np.isnan(tasks["start_s"]) & ~np.isnan(tasks["end_s"])
    if not ran.any() or not len(requests["request_id"]):
        return {}
    workers = len(np.unique(tasks["worker"][ran]))
    ids = requests["request_id"]
    order = np.argsort(ids)
    position = np.searchsorted(ids[order], tasks["request_id"][ran])
    position = np.clip(position, 0, len(ids) - 1)
    index = order[position]
    known = ids[index] == tasks["request_id"][ran]
    index = index[known]
    start = np.maximum(tasks["start_s"][ran][known], requests["arrival_s"][index])
    end = np.minimum(tasks["end_s"][ran][known], requests["completion_s"][index])
    clipped = np.where(np.isnan(end), 0.0, np.maximum(0.0, end - start))
    total = np.bincount(index, weights=clipped, minlength=len(ids))
    longest = np.zeros(len(ids))
    np.maximum.at(longest, index, clipped)
    bound_s = np.maximum(total / workers, longest)
    return {int(ids[i]): float(bound_s[i] * 1e3) for i in range(len(ids))
            if requests["status"][i] == "completed" and bound_s[i] > 0}


def bound_ratios(run: Run) -> list[float]:
    """Per completed request: its response over `work_bounds_ms` (>= 1)."""
    bounds = work_bounds_ms(run)
    return [float(response) / bounds[int(rid)] for rid, response in
            zip(run.requests["request_id"], run.requests["response_ms"], strict=True)
            if int(rid) in bounds]


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    if not len(values):
        return math.nan, math.nan, math.nan
    ordered = np.sort(values)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    return float(np.mean(values)), float(np.median(values)), float(p95)


def duration(ms: float) -> str:
    """`ms` in a unit a reader can take in: ms below 10 s, then s, min, h."""
    if math.isnan(ms):
        return "n/a"
    if ms < 1e4:
        return f"{ms:.0f} ms"
    if ms < 120e3:
        return f"{ms / 1e3:.1f} s"
    if ms < 2 * 3600e3:
        return f"{ms / 60e3:.1f} min"
    return f"{ms / 3600e3:.1f} h"


HEADER = ["set", "budget", "mode/policy", "runs", "mean", "median", "p95", "response / bound",
          "peak ledger MiB", "peak RSS MiB", "worker utilisation", "failed", "forced"]


def _table(runs: list[Run]) -> list[list[str]]:
    table = []
    for key in sorted({(r.network_set, r.budget, r.label) for r in runs}):
        group = [r for r in runs if (r.network_set, r.budget, r.label) == key]
        mean, median, p95 = _stats(np.concatenate([r.network_responses_ms() for r in group]))
        utilisation = np.concatenate([r.workers["utilisation"] for r in group])
        utilisation = utilisation[~np.isnan(utilisation)]
        rss = [r.summary.get("peak_rss_bytes") for r in group]
        ratios = [v for r in group for v in bound_ratios(r)]
        forced = [r.summary.get("forced_admissions") for r in group]
        table.append([
            key[0], key[1], key[2], str(len(group)), duration(mean), duration(median),
            duration(p95), f"{np.mean(ratios):.2f}" if ratios else "n/a",
            f"{max(r.summary['peak_ledger_bytes'] for r in group) / 2**20:.0f}",
            # Simulated runs measure no RSS: nothing ran.
            f"{max(v for v in rss if v) / 2**20:.0f}" if any(rss) else "n/a",
            f"{np.mean(utilisation):.0%}" if len(utilisation) else "n/a",
            str(sum(r.summary.get("failed", 0) for r in group)),
            str(sum(f for f in forced if f)) if any(f is not None for f in forced) else "n/a"])
    return table


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("edgecaffe", "numpy", "matplotlib"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _run_facts(run: Run) -> list[tuple[str, str]]:
    """(key, value) lines describing how a run was made: its settings and where it ran."""
    config = run.config
    arrivals = config.get("arrivals")
    count = len(arrivals) if isinstance(arrivals, list) else arrivals
    facts = [("folder", str(run.folder)), ("mode / policy", f"{run.mode} / {run.policy}"),
             ("budget", run.budget), ("workers", str(config.get("workers", "?"))),
             ("granularity", str(config.get("granularity", "?"))),
             ("BLAS threads per execution", str(config.get("blas_threads", "?"))),
             ("arrivals", f"{count} ({config.get('arrival_mode', 'as listed')}"
                          + (f", multiplier {config['multiplier']:g}"
                             if config.get("multiplier") else "")
                          + (", closed loop)" if config.get("closed_loop") else ", open loop)"))]
    if run.simulated:
        device = config.get("device") or {}
        facts.append(("simulated on", ", ".join(f"{k} {v}" for k, v in device.items())))
    environment = run.environment
    if environment:
        facts += [("date", environment.get("date_utc", "?")),
                  ("host", f"{environment.get('host', '?')} ({environment.get('machine', '?')},"
                           f" {environment.get('cpus', '?')} CPUs)"),
                  ("versions", ", ".join(f"{k} {v}" for k, v in
                                         (environment.get("versions") or {}).items())),
                  ("BLAS", environment.get("blas", "?"))]
    else:
        facts.append(("date, host, versions", "not recorded (a folder from before they were)"))
    return facts


def _config_text(run: Run) -> str:
    config = dict(run.config)
    if isinstance(config.get("arrivals"), list):
        config["arrivals"] = f"{len(config['arrivals'])} arrivals (see config.yaml)"
    return yaml.safe_dump(config, sort_keys=False)


INTRO = (
    "Response time per network: from its request's arrival to the end of the network's last "
    "task (the paper's metric); mean, median and p95 over all networks of all requests. "
    "Response / bound: each request's response over a lower bound of it in the same run: the "
    "time its own load and exec tasks ran, shared over the run's workers (or its longest task, "
    "if longer), averaged over requests. It is 1 when a request never waited for a worker and "
    "grows with the time it waited; n/a where a run recorded no tasks. Peak RSS: measured on "
    "real runs, n/a for simulated ones (nothing ran). Forced: admissions over the budget (a "
    "task larger than the budget runs alone, over it).")


def write_report(paths: list[str | Path], output: str | Path,
                 on_step: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write `output/report.md` and `output/report.html` (with PNG plots when matplotlib is
    installed); returns their paths. `on_step(what)` is called after each of the
    `2 * len(find_folders(paths)) + 2` steps (reading runs, drawing plots)."""
    from edgecaffe.experiment.report_plots import draw_plots

    step = on_step or (lambda _: None)
    runs = find_runs(paths, step)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    table = _table(runs)
    plots = draw_plots(runs, folder, step)
    versions = _versions()
    made = (f"Written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
            f"({platform.machine()}), " + ", ".join(f"{k} {v}" for k, v in versions.items())
            + f". {len(runs)} run(s).")
    no_plots = ("No plots: matplotlib is not installed; install it with "
                f"`{PLOT_HINT}` and run `edgecaffe report` again.")
    markdown = ["# EdgeCaffe report", "", made, "", INTRO, "",
                "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    markdown += ["| " + " | ".join(row) + " |" for row in table]
    if plots is None:
        markdown += ["", no_plots]
    for title, path, caption in plots or []:
        markdown += ["", f"## {title}", "", f"![{title}]({path.name})", "", caption]
    markdown += ["", "## Runs"]
    for run in runs:
        markdown += ["", f"### {run.name}", ""]
        markdown += [f"* {key}: {value}" for key, value in _run_facts(run)]
        markdown += ["", "```yaml", _config_text(run).rstrip(), "```"]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(markdown) + "\n")
    html_path = folder / "report.html"
    html_path.write_text(_html(runs, table, plots, made, no_plots))
    return md_path, html_path


def _html(runs: list[Run], table: list[list[str]], plots: list | None, made: str,
          no_plots: str) -> str:
    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in table)
    parts = [f"<p>{esc(no_plots)}</p>"] if plots is None else []
    for title, path, caption in plots or []:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' "
                     f"src='data:image/png;base64,{data}'><p class='caption'>{esc(caption)}</p>")
    parts.append("<h2>Runs</h2>")
    for run in runs:
        facts = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in _run_facts(run))
        parts.append(f"<h3>{esc(run.name)}</h3><ul>{facts}</ul><details><summary>config"
                     f"</summary><pre>{esc(_config_text(run))}</pre></details>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>EdgeCaffe report</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-"
            "collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
            "img{max-width:100%}.caption{color:#444;font-size:90%}</style></head><body>"
            f"<h1>EdgeCaffe report</h1><p>{esc(made)}</p><p>{esc(INTRO)}</p>"
            f"<table><tr>{cells}</tr>{rows}</table>{''.join(parts)}</body></html>\n")
