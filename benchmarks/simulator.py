"""The simulator against the real engine, at scale, and against optimal schedules.

    python benchmarks/simulator.py [--batches 5] [--repeats 3] [--arrivals 100000]
                                   [--skip fidelity,scale,optimal] [--baseline REV]

1. Fidelity: mixed-3 (FaceNet, AgeNet, EmotionNet; zoo, batch 1), closed-loop batches at 512M,
   per mode: the real engine's mean response per network (median over repeats) next to the
   simulator's on the same packages, profiled first on this machine (`edgecaffe profile`).
2. Scale: Poisson arrivals, each of one network drawn from all ten, masa at 1G; simulated
   arrivals per second of wall time, one core. With `--baseline REV` the same simulation also
   runs on git revision REV's code (extracted to a temporary folder), interleaved, and the
   ratio of CPU times (this tree / REV) is printed.
3. Optimality: small instances (up to 3 networks, ~40 tasks), the exact CP-SAT optimum of the
   mean response per network vs each mode/policy simulated on the same integer durations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODES = ["masa", "bulk", "linear", "partial", "execprio", "deepeye", "deepeye-frugal",
         "multi-bulk"]
MIXED_3 = ["FaceNet", "AgeNet", "EmotionNet"]


def mean_network_response_ms(trace) -> float:
    from edgecaffe.experiment.results import summarize

    return summarize(trace)["mean_network_response_ms"]


def fidelity(batches: int, repeats: int, budget: str) -> None:
    from edgecaffe.engine import Engine
    from edgecaffe.model.info import package_info
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.profile import profile_package
    from edgecaffe.model.preprocess import sample_image
    from edgecaffe.model.zoo import zoo_package
    from edgecaffe.sim import DeviceProfile, Simulator
    from edgecaffe.sim.device import measure_parallelism
    from edgecaffe.workload import batches as batch_arrivals
    from edgecaffe.workload import drive

    with tempfile.TemporaryDirectory() as folder:
        packages = {}
        for name in MIXED_3:
            shutil.copytree(zoo_package(name).directory, Path(folder) / name)
            packages[name] = open_package(Path(folder) / name)
        image = sample_image()
        arrivals = batch_arrivals(MIXED_3, batches)
        print(f"\nFidelity: mixed-3, {batches} closed-loop batches at {budget}, mean response "
              f"per network in ms. {repeats} rounds; each profiles the packages and measures the "
              "parallelism afresh, then runs every mode on the engine and in the simulator "
              "(this machine's speed drifts: a profile only speaks for its own minutes). "
              "Medians over rounds; sim/real is the median of the rounds' ratios.")
        rows: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
        measured = []
        for _ in range(repeats):
            for package in packages.values():
                profile_package(package, runs=5)
                package.save_manifest()
            infos = {n: package_info(p) for n, p in packages.items()}
            measured.append(measure_parallelism())
            shared = DeviceProfile("host-measured", parallelism=measured[-1])
            for mode in MODES:
                with Engine(packages, mode=mode, budget=budget) as engine:
                    for future in drive(engine.submit, arrivals, True, lambda _: image):
                        future.result()
                real = mean_network_response_ms(engine.trace)
                free = mean_network_response_ms(
                    Simulator(infos, mode=mode, budget=budget).run(arrivals, closed_loop=True))
                sharing = mean_network_response_ms(
                    Simulator(infos, mode=mode, budget=budget, device=shared).run(
                        arrivals, closed_loop=True))
                rows[mode].append((real, free, sharing))
        print(f"measured parallelism (edgecaffe device): {', '.join(map(str, measured))}")
        print(f"{'mode':<16}{'real':>9}{'sim':>9}{'sim/real':>10}{'sim shared':>12}"
              f"{'sim/real':>10}")
        for mode, values in rows.items():
            real, free, sharing = (statistics.median(column) for column in zip(*values,
                                                                                strict=True))
            free_ratio = statistics.median(f / r for r, f, _ in values)
            shared_ratio = statistics.median(s / r for r, _, s in values)
            print(f"{mode:<16}{real:>9.1f}{free:>9.1f}{free_ratio:>10.2f}{sharing:>12.1f}"
                  f"{shared_ratio:>10.2f}")


def scale(count: int, profile: bool = False, quiet: bool = False) -> float | None:
    import numpy as np

    from edgecaffe.model.caffe.importer import load_caffe
    from edgecaffe.model.zoo import ZOO
    from edgecaffe.sim import DEVICES, Simulator
    from edgecaffe.workload import Arrival

    try:
        from edgecaffe.model.info import network_info
    except ImportError:  # a baseline revision from before the adapter module
        from edgecaffe.sched import NetworkInfo

        network_info = NetworkInfo.from_network

    names = [name for name, model in ZOO.items() if not model.tiny]
    # Durations from the rpi4-sd device profile: per-layer FLOPs at its GFLOP/s and loads at
    # SD-card speed, so this part needs no profiling and no weights.
    infos = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            path = Path(folder) / f"{name}.prototxt"
            path.write_text(ZOO[name].prototxt())
            infos[name] = network_info(
                load_caffe(path, name=name), mean_exec_ms=ZOO[name].original_mean_exec_ms)
    device = DEVICES["rpi4-sd"]
    rng = np.random.default_rng(0)
    # A network's work: its loads and executions, on 2 workers; arrivals at ~80% of that.
    service_ms = statistics.mean(
        sum(device.layer_exec_ms(info, layer.name) for layer in info.layers)
        + sum(device.layer_load_ms(info, layer.name) for layer in info.layers if layer.weighted)
        for info in infos.values())
    gaps = rng.exponential(service_ms / 2 / 0.8, count)
    gaps[0] = 0.0
    picks = rng.integers(0, len(names), count)
    arrivals = [Arrival(i, float(gap), (names[pick],))
                for i, (gap, pick) in enumerate(zip(gaps, picks, strict=True))]
    simulator = Simulator(infos, mode="masa", budget="1G", device=device, record_tasks=False,
                          record_ledger=False)
    started = time.process_time()
    wall = time.perf_counter()
    if profile:
        import cProfile

        cProfile.runctx("simulator.run(arrivals, closed_loop=False)", globals(), locals(),
                        sort="tottime")
        return
    trace = simulator.run(arrivals, closed_loop=False)
    cpu_s = time.process_time() - started
    wall_s = time.perf_counter() - wall
    if quiet:
        print(f"cpu_s={cpu_s}")
        return cpu_s
    done = sum(r.status == "completed" for r in trace.requests.values())
    print(f"\nScale: {count} Poisson arrivals over {len(names)} networks (masa, 1G, rpi4-sd): "
          f"{wall_s:.1f} s wall, {cpu_s:.1f} s CPU, {count / wall_s:,.0f} arrivals/s; "
          f"{done} completed, simulated span {simulator.now / 3600:.1f} h, mean response "
          f"{mean_network_response_ms(trace) / 1e3:.1f} s")


def scale_against(count: int, revision: str, rounds: int = 3) -> None:
    """CPU time of the scale simulation on this tree and on git `revision`, interleaved."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "-C", str(root), "archive", revision, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        for _ in range(rounds):
            for source, times in ((root / "src", ours), (Path(folder) / "src", theirs)):
                env = {**os.environ, "PYTHONPATH": str(source)}
                out = subprocess.run(
                    [sys.executable, __file__, "--skip", "fidelity,optimal", "--scale-quiet",
                     "--arrivals", str(count)], env=env, check=True, capture_output=True,
                    text=True).stdout
                times.append(float(out.split("cpu_s=")[1].split()[0]))
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"\nScale, {count} arrivals, CPU s over {rounds} interleaved rounds: this tree "
          f"{', '.join(f'{t:.1f}' for t in ours)}; {revision} "
          f"{', '.join(f'{t:.1f}' for t in theirs)}; ratio of medians {ratio:.2f}")


