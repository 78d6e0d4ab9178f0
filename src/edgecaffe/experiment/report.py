"""`edgecaffe report`: results folders -> a Markdown and an HTML report with PNG plots.

Plots need matplotlib (the `plot` extra). The HTML embeds its images, so it opens in a browser
from disk with no server.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgecaffe import errors

ReportError = errors.ReportError  # defined with the other errors; importable from here too


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class Run:
    folder: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    requests: list[dict[str, str]]
    networks: list[dict[str, str]]
    tasks: list[dict[str, str]]
    ledger: list[dict[str, str]]
    rss: list[dict[str, str]]
    workers: list[dict[str, str]]

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))

    @property
    def policy(self) -> str:
        return str(self.config.get("policy", self.mode))

    @property
    def label(self) -> str:
        label = self.mode if self.policy == _default_policy(self.mode) else \
            f"{self.mode}/{self.policy}"
        if self.config.get("simulated"):
            device = (self.config.get("device") or {}).get("name", "host")
            label += " (sim)" if device == "host" else f" (sim {device})"
        return label

    @property
    def budget(self) -> str:
        nbytes = int(self.config.get("budget_bytes", 0))
        return f"{nbytes / 2**30:g}G" if nbytes >= 2**30 else f"{nbytes / 2**20:g}M"

    @property
    def network_set(self) -> str:
        names = sorted({r["network"].split("#")[0] for r in self.networks})
        return "+".join(names)

    def network_responses_ms(self) -> list[float]:
        return [float(r["response_ms"]) for r in self.networks if r["response_ms"]]


def network_totals_ms(run: Run) -> dict[str, tuple[float, float]]:
    """Per network, (total load ms, total exec ms) in isolation: as the run recorded them
    (from the profile or the simulated device), else from its profiled package; a network
    whose times are unknown is left out."""
    recorded = run.config.get("network_totals_ms")
    if recorded:
        return {name: (float(load), float(execute)) for name, (load, execute) in recorded.items()
                if load == load and execute == execute}  # NaN: unknown
    totals = {}
    for name, folder in (run.config.get("networks") or {}).items():
        manifest_path = Path(folder) / "manifest.yaml"
        if not manifest_path.exists():
            continue
        profiles = [entry.get("profile") for entry in
                    yaml.safe_load(manifest_path.read_text()).get("layers", [])]
        if profiles and all(profiles):
            totals[name] = (sum(p["load_ms"] for p in profiles),
                            sum(p["exec_ms"] for p in profiles))
    return totals


def bound_ratios(run: Run) -> list[float]:
    """Per completed request: its response over the lower bound max(total load, total exec) of
    its networks in isolation (loads share the storage, executions the compute)."""
    totals = network_totals_ms(run)
    ratios = []
    for request in run.requests:
        networks = request["networks"].split()
        if request["status"] != "completed" or not all(n in totals for n in networks):
            continue
        bound = max(sum(totals[n][0] for n in networks), sum(totals[n][1] for n in networks))
        if bound > 0:
            ratios.append(float(request["response_ms"]) / bound)
    return ratios


def _default_policy(mode: str) -> str:
    from edgecaffe.sched import MODES

    return MODES[mode].policy if mode in MODES else mode


def load_run(folder: Path) -> Run:
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise ReportError(f"{folder}: not a results folder (no summary.json); give folders "
                          "written by `edgecaffe experiment` or `edgecaffe demo`")
    return Run(folder, yaml.safe_load((folder / "config.yaml").read_text()) or {},
               json.loads(summary_path.read_text()), _rows(folder / "requests.csv"),
               _rows(folder / "networks.csv"), _rows(folder / "tasks.csv"),
               _rows(folder / "ledger.csv"), _rows(folder / "rss.csv"),
               _rows(folder / "workers.csv"))


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Results folders given directly or found below the given folders."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path}: no such folder")
        found = [path] if (path / "summary.json").exists() else sorted(
            p.parent for p in path.rglob("summary.json"))
        if not found:
            raise ReportError(f"{path}: holds no results folders (no summary.json below it)")
        runs += [load_run(folder) for folder in found]
    return runs


def _stats(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    return statistics.mean(values), statistics.median(values), p95


def _png(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def _plots(runs: list[Run], folder: Path) -> list[tuple[str, Path]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    plots: list[tuple[str, Path]] = []
    groups = sorted({(r.network_set, r.budget) for r in runs})
    labels = list(dict.fromkeys(r.label for r in runs))
    # 1. Mean response per policy x budget (x set): the paper's main figure.
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(labels) / 2 + 3), 4))
    width = 0.8 / max(1, len(labels))
    for index, label in enumerate(labels):
        means = []
        for group in groups:
            values = [v for r in runs if (r.network_set, r.budget) == group and r.label == label
                      for v in r.network_responses_ms()]
            means.append(_stats(values)[0])
        axis.bar([g + index * width for g in range(len(groups))], means, width, label=label)
    axis.set_xticks([g + width * (len(labels) - 1) / 2 for g in range(len(groups))],
                    [f"{budget}\n{net_set}" for net_set, budget in groups], fontsize=7)
    axis.set_ylabel("mean response per network (ms)")
    axis.set_title("Mean response time by policy and memory budget")
    axis.legend(fontsize=8)
    plots.append(("Mean response time", _png(figure, folder / "response_bars.png")))
    # 2. Response-time CDFs.
    figure, axis = plt.subplots(figsize=(7, 4))
    for run in runs:
        values = sorted(run.network_responses_ms())
        if values:
            axis.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                      label=f"{run.label} {run.budget}")
    axis.set_xlabel("response per network (ms)")
    axis.set_ylabel("fraction of networks")
    axis.set_title("Response-time CDF")
    axis.legend(fontsize=7)
    plots.append(("Response-time CDFs", _png(figure, folder / "response_cdf.png")))
    # 3. Per run: Gantt chart of tasks per worker, and the ledger against measured RSS.
    colours = plt.get_cmap("tab10")
    for number, run in enumerate(runs):
        networks = sorted({t["network"] for t in run.tasks})
        figure, (gantt, memory) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        for task in run.tasks:
            if not task["start_s"] or not task["worker"]:
                continue
            start, end = float(task["start_s"]), float(task["end_s"])
            gantt.barh(int(task["worker"]), end - start, left=start, height=0.6,
                       color=colours(networks.index(task["network"]) % 10),
                       edgecolor="black" if task["kind"] == "exec" else "none", linewidth=0.2)
        workers = sorted({int(t["worker"]) for t in run.tasks if t["worker"]})
        gantt.set_yticks(workers, [str(w) for w in workers])
        gantt.set_ylabel("worker")
        gantt.set_title(f"{run.label}, {run.budget}: tasks per worker (edged = exec)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10))
                   for i in range(len(networks))]
        gantt.legend(handles, networks, fontsize=7, loc="upper right")
        if run.ledger:
            memory.step([float(e["time_s"]) for e in run.ledger],
                        [int(e["used_bytes"]) / 2**20 for e in run.ledger], where="post",
                        label="ledger")
        if run.rss:
            memory.plot([float(s["time_s"]) for s in run.rss],
                        [int(s["rss_bytes"]) / 2**20 for s in run.rss], label="measured RSS",
                        linewidth=0.8)
        memory.axhline(int(run.config.get("budget_bytes", 0)) / 2**20, color="red",
                       linestyle="--", linewidth=0.8, label="budget")
        memory.set_xlabel("time (s)")
        memory.set_ylabel("MiB")
        memory.legend(fontsize=7)
        plots.append((f"Run {run.folder.name}: tasks and memory",
                      _png(figure, folder / f"run{number}_timeline.png")))
    return plots


def write_report(paths: list[str | Path], output: str | Path) -> tuple[Path, Path]:
    """Write `output/report.md` and `output/report.html` (with PNG plots when matplotlib is
    installed); returns their paths."""
    runs = find_runs(paths)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    header = ["set", "budget", "mode/policy", "runs", "mean ms", "median ms", "p95 ms",
              "response / bound", "peak ledger MiB", "peak RSS MiB", "worker utilisation",
              "failed"]
    table = []
    for key in sorted({(r.network_set, r.budget, r.label) for r in runs}):
        group = [r for r in runs if (r.network_set, r.budget, r.label) == key]
        mean, median, p95 = _stats([v for r in group for v in r.network_responses_ms()])
        utilisation = [float(w["utilisation"]) for r in group for w in r.workers
                       if w["utilisation"] not in ("", "nan")]
        peak_rss = max((r.summary.get("peak_rss_bytes") or 0) for r in group) / 2**20
        ratios = [v for r in group for v in bound_ratios(r)]
        table.append([key[0], key[1], key[2], str(len(group)), f"{mean:.0f}", f"{median:.0f}",
                      f"{p95:.0f}", f"{statistics.mean(ratios):.2f}" if ratios else "",
                      f"{max(r.summary['peak_ledger_bytes'] for r in group) / 2**20:.0f}",
                      f"{peak_rss:.0f}",
                      f"{statistics.mean(utilisation):.0%}" if utilisation else "",
                      str(sum(r.summary.get("failed", 0) for r in group))])
    plots = _plots(runs, folder)
    intro = (f"{len(runs)} run(s). Response time per network: from its request's arrival to the "
             "end of the network's last task (the paper's metric); mean, median and p95 over all "
             "networks of all requests. Response / bound: each request's response over the lower "
             "bound max(total load, total exec) of its networks in isolation, from the profiled "
             "packages, averaged over requests (near 1 is what the hardware allows).")
    markdown = ["# EdgeCaffe report", "", intro, "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(row) + " |" for row in table]
    if not plots:
        markdown += ["", "(No plots: install matplotlib, `pip install 'edgecaffe[plot]'`.)"]
    for title, path in plots:
        markdown += ["", f"## {title}", "", f"![{title}]({path.name})"]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(markdown) + "\n")
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table)
    images = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;"
        f"base64,{base64.b64encode(path.read_bytes()).decode()}'>" for title, path in plots)
    html_path = folder / "report.html"
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>EdgeCaffe report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
        "collapse}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
        "img{max-width:100%}</style></head><body><h1>EdgeCaffe report</h1>"
        f"<p>{html.escape(intro)}</p><table><tr>{cells}</tr>{rows}</table>{images}"
        "</body></html>\n")
    return md_path, html_path
