"""`edgecaffe profile`: per-layer load and execution times, bytes, and peak memory of a package.

The original's ExtendNetworkDescription plus its layer-statistics notebook: the figures go into
the manifest (`profile` sections), where schedulers and the simulator read them.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecaffe.blas import BlasHold, available_cores, blas_kernel, limit_blas
from edgecaffe.measure import peak_rss_bytes, reset_peak_rss, rss_bytes
from edgecaffe.model.network import BlobRunner
from edgecaffe.model.package.package import ModelPackage


def sample_input(package: ModelPackage, image: np.ndarray | None = None) -> np.ndarray:
    """The built-in sample image (or `image`) preprocessed for the package, or seeded noise if
    the input is not an image."""
    from edgecaffe.model.preprocess import preprocess_for, sample_image

    shape = package.input_shape
    meta = package.meta
    channels = shape[3] if meta.get("layout") == "NHWC" and len(shape) == 4 else \
        (shape[1] if len(shape) == 4 else None)
    if channels in (1, 3):
        return preprocess_for(sample_image() if image is None else image, shape, meta)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _peak_above(baseline: int, work: Callable[[], Any]) -> int:
    reset_peak_rss()
    work()
    return max(0, peak_rss_bytes() - baseline)


def profile_package(
    package: ModelPackage, runs: int = 5, cold: bool = False,
    progress: Callable[[int], None] | None = None, backend: str = "numpy",
) -> dict[str, Any]:
    """Measure the package and record the figures in its manifest (not yet saved to disk).

    Per layer: median load ms (cold: page cache dropped before every load) and exec ms over
    `runs` layer-by-layer passes after one untimed warm-up pass. Per network: mean and median
    execution time (sum of layer exec times), the init time (preprocessing a decoded image and
    setting up the activations, what an engine's init task does), and the peak RSS above the
    idle process of a whole-model and of a layer-by-layer forward.

    What makes a profile trustworthy is recorded with it: the host, the BLAS kernel, the load
    average before and after, and the spread of the runs ((slowest - fastest) / median of the
    per-run totals); `summary["warnings"]` says when the spread or the machine's load make the
    figures doubtful (see `stale_reasons`). `backend`: the kernels measured (see `BlobRunner`),
    recorded in the summary.
    """
    from edgecaffe.model.preprocess import sample_image

    load_before = os.getloadavg()[0]
    image = sample_image()
    x = sample_input(package, image)
    package.forward(x, backend=backend)  # warm-up, untimed: page faults, allocator growth
    # Execution on all cores as an engine runs a network alone (products split by ops.gemm,
    # OpenBLAS on one thread), then on one thread (`_time_single_thread`).
    cores = available_cores()
    hold = BlasHold(cores, cores)
    hold.enter()
    try:
        timing = _time_layers(package, image, runs, cold, progress, backend)
    finally:
        hold.leave()
    single_ms = _time_single_thread(package, x, runs, backend)
    peak_layered, peak_whole = _peaks(package, x, backend)
    for entry, layer in zip(package.manifest["layers"], package.network.layers, strict=True):
        entry["profile"] = {
            "load_ms": _median(timing.load_ms[layer.name]),
            "exec_ms": _median(timing.exec_ms[layer.name]),
            "exec_ms_single_thread": _median(single_ms[layer.name]),
            "weight_bytes": layer.weight_bytes,
            "activation_bytes": entry["output_bytes"],
        }
    summary = {
        "runs": runs,
        "cold": cold,
        "mean_exec_ms": round(statistics.mean(timing.totals_ms), 3),
        "median_exec_ms": round(statistics.median(timing.totals_ms), 3),
        "init_ms": round(statistics.median(timing.init_ms), 4),
        "load_ms_total": round(sum(e["profile"]["load_ms"] for e in package.manifest["layers"]), 3),
        "peak_rss_whole_model_bytes": peak_whole,
        "peak_rss_layer_by_layer_bytes": peak_layered,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()}"
                   f" {platform.python_version()}",
        "host": platform.node(),
        "blas_threads": cores,
        "backend": backend,
        "blas": blas_kernel(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "spread": round(_spread(timing.totals_ms), 3),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    summary["warnings"] = _doubts(summary)
    package.manifest["profile"] = summary
    return summary


#: A profile whose runs spread more than this (relative) is doubtful; so is one taken with a
#: 1-minute load average above this share of the cores, or older than this many days.
MAX_SPREAD = 0.25
MAX_LOAD_PER_CORE = 0.75
MAX_AGE_DAYS = 30


def _spread(totals_ms: list[float]) -> float:
    median = statistics.median(totals_ms)
    return (max(totals_ms) - min(totals_ms)) / median if median > 0 else 0.0


def _doubts(summary: dict[str, Any]) -> list[str]:
    """Why the figures of a fresh profile may not be trusted (empty: no reason known)."""
    doubts = []
    if summary.get("spread", 0.0) > MAX_SPREAD:
        doubts.append(f"its {summary['runs']} runs spread {summary['spread']:.0%} around the "
                      f"median (more than {MAX_SPREAD:.0%}): profile again on a quieter "
                      "machine, or with more --runs")
    busiest = max(summary.get("load_average") or [0.0])
    cores = os.cpu_count() or 1
    if busiest > MAX_LOAD_PER_CORE * cores:
        doubts.append(f"the machine was busy (load average {busiest:.1f} on {cores} cores): "
                      "other work slowed the runs")
    return doubts


def stale_reasons(manifest: dict[str, Any], max_age_days: float = MAX_AGE_DAYS,
                  doubts: bool = True) -> list[str]:
    """Why a package's stored profile should be taken again: none taken, another host, older
    than `max_age_days`, or (with `doubts`) doubtful when taken (`summary["warnings"]`).
    Empty: fresh."""
    summary = manifest.get("profile")
    if not summary:
        return ["not profiled yet"]
    reasons = []
    if summary.get("host") != platform.node():
        reasons.append(f"profiled on another host ({summary.get('host', 'unknown')})")
    try:
        taken = datetime.datetime.fromisoformat(summary["date"])
        age_days = (datetime.datetime.now(datetime.UTC) - taken).total_seconds() / 86400
        if age_days > max_age_days:
            reasons.append(f"profiled {age_days:.0f} days ago")
    except (KeyError, TypeError, ValueError):
        reasons.append("the profile has no readable date")
    if doubts:
        reasons += summary.get("warnings") or []
    return reasons


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


@dataclass
class _LayerTimes:
    """Per run: the init's ms and the total exec ms; per layer, over runs: load and exec ms."""

    init_ms: list[float] = field(default_factory=list)
    totals_ms: list[float] = field(default_factory=list)
    load_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    exec_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def _time_layers(package: ModelPackage, image: Any, runs: int, cold: bool,
                 progress: Callable[[int], None] | None, backend: str) -> _LayerTimes:
    """`runs` layer-by-layer passes (init, then load, exec and free each layer), timed."""
    times = _LayerTimes()
    for run in range(runs):
        started = time.perf_counter()
        runner = BlobRunner(package.network, sample_input(package, image), backend=backend)
        times.init_ms.append((time.perf_counter() - started) * 1e3)
        total = 0.0
        for layer in runner.layers:
            started = time.perf_counter()
            # A backend's own weight layout is made at load, as the engine's load task does.
            weights = runner.prepare(layer, package.load(layer.name, cold=cold))
            loaded = time.perf_counter()
            runner.run(layer, weights)
            done = time.perf_counter()
            package.free(layer.name)
            if layer.params:
                times.load_ms[layer.name].append((loaded - started) * 1e3)
            times.exec_ms[layer.name].append((done - loaded) * 1e3)
            total += (done - loaded) * 1e3
        times.totals_ms.append(total)
        if progress is not None:
            progress(run + 1)
    return times


def _time_single_thread(package: ModelPackage, x: Any, runs: int,
                        backend: str) -> dict[str, list[float]]:
    """Execution again on one BLAS thread: an engine with several workers gives each a share
    of the cores, and the simulator picks the times that match."""
    single_ms: dict[str, list[float]] = defaultdict(list)
    with limit_blas(1):
        for _ in range(runs):
            runner = BlobRunner(package.network, x, backend=backend)
            for layer in runner.layers:
                weights = runner.prepare(layer, package.load(layer.name))
                started = time.perf_counter()
                runner.run(layer, weights)
                single_ms[layer.name].append((time.perf_counter() - started) * 1e3)
                package.free(layer.name)
    return single_ms


def _peaks(package: ModelPackage, x: Any, backend: str) -> tuple[int, int]:
    """Peak RSS above the idle process: (layer by layer, whole model)."""
    baseline = rss_bytes()
    peak_layered = _peak_above(baseline, lambda: package.forward(x, backend=backend))

    def whole_model() -> None:
        package.load_all().forward(x, backend=backend)

    peak_whole = _peak_above(baseline, whole_model)
    for layer in package.network.layers:
        package.free(layer.name)
    package.network.weights = {}
    return peak_layered, peak_whole


def plot_profile(package: ModelPackage, path: str) -> None:
    """Per-layer load vs execution time as grouped bars (needs matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'edgecaffe[plot]'") from None
    entries = [e for e in package.manifest["layers"] if "profile" in e and e["op"] != "Input"]
    names = [e["name"] for e in entries]
    index = np.arange(len(entries))
    figure, axis = plt.subplots(figsize=(max(6, 0.28 * len(entries) + 2), 4.5))
    axis.bar(index - 0.2, [e["profile"]["load_ms"] for e in entries], 0.4, label="load")
    axis.bar(index + 0.2, [e["profile"]["exec_ms"] for e in entries], 0.4, label="execute")
    cold = "cold" if package.manifest["profile"]["cold"] else "warm"
    axis.set_title(f"{package.name}: per-layer load ({cold} cache) and execution time")
    axis.set_ylabel("ms (median)")
    axis.set_xticks(index, names, rotation=90, fontsize=7)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
