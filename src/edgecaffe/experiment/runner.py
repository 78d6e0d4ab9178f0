"""Run one configuration: an engine, a workload in real time, RSS sampled, results written."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgecaffe.engine import Engine
from edgecaffe.experiment.results import write_run
from edgecaffe.measure import rss_bytes
from edgecaffe.workload import Arrival, drive

#: Set to "1" in the environment of a run inside an `--enforce-memory` cgroup.
ENFORCED_ENV = "EDGECAFFE_ENFORCED_LIMIT"

def _input_loader():
    from edgecaffe.model.preprocess import load_image, sample_image

    cache: dict[str | None, Any] = {}

    def load(path: str | None):
        if path not in cache:
            cache[path] = sample_image() if path is None else load_image(path)
        return cache[path]

    return load


def run_once(
    packages: Mapping[str, Any],
    arrivals: Sequence[Arrival],
    *,
    mode: str,
    budget: str | int,
    policy: str | None = None,
    granularity: str = "layer",
    workers: int = 2,
    blas_threads: int | str | None = None,
    closed_loop: bool = True,
    output: str | Path | None = None,
    rss_interval_s: float = 0.01,
    config: dict[str, Any] | None = None,
    on_done: Callable[[], None] | None = None,
    backend: str = "numpy",
    context: str = "aware",
    keep_weights: bool = False,
) -> tuple[dict[str, Any], Engine]:
    """Run `arrivals` on a fresh engine; write the results folder when `output` is given.
    `backend`: the engine's kernels ("numpy" or "onnxruntime"); `context`: the context policy
    for the arrivals' gated networks (their drawn detection counts decide the conditions);
    `keep_weights`: the engine's option (freed weights stay while the budget has room).
    Inside a memory cgroup set up by `--enforce-memory` (the environment says so:
    `ENFORCED_ENV`), the budget is the cgroup's limit and the engine accounts its own runtime
    (`Engine(account_runtime=True)`): the ledger's capacity is the limit less the runtime,
    printed and recorded."""
    enforced = os.environ.get(ENFORCED_ENV) == "1"
    engine = Engine(packages, mode=mode, policy=policy, budget=budget, granularity=granularity,
                    workers=workers, blas_threads=blas_threads, backend=backend,
                    context=context, account_runtime=enforced, keep_weights=keep_weights)
    if engine.runtime_bytes is not None:
        limit = engine.budget.capacity_bytes + engine.runtime_bytes
        print(f"  ledger capacity {engine.budget.capacity_bytes / 2**20:.0f} MiB = limit "
              f"{limit / 2**20:.0f} MiB - runtime {engine.runtime_bytes / 2**20:.0f} MiB "
              f"(measured at engine start); each exec reserves its workspace while it runs",
              flush=True)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((engine.now(), rss_bytes()))
            done.wait(rss_interval_s)

    sampler = threading.Thread(target=sample, name="edgecaffe-rss", daemon=True)
    sampler.start()
    try:
        def submitted(arrival: Arrival, future: Future) -> None:
            if on_done is not None:
                future.add_done_callback(lambda _: on_done())

        futures = drive(engine.submit, arrivals, closed_loop, _input_loader(),
                        on_submit=submitted)
        wait(futures)  # completed or failed: the trace has both
    except BaseException:  # Ctrl-C or an error: cancel what has not run, then stop
        engine.close(cancel=True)
        raise
    finally:
        engine.close()
        done.set()
        sampler.join()
    networks = {name: str(p.directory) for name, p in engine.packages.items()}
    totals = {name: list(isolated_totals_ms(info)) for name, info in engine.infos.items()}
    extra = {} if engine.runtime_bytes is None else {
        key: engine.trace.info[key] for key in ("runtime_bytes", "workspace_bytes", "limit_bytes")}
    summary = _results(engine, arrivals, closed_loop, output, config, samples, networks, totals,
                       backend=backend, **extra)
    return summary, engine


def _results(driver: Any, arrivals: Sequence[Arrival], closed_loop: bool,
             output: str | Path | None, config: dict[str, Any] | None,
             samples: list[tuple[float, int]] | None, networks: dict[str, str],
             totals: dict[str, list[float]], **extra: Any) -> dict[str, Any]:
    """The run's resolved settings and its summary, written as a results folder when `output`
    is given; the same for the engine and the simulator (`driver`)."""
    record_tasks = driver.book.record_tasks
    resolved = {
        "mode": driver.mode.name, "policy": driver.policy.name,
        "budget_bytes": driver.budget.capacity_bytes,
        "granularity": driver.scheduler.granularity, "context": driver.core.context,
        "workers": driver.workers,
        "blas_threads": driver.blas_threads, "closed_loop": closed_loop, **extra,
        "networks": networks, "network_totals_ms": totals,
        "arrivals": [{"gap_ms": a.gap_ms, "networks": list(a.networks), "data": a.data,
                      **({"gated": dict(a.gated), "detections": a.detections} if a.gated
                         else {})}
                     for a in arrivals] if record_tasks else len(arrivals),
    }
    # The run's resolved values (the mode's own policy, the packages' folders) win over the
    # config's unresolved ones (policy: None, network names).
    resolved = {**(config or {}), **resolved}
    if output is not None:
        return write_run(output, driver.trace, resolved, samples)
    from edgecaffe.experiment.results import summarize

    return summarize(driver.trace, samples)


def isolated_totals_ms(info, device=None, threads: int | None = None) -> tuple[float, float]:
    """(total load ms, total exec ms) of one network run alone: the terms of the lower bound
    in reports. A simulated run's are the device's durations, whatever they came from; a real
    run's are the profiled times (NaN where a layer was not profiled)."""
    from edgecaffe.sim import DeviceError, DeviceProfile

    if device is None and any(layer.exec_ms is None or (layer.weighted and layer.load_ms is None)
                              for layer in info.layers):
        return math.nan, math.nan
    device = device or DeviceProfile()
    names = [layer.name for layer in info.layers]
    try:
        load = device.load_ms(info, names)
    except DeviceError:  # a simulation would have stopped on it too
        load = math.nan
    return load, device.exec_ms(info, names, threads)


