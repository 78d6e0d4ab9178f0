"""The report's plots (matplotlib, the `plot` extra): response bars, response CDFs, and per run
a task chart and the memory ledger against measured RSS.

Every plot stays readable and quick at any run length: a task chart shows at most
`GANTT_TASKS` tasks (the run's first ones when it has more), curves of more than `CURVE_POINTS`
points are reduced (CDFs to quantiles, memory to the maximum per time bin), and each caption
says what was reduced. Times are shown in ms, s, min or h, whichever keeps the numbers short.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Tasks drawn in one chart: beyond a few thousand, bars are thinner than a pixel.
GANTT_TASKS = 1500
#: Points kept per curve.
CURVE_POINTS = 2000


def matplotlib_available() -> bool:
    """True when matplotlib imports (only the package, not pyplot: about 0.1 s)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def time_unit(max_ms: float) -> tuple[float, str]:
    """(ms per unit, unit name) so that `max_ms` reads as a short number."""
    if math.isnan(max_ms) or max_ms < 1e4:  # NaN: nothing to show
        return 1.0, "ms"
    if max_ms < 120e3:
        return 1e3, "s"
    if max_ms < 2 * 3600e3:
        return 60e3, "min"
    return 3600e3, "h"


def _png(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def draw_plots(runs: list, folder: Path,
               on_step: Callable[[str], None]) -> list[tuple[str, Path, str]] | None:
    """[(title, PNG path, caption)] for the report; None when matplotlib is missing."""
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    plots = [_response_bars(runs, folder)]
    on_step("response bars")
    plots.append(_response_cdfs(runs, folder))
    on_step("response CDFs")
    for number, run in enumerate(runs):
        plots.append(_timeline(run, folder / f"run{number}_timeline.png"))
        on_step(f"timeline {run.name}")
    return plots


def _response_bars(runs: list, folder: Path) -> tuple[str, Path, str]:
    import matplotlib.pyplot as plt

    groups = sorted({(r.network_set, r.budget) for r in runs})
    labels = list(dict.fromkeys(r.label for r in runs))
    means = {}
    for label in labels:
        for group in groups:
            values = [r.network_responses_ms() for r in runs
                      if (r.network_set, r.budget) == group and r.label == label]
            values = np.concatenate(values) if values else np.array([])
            means[label, group] = float(values.mean()) if len(values) else np.nan
    scale, unit = time_unit(np.nanmax(list(means.values())) if means else np.nan)
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(groups) * len(labels) + 3), 4))
    width = 0.8 / max(1, len(labels))
    for index, label in enumerate(labels):
        axis.bar([g + index * width for g in range(len(groups))],
                 [means[label, group] / scale for group in groups], width, label=label)
    axis.set_xticks([g + width * (len(labels) - 1) / 2 for g in range(len(groups))],
                    [f"{budget}\n{net_set}" for net_set, budget in groups], fontsize=7)
    axis.set_ylabel(f"mean response per network ({unit})")
    axis.set_title("Mean response time by policy and memory budget")
    axis.legend(fontsize=8)
    return ("Mean response time", _png(figure, folder / "response_bars.png"),
            "Mean over all networks of all requests, per network set and budget (x) and "
            "mode/policy (bars).")


def _response_cdfs(runs: list, folder: Path) -> tuple[str, Path, str]:
    import matplotlib.pyplot as plt

    values = [np.sort(r.network_responses_ms()) for r in runs]
    longest = max((float(v[-1]) for v in values if len(v)), default=np.nan)
    scale, unit = time_unit(longest)
    figure, axis = plt.subplots(figsize=(7, 4))
    reduced = False
    for run, ordered in zip(runs, values, strict=True):
        if not len(ordered):
            continue
        fraction = np.arange(1, len(ordered) + 1) / len(ordered)
        if len(ordered) > CURVE_POINTS:  # quantiles: the curve's shape, a fraction of points
            keep = np.linspace(0, len(ordered) - 1, CURVE_POINTS).round().astype(int)
            ordered, fraction, reduced = ordered[keep], fraction[keep], True
        axis.step(ordered / scale, fraction, where="post", label=f"{run.name}: {run.label}")
    axis.set_xlabel(f"response per network ({unit})")
    axis.set_ylabel("fraction of networks")
    axis.set_title("Response-time CDF")
    axis.legend(fontsize=7)
    caption = "Fraction of networks that responded within a time, per run."
    if reduced:
        caption += f" Runs with more than {CURVE_POINTS} networks are drawn from " \
                   f"{CURVE_POINTS} evenly spaced quantiles."
    return "Response-time CDFs", _png(figure, folder / "response_cdf.png"), caption