def random_instance(seed: int):
    """2-3 generated networks of 3-5 layers, durations 1-30 ms, weights 5-60 MiB; the budget
    between 1.1x the largest single need and all the weights."""
    import numpy as np

    from edgecaffe.sched import LayerInfo, NetworkInfo

    rng = np.random.default_rng(seed)
    infos = []
    for index in range(int(rng.integers(2, 4))):
        layers, buffers, previous = [], {"data": 2**20}, "data"
        for layer in range(int(rng.integers(3, 6))):
            name = f"n{index}l{layer}"
            buffers[name] = 2**20
            layers.append(LayerInfo(name, "Generated", int(rng.integers(5, 61)) * 2**20, 2**20,
                                    (previous,), (name,), load_ms=float(rng.integers(1, 31)),
                                    exec_ms=float(rng.integers(1, 31)), has_weights=True))
            previous = name
        info = NetworkInfo(f"N{index}", layers, ("data",), 2**20, frozenset({previous}),
                           buffers, mean_exec_ms=sum(layer.exec_ms for layer in layers),
                           init_ms=1.0)
        infos.append(info)
    biggest = max(layer.weight_bytes for info in infos for layer in info.layers)
    total = sum(info.weight_bytes for info in infos)
    budget = int(biggest * 1.1 + 4 * 2**20 + rng.random() * (total - biggest))
    return [(0.0, infos)], budget, int(rng.integers(1, 3))