def service_ms(names: Sequence[str], infos: Mapping[str, Any], device=None,
               threads: int | None = None) -> float:
    """A request's service time in ms: every load and execution of the networks `names`, each
    run alone (`isolated_totals_ms`), summed. A `multiplier` scales the mean arrival gap by it,
    so that the gap and the offered load (rho) speak of the same work: on a device with slow
    storage the loads are most of it. NaN when a time is unknown (unprofiled package)."""
    return sum(sum(isolated_totals_ms(infos[name], device, threads))
               for name in names if name in infos)


def simulate_once(
    infos: Mapping[str, Any],
    arrivals: Sequence[Arrival],
    *,
    mode: str,
    budget: str | int,
    policy: str | None = None,
    granularity: str = "layer",
    workers: int = 2,
    device=None,
    blas_threads: int | str | None = None,
    closed_loop: bool = True,
    output: str | Path | None = None,
    config: dict[str, Any] | None = None,
    on_done: Callable[[], None] | None = None,
    record_tasks: bool = True,
    context: str = "aware",
    keep_weights: bool = False,
) -> tuple[dict[str, Any], Any]:
    """The simulated counterpart of `run_once`: same arguments, same results folder (without
    RSS samples: nothing runs)."""
    from edgecaffe.sim import Simulator

    simulator = Simulator(infos, mode=mode, policy=policy, budget=budget,
                          granularity=granularity, workers=workers, device=device,
                          blas_threads=blas_threads, record_tasks=record_tasks,
                          record_ledger=record_tasks, context=context,
                          keep_weights=keep_weights)
    trace = simulator.run(arrivals, closed_loop,
                          on_done=None if on_done is None else lambda _: on_done())
    trace.info["peak_ledger_bytes"] = simulator.budget.peak_bytes
    networks = {name: info.meta.get("package") or info.meta.get("generated") or name
                for name, info in infos.items()}
    totals = {name: list(isolated_totals_ms(info, simulator.device, simulator.blas_threads))
              for name, info in infos.items()}
    summary = _results(simulator, arrivals, closed_loop, output, config, None, networks,
                       totals, simulated=True, device=asdict(simulator.device))
    return summary, simulator


def run_entry(name: str, config, arrivals: Sequence[Arrival], closed_loop: bool,
              networks: Mapping[str, Any], folder: str | Path, *, simulate: bool = False,
              device=None, on_done: Callable[[], None] | None = None,
              backend: str = "numpy") -> dict[str, Any]:
    """Run ONE entry of a matrix (`name`, its resolved ExperimentConfig, arrivals, and model
    packages, or NetworkInfos when `simulate`) and write its results folder `folder`, ending
    with the completeness marker (`results.mark_complete`). Returns the run's summary. The
    unit both the local loop and cluster workers run. `backend`: the kernels of a real run."""
    from edgecaffe.experiment.results import mark_complete

    common = dict(mode=config.mode, budget=config.mem_limit, policy=config.policy,
                  granularity=config.granularity, workers=config.workers,
                  blas_threads=config.blas_threads, closed_loop=closed_loop, output=folder,
                  config=config.to_dict(), on_done=on_done, context=config.context,
                  keep_weights=config.keep_weights)
    if simulate:
        summary, _ = simulate_once(networks, arrivals, device=device, **common)
    else:
        summary, _ = run_once(networks, arrivals, backend=backend, **common)
    mark_complete(folder, name)
    return summary
