"""The engine: dispatch latency, and the original's README example under every mode and budget.

1. Dispatch latency (a task's last dependency finished -> the task started), median and p99,
   in linear mode (one worker, a chain) and masa (2 workers, where it includes queueing behind
   busy workers); and the worker turnaround (a task ended -> its worker started the next, already
   ready task), the scheduling overhead alone.
2. One batch of {GenderNet, FaceNet, AgeNet} from the zoo, 2 workers, every mode, layer-level
   budget 512M / 1G / 2G: per-network and mean response times (median over repetitions).

The original EdgeCaffe on this kind of machine (shared/reference/original-measurements.md),
without a memory limit, for its own versions of that batch (GenderNet at batch 10, FaceNet on a
1340 px image): mean response masa ~1.0 s, bulk ~1.7 s, deepeye ~1.8 s, linear ~1.5 s. Ours runs
the zoo defaults (batch 1, 227 px), so compare the ordering of modes, not absolute times.

    python benchmarks/engine.py [--repeat 5] [--budgets 512M,1G,2G] [--modes masa,bulk,...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

NETWORKS = ["GenderNet", "FaceNet", "AgeNet"]


def dispatch(packages: dict, mode: str, workers: int, requests: int) -> tuple[list, list]:
    """Dispatch latencies (a task's last dependency ended -> the task started; with busy
    workers this includes queueing), and worker turnarounds (a worker ended a task -> it started
    its next one, which was already ready: the scheduling overhead alone)."""
    from edgecaffe.engine import Engine
    from edgecaffe.model.preprocess import sample_image

    with Engine(packages, mode=mode, budget="2G", workers=workers) as engine:
        for _ in range(requests):
            engine.submit(sample_image(), ["AgeNet"]).result()
    trace = engine.trace
    turnarounds = []
    for worker in range(workers):
        ran = sorted((t for t in trace.tasks if t.worker == worker), key=lambda t: t.start_s)
        for previous, task in itertools.pairwise(ran):
            if task.ready_s <= previous.end_s:
                turnarounds.append(task.start_s - previous.end_s)
    return trace.dispatch_latencies_s(), turnarounds


def _median_p99(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return (f"median {statistics.median(values) * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us "
            f"over {len(values)}")


def batch(packages: dict, mode: str, budget: str, repeat: int) -> dict[str, float]:
    from edgecaffe.engine import Engine
    from edgecaffe.model.preprocess import sample_image

    per_network: dict[str, list[float]] = {name: [] for name in NETWORKS}
    for _ in range(repeat):
        with Engine(packages, mode=mode, budget=budget, granularity="layer",
                    workers=2) as engine:
            engine.submit(sample_image(), NETWORKS).result()
        request = engine.trace.requests[0]
        for name, (_, end) in request.network_spans.items():
            per_network[name].append((end - request.arrival_s) * 1e3)
    medians = {name: statistics.median(times) for name, times in per_network.items()}
    medians["mean"] = statistics.mean(medians[name] for name in NETWORKS)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budgets", default="512M,1G,2G")
    parser.add_argument("--modes", default="masa,bulk,linear,deepeye,deepeye-frugal,partial,"
                        "execprio,execprio-inter,multi-bulk")
    args = parser.parse_args()
    from edgecaffe.model.zoo import zoo_package

    packages = {name: zoo_package(name, profile_runs=3) for name in NETWORKS}
    for mode, workers in (("linear", 1), ("masa", 2)):
        latencies, turnarounds = dispatch(packages, mode, workers, requests=20)
        print(f"{mode} ({workers} worker{'s' * (workers > 1)}), goal < 100 us: dependency end -> "
              f"start {_median_p99(latencies)}; worker turnaround {_median_p99(turnarounds)}")
    print()
    print(f"one batch of {', '.join(NETWORKS)}; response ms, median of {args.repeat}")
    header = f"{'budget':<7} {'mode':<15}" + "".join(f"{n:>11}" for n in NETWORKS) + f"{'mean':>9}"
    print(header)
    for budget in args.budgets.split(","):
        for mode in args.modes.split(","):
            result = batch(packages, mode, budget, args.repeat)
            print(f"{budget:<7} {mode:<15}" + "".join(f"{result[n]:>11.0f}" for n in NETWORKS)
                  + f"{result['mean']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
