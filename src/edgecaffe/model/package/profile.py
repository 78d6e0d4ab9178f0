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
from collections.abc import Callable
from typing import Any

import numpy as np

from edgecaffe.blas import blas_thread_count, limit_blas
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
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure the package and record the figures in its manifest (not yet saved to disk).

    Per layer: median load ms (cold: page cache dropped before every load) and exec ms over
    `runs` layer-by-layer passes after one untimed warm-up pass. Per network: mean execution
    time (sum of layer exec times), the init time (preprocessing a decoded image and setting up
    the activations, what an engine's init task does), and the peak RSS above the idle process
    of a whole-model and of a layer-by-layer forward.
    """
    from edgecaffe.model.preprocess import sample_image

    network = package.network
    image = sample_image()
    x = sample_input(package, image)
    init_ms = []
    load_ms: dict[str, list[float]] = {layer.name: [] for layer in network.layers}
    exec_ms: dict[str, list[float]] = {layer.name: [] for layer in network.layers}
    totals_ms = []
    package.forward(x)  # warm-up, not timed: first-touch page faults and allocator growth
    for run in range(runs):
        started = time.perf_counter()
        runner = BlobRunner(network, sample_input(package, image))
        init_ms.append((time.perf_counter() - started) * 1e3)
        total = 0.0
        for layer in runner.layers:
            started = time.perf_counter()
            weights = package.load(layer.name, cold=cold)
            loaded = time.perf_counter()
            runner.run(layer, weights)
            done = time.perf_counter()
            package.free(layer.name)
            if layer.params:
                load_ms[layer.name].append((loaded - started) * 1e3)
            exec_ms[layer.name].append((done - loaded) * 1e3)
            total += (done - loaded) * 1e3
        totals_ms.append(total)
        if progress is not None:
            progress(run + 1)

    # Execution again on one BLAS thread: an engine with several workers gives each a share of
    # the cores, and the simulator picks the times that match.
    single_ms: dict[str, list[float]] = {layer.name: [] for layer in network.layers}
    with limit_blas(1):
        for _ in range(runs):
            runner = BlobRunner(network, x)
            for layer in runner.layers:
                weights = package.load(layer.name)
                started = time.perf_counter()
                runner.run(layer, weights)
                single_ms[layer.name].append((time.perf_counter() - started) * 1e3)
                package.free(layer.name)

    baseline = rss_bytes()
    peak_layered = _peak_above(baseline, lambda: package.forward(x))

    def whole_model() -> None:
        package.load_all().forward(x)

    peak_whole = _peak_above(baseline, whole_model)
    for layer in network.layers:
        package.free(layer.name)
    network.weights = {}

    for entry, layer in zip(package.manifest["layers"], network.layers, strict=True):
        entry["profile"] = {
            "load_ms": round(statistics.median(load_ms[layer.name]), 4) if load_ms[layer.name]
            else 0.0,
            "exec_ms": round(statistics.median(exec_ms[layer.name]), 4)
            if exec_ms[layer.name] else 0.0,
            "exec_ms_single_thread": round(statistics.median(single_ms[layer.name]), 4)
            if single_ms[layer.name] else 0.0,
            "weight_bytes": layer.weight_bytes,
            "activation_bytes": entry["output_bytes"],
        }
    summary = {
        "runs": runs,
        "cold": cold,
        "mean_exec_ms": round(statistics.mean(totals_ms), 3),
        "median_exec_ms": round(statistics.median(totals_ms), 3),
        "init_ms": round(statistics.median(init_ms), 4),
        "load_ms_total": round(sum(e["profile"]["load_ms"] for e in package.manifest["layers"]), 3),
        "peak_rss_whole_model_bytes": peak_whole,
        "peak_rss_layer_by_layer_bytes": peak_layered,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()}"
                   f" {platform.python_version()}",
        "blas_threads": blas_thread_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    package.manifest["profile"] = summary
    return summary


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