def optimality(instances: int, time_limit_s: float) -> None:
    from edgecaffe.optimal import build_instance, check_schedule, solve
    from edgecaffe.optimal.compare import DEFAULT_CANDIDATES, simulate_candidates
    from edgecaffe.optimal.instance import profiled_ms

    print(f"\nOptimality: {instances} random instances (2-3 generated networks, 3-5 layers, one "
          "batch, budget between the largest layer and all weights), CP-SAT optimum of the mean "
          "response per network vs each policy simulated on the same durations")
    gaps: dict[str, list[float]] = {label: [] for label in DEFAULT_CANDIDATES}
    solve_s = []
    for seed in range(instances):
        requests, budget, workers = random_instance(seed)
        instance = build_instance(requests, budget, workers, profiled_ms, unit_ms=1.0)
        schedule = solve(instance, time_limit_s=time_limit_s)
        assert schedule.optimal, f"instance {seed}: not proven optimal in {time_limit_s} s"
        problems = check_schedule(requests, budget, workers, instance.durations,
                                  schedule.table(), 1.0)
        assert not problems, problems
        solve_s.append(schedule.solve_time_s)
        for result in simulate_candidates(requests, instance, schedule.objective_ms, profiled_ms):
            gaps[result.label].append(result.gap)
        print(f"  instance {seed}: {len(instance.tasks)} tasks, {workers} worker(s), budget "
              f"{budget / 2**20:.0f} MiB: optimum {schedule.objective_ms:.1f} ms "
              f"({schedule.solve_time_s:.2f} s), checked", flush=True)
    print(f"solve time median {statistics.median(solve_s):.2f} s, max {max(solve_s):.2f} s")
    print(f"{'mode/policy':<18}{'mean gap':>10}{'median':>9}{'max':>9}{'optimal in':>12}")
    for label, values in gaps.items():
        hits = sum(gap < 1e-9 for gap in values)
        print(f"{label:<18}{statistics.mean(values):>10.1%}{statistics.median(values):>9.1%}"
              f"{max(values):>9.1%}{hits:>8}/{len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", default="512M")
    parser.add_argument("--arrivals", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the scale run")
    parser.add_argument("--instances", type=int, default=20, help="random optimality instances")
    parser.add_argument("--time-limit", type=float, default=60.0, help="solver limit (s)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the scale part on git revision REV; print the ratio")
    parser.add_argument("--scale-quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if args.scale_quiet:
        scale(args.arrivals, quiet=True)
        return
    print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}")
    if "fidelity" not in skip:
        fidelity(args.batches, args.repeats, args.budget)
    if "scale" not in skip:
        if args.baseline:
            scale_against(args.arrivals, args.baseline)
        else:
            scale(args.arrivals, args.profile)
    if "optimal" not in skip:
        optimality(args.instances, args.time_limit)


if __name__ == "__main__":
    main()