def binned_max(times: np.ndarray, values: np.ndarray, start: float, end: float,
               bins: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A step curve (value after each time) reduced to `bins` bins over start..end: per bin,
    the largest value in force during it (so peaks survive). Returns (bin starts, maxima)."""
    edges = np.linspace(start, end, bins + 1)
    # Bins are contiguous: bin k's events are values[first[k]:first[k + 1]] (the last bin's run
    # to the end; a sentinel keeps reduceat's indices in range).
    first = np.searchsorted(times, edges[:-1], side="right")
    in_force = np.where(first > 0, values[np.maximum(first - 1, 0)], np.nan)
    peaks = np.maximum.reduceat(np.append(values, -np.inf), first)
    has = np.append(first[1:], len(values)) > first
    maxima = np.where(has, np.fmax(in_force, peaks), in_force)
    return edges[:-1], maxima


def binned_mean(times: np.ndarray, values: np.ndarray, start: float, end: float,
                bins: int = CURVE_POINTS) -> np.ndarray:
    """Per bin of start..end, the time-weighted mean of the step curve (value after each time;
    0 before the first): the integral over the bin divided by its width."""
    widths = np.diff(times, append=end)
    area = np.concatenate([[0.0], np.cumsum(values * widths)])  # integral up to times[i]

    def integral(t: np.ndarray) -> np.ndarray:
        j = np.searchsorted(times, t, side="right") - 1
        inside = np.where(j >= 0, area[np.maximum(j, 0)] + values[np.maximum(j, 0)]
                          * (t - times[np.maximum(j, 0)]), 0.0)
        return inside

    edges = np.linspace(start, end, bins + 1)
    return np.diff(integral(edges)) / np.diff(edges)


def _gantt(axis, run, colours, networks: list[str]) -> tuple[float, float, str]:
    """Draw up to GANTT_TASKS tasks; returns the time window drawn (s) when that is part of the
    run only (else 0, 0) and a caption part."""
    tasks = run.tasks
    ran = np.flatnonzero((tasks["worker"] >= 0) & ~np.isnan(tasks["start_s"])
                         & ~np.isnan(tasks["end_s"]))
    if not len(ran):
        return 0.0, 0.0, "No tasks recorded."
    ran = ran[np.argsort(tasks["start_s"][ran], kind="stable")]
    shown = ran[:GANTT_TASKS]
    start = float(tasks["start_s"][shown].min())
    end = float(tasks["end_s"][shown].max()) if len(shown) == len(ran) \
        else float(tasks["start_s"][ran[GANTT_TASKS]])
    scale, unit = time_unit((end - start) * 1e3)
    code = {name: i for i, name in enumerate(networks)}
    bars: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
    for i in shown:
        key = (int(tasks["worker"][i]), tasks["network"][i], tasks["kind"][i])
        begin = float(tasks["start_s"][i])
        bars.setdefault(key, []).append(((begin - start) * 1e3 / scale,
                                         (float(tasks["end_s"][i]) - begin) * 1e3 / scale))
    for (worker, network, kind), spans in bars.items():
        # One collection per worker x network x kind: thousands of bars draw in one call.
        axis.broken_barh(spans, (worker - 0.3, 0.6), facecolors=colours(code[network] % 10),
                         alpha=1.0 if kind == "exec" else 0.4, linewidth=0)
    workers = sorted({int(w) for w in tasks["worker"][ran]})
    axis.set_yticks(workers, [str(w) for w in workers])
    axis.set_ylabel("worker")
    axis.set_xlabel(f"time since the first task ({unit})")
    caption = "Solid: exec tasks; pale: load (and other) tasks; colour: network."
    if len(shown) < len(ran):
        caption += (f" The run has {len(ran)} tasks; the chart shows its first {len(shown)} "
                    f"(the first {(end - start) * 1e3 / scale:.3g} {unit}), the memory plot "
                    "below the whole run with this window shaded.")
        return start, end, caption
    return 0.0, 0.0, caption


def _timeline(run, path: Path) -> tuple[str, Path, str]:
    import matplotlib.pyplot as plt

    networks = sorted(set(run.tasks["network"]))
    colours = plt.get_cmap("tab10")
    figure, (gantt, memory) = plt.subplots(2, 1, figsize=(9, 6))
    window_start, window_end, caption = _gantt(gantt, run, colours, networks)
    gantt.set_title(f"{run.name}: {run.label}, {run.budget}: tasks per worker")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(networks))]
    if networks:
        gantt.legend(handles, networks, fontsize=7, loc="upper right")
    caption += " " + _memory(memory, run, window_start, window_end)
    return f"{run.name}: tasks and memory", _png(figure, path), caption


def _memory(axis, run, window_start: float, window_end: float) -> str:
    """Ledger and RSS over the whole run, reduced per time bin; returns a caption part."""
    series: list[tuple[str, Any, Any]] = []
    if len(run.ledger["time_s"]):
        series.append(("ledger", run.ledger["time_s"], run.ledger["used_bytes"]))
    if len(run.rss["time_s"]):
        series.append(("measured RSS", run.rss["time_s"], run.rss["rss_bytes"]))
    times = [t for _, t, _ in series if len(t)]
    start = min((float(t.min()) for t in times), default=0.0)
    end = max((float(t.max()) for t in times), default=1.0)
    scale, unit = time_unit((end - start) * 1e3)
    reduced = False
    bins = CURVE_POINTS // 4  # a few hundred bins: each a few pixels wide
    for index, (label, t, v) in enumerate(series):
        colour = f"C{index}"
        if len(t) <= CURVE_POINTS:
            axis.step((t - start) * 1e3 / scale, v / 2**20, where="post", label=label,
                      linewidth=0.8, color=colour)
            continue
        reduced = True
        left, peak = binned_max(t, v, start, end, bins)
        mean = binned_mean(t, v, start, end, bins)
        x = (left - start) * 1e3 / scale
        axis.fill_between(x, 0, peak / 2**20, step="post", alpha=0.3, color=colour,
                          linewidth=0, label=f"{label}: maximum per bin")
        axis.step(x, mean / 2**20, where="post", linewidth=0.8, color=colour,
                  label=f"{label}: mean per bin")
    axis.axhline(int(run.config.get("budget_bytes", 0)) / 2**20, color="red", linestyle="--",
                 linewidth=0.8, label="budget")
    if window_end > window_start:  # the task chart shows part of the run
        axis.axvspan((window_start - start) * 1e3 / scale, (window_end - start) * 1e3 / scale,
                     color="grey", alpha=0.2, label="task chart's window")
    axis.set_xlabel(f"time since the run's start ({unit})")
    axis.set_ylabel("MiB")
    axis.legend(fontsize=7)
    parts = ["Memory: the scheduler's ledger (reserved bytes)"]
    parts.append("and the process's RSS" if len(run.rss["time_s"]) else
                 "(no RSS: simulated runs measure none)")
    text = " ".join(parts) + " against the budget."
    if reduced:
        from edgecaffe.experiment.report import duration

        text += (f" Curves of more than {CURVE_POINTS} points are shown per "
                 f"{duration((end - start) * 1e3 / bins)} bin: the maximum (shaded) and the "
                 "time-weighted mean (line) within each bin.")
    return text
