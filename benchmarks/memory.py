"""Memory truth: does the budget hold in real memory? (issue 13)

    sudo python benchmarks/memory.py [--batches 3] [--modes masa,bulk,linear] [--skip-vgg]
                                     [--swap 4G] [--backend numpy|onnxruntime]

On the large-3 set (ObjectNet = VGG-19, EmotionNet, MemNet at batch 10; zoo networks, seeded
synthetic weights), closed-loop batch arrivals, 2 workers, cold loads (each weight file's
pages dropped before it is read), per mode:
* inside a 512 MiB memory cgroup with no swap (memsw limit = the limit) and inside an
  unlimited one (to measure its usage), same packages, same arrivals: completed?, mean
  response ratio limited / unlimited, the cgroup's peak usage against the limit, OOM kills,
  system swap-ins during the run, reservations forced over the ledger's capacity;
* what the run accounts for (what the ledger holds: weights, activations and the workspaces
  of the execs running, each reserved by its exec while it runs; plus the runtime measured
  at engine start with its growth allowance) against the cgroup's usage, sampled every 20
  ms, the ledger read just before and just after the usage: the largest gap each way (usage
  above the accounted figure: under-counting; below: memory accounted and not in use, e.g.
  a load's bytes reserved as it starts and read in while it runs) and the larger as a share
  of the limit, with what ran at the worst over-counted sample;
* a mode that cannot keep to the limit (the simulator, the same scheduler core and
  accounting, forces reservations over the ledger's capacity: bulk holds a whole model's
  weights) is reported as needing swap and run only with `--swap SIZE` (a swap file and the
  cgroup's memsw limit raised by that much);
then VGG-19 at batch 1 inside a 128 MiB cgroup with no swap: completed?, forced?, output
bit-exact against the unsplit package forward (run outside the limit)?

Packages are blocked by the engine's automatic rule for the ledger's capacity
(`engine.blocked_packages`, estimated with `RUNTIME_ESTIMATE_BYTES`), derived here outside the
limit. Also measures load methods (mmap vs read, cold and warm) over ObjectNet's weight files.
Prints the load average: the machine may be shared. Needs root for the cgroups; without it
only the load-method figures are printed. `EDGECAFFE_MEMORY_SAMPLES=FILE` appends every
sample (with the cgroup's anonymous and page-cache parts and the ledger's) to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SET = ("ObjectNet", "EmotionNet", "MemNet")
#: The engine's kernels in every run (`--backend`).
BACKEND = "numpy"


def _packages(names, limit_bytes, batches=None):
    """Zoo packages (profiled: masa orders by profiled times), `batches`: name -> input batch
    (MemNet at 10, as the original's large-3 set), blocked as the engine's automatic rule
    does for the ledger capacity under `limit_bytes` (derived here, outside the limit; the
    child's engine finds the same copies)."""
    from edgecaffe.engine.limit import RUNTIME_ESTIMATE_BYTES, blocked_packages
    from edgecaffe.model.zoo import zoo_package

    whole = {name: zoo_package(name, batch=(batches or {}).get(name, 1), profile_runs=3)
             for name in names}
    return blocked_packages(whole, limit_bytes - RUNTIME_ESTIMATE_BYTES)


def needs_more(packages, mode: str, limit_bytes: int, batches: int) -> int:
    """Reservations the progress rule would force over the ledger's capacity (estimated:
    the limit less `RUNTIME_ESTIMATE_BYTES`) for this workload, by the simulator (the same
    scheduler core and accounting as the engine, exec workspaces included)."""
    from edgecaffe.engine.limit import RUNTIME_ESTIMATE_BYTES
    from edgecaffe.model.info import package_info
    from edgecaffe.sim import Simulator, load_device
    from edgecaffe.workload import batches as batch_arrivals

    infos = {name: package_info(p) for name, p in packages.items()}
    # Durations from a device profile (blocked copies have no profiled times of their own):
    # what is forced depends on memory, not on the clock.
    simulator = Simulator(infos, mode, budget=limit_bytes - RUNTIME_ESTIMATE_BYTES, workers=2,
                          device=load_device("rpi4-sd"), workspaces=True)
    trace = simulator.run(batch_arrivals(list(packages), batches), closed_loop=True)
    return len(trace.forced_events)


# -- the child: one run inside a cgroup ------------------------------------------------------

def child(spec: dict) -> dict:
    """Run the spec's arrivals on an engine, sampling the ledger and the cgroup's usage."""
    import numpy as np

    from edgecaffe.engine import Engine
    from edgecaffe.model.package import open_package

    packages = {name: open_package(path) for name, path in spec["packages"].items()}
    usage_file = Path(spec["usage_file"]) if spec.get("usage_file") else None
    engine = Engine(packages, mode=spec["mode"], budget=spec["limit_bytes"], workers=2,
                    backend=spec.get("backend", "numpy"),
                    cold_loads=True, account_runtime=True,
                    allow_overcommit=spec.get("allow_overcommit", True))
    samples: list[tuple[int, int]] = []
    windows: list[tuple[float, int | None]] = []  # (end, the cgroup's peak in it)
    done = threading.Event()

    scheduler = engine.scheduler
    detail = bool(os.environ.get("EDGECAFFE_MEMORY_SAMPLES"))

    peaks = _PeakWindow(usage_file) if usage_file is not None else None

    def sample() -> None:
        while not done.is_set():
            if usage_file is not None:
                # What the run accounts for at this moment: what the ledger holds (weights,
                # activations, and the workspaces of the execs running now, each reserved
                # by its exec while it runs) and the runtime measured at engine start. The
                # ledger is read before and after the usage (on a loaded machine this thread
                # may wait between reads): usage above both is under-accounting, below both
                # over-accounting.
                before = engine.budget.ledger_bytes
                usage = int(usage_file.read_text())
                after = engine.budget.ledger_bytes
                accounted = (min(before, after) + engine.runtime_bytes,
                             max(before, after) + engine.runtime_bytes)
                running = sorted(f"{t.label} of {t.instance.name}" for t in
                                 list(scheduler.running))
                if detail:  # the cgroup's anonymous and page-cache parts, the ledger's
                    running.append(_detail(usage_file, scheduler))
                samples.append((accounted, usage, engine.now(), running))
                windows.append((engine.now(), peaks.take()))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    responses, outputs = [], {}
    try:
        for _ in range(spec["batches"]):  # closed loop: the next batch when this one is done
            result = engine.submit(image, spec["networks"]).result()
            responses.append(result.response_ms)
            outputs = {f"{n}/{b}": a for n, blobs in result.items() for b, a in blobs.items()}
    finally:
        engine.close()
        done.set()
        sampler.join()
    if peaks is not None:
        windows.append((engine.now(), peaks.take()))  # the tail, up to the engine's close
    window_gaps = _window_gaps(windows, engine.budget.events, engine.runtime_bytes)
    if spec.get("outputs_file"):
        np.savez(spec["outputs_file"], **outputs)
    if os.environ.get("EDGECAFFE_MEMORY_SAMPLES"):  # every sample, for a closer look
        with open(os.environ["EDGECAFFE_MEMORY_SAMPLES"], "a") as out:
            out.write(json.dumps({"mode": spec["mode"], "limit": spec["limit_bytes"],
                                  "samples": samples,
                                  "window_gaps": window_gaps.pop("all", [])}) + "\n")
    window_gaps.pop("all", None)
    over = [usage - high for (_, high), usage, _, _ in samples]
    under = [usage - low for (low, _), usage, _, _ in samples]
    worst = sorted(samples, key=lambda s: s[0][0] - s[1])[-3:]
    return {"responses_ms": responses, "runtime_bytes": engine.runtime_bytes,
            "workspace_bytes": engine.workspace_bytes,
            "worst_samples": [(a[0], u, round(t, 3), r) for a, u, t, r in worst],
            "capacity_bytes": engine.budget.capacity_bytes,
            "peak_ledger_bytes": engine.budget.peak_bytes,
            "forced": len(engine.trace.forced_events), "samples": len(samples),
            "gap_over_bytes": max(over, default=0), "gap_under_bytes": min(under, default=0),
            "window_gaps": window_gaps,
            "window_peak_bytes": max((p for _, p in windows if p is not None), default=None)}


class _PeakWindow:
    """The cgroup's peak usage since the previous `take` (the first: since it was opened):
    v1 `memory.max_usage_in_bytes`, which writing 0 resets to the usage now; v2
    `memory.peak`, whose peak a write resets for this open file only (Linux 6.12 and later).
    Where the file is missing (v2 before 5.19) or read-only (v2 before 6.12, refused at
    open), `take` returns None: no window peaks, the samples only."""

    def __init__(self, usage_file: Path) -> None:
        name = ("memory.max_usage_in_bytes" if usage_file.name == "memory.usage_in_bytes"
                else "memory.peak")
        try:
            self.file = open(usage_file.parent / name, "r+b", buffering=0)  # noqa: SIM115
        except OSError:
            self.file = None

    def take(self) -> int | None:
        if self.file is None:
            return None
        try:
            self.file.seek(0)
            peak = int(self.file.read())
            self.file.seek(0)
            self.file.write(b"0")
        except (OSError, ValueError):
            self.file = None
            return None
        return peak


def _window_gaps(windows, events, runtime_bytes: int) -> dict:
    """Per window between two samples: the cgroup's peak usage in it against the most the run
    accounted for in it (the ledger's highest level in the window, from its events, plus the
    runtime). Positive: usage above anything accounted in the window (under-accounting);
    negative: accounted and never all in use within the window (e.g. an exec's output and
    workspace reserved as it starts, touched over its run). The largest each way, in bytes,
    with the window's end (s)."""
    import bisect

    times = [e.time for e in events]
    gaps = []
    start = 0.0
    for end, peak in windows:
        if peak is not None:
            first = bisect.bisect_right(times, start)
            levels = [events[first - 1].used_bytes] if first else [0]
            levels += [e.used_bytes for e in events[first:bisect.bisect_right(times, end)]]
            gaps.append((peak - max(levels) - runtime_bytes, round(end, 3)))
        start = end
    if not gaps:
        return {}
    return {"over": max(gaps), "under": min(gaps), "windows": len(gaps), "all": gaps}


def _detail(usage_file: Path, scheduler) -> str:
    """The cgroup's (v1) anonymous and page-cache bytes and the ledger's weights and
    activations, in MiB: where a gap comes from."""
    stat = dict(line.split() for line in
                (usage_file.parent / "memory.stat").read_text().splitlines())
    held: dict[str, int] = {}
    try:
        for instance in list(scheduler.instances):
            for key, nbytes in list(instance.held.items()):
                held[key[0]] = held.get(key[0], 0) + nbytes
    except RuntimeError:
        pass
    return (f"rss {int(stat['rss']) >> 20} cache {int(stat['cache']) >> 20} mapped "
            f"{int(stat['mapped_file']) >> 20} | ledger w {held.get('w', 0) >> 20} "
            f"a {held.get('a', 0) >> 20} x {held.get('x', 0) >> 20}")


# -- the parent ----------------------------------------------------------------------------

def run_limited(networks, packages, mode, limit_bytes, batches, outputs_file=None,
                swap_bytes: int = 0) -> dict:
    """One run in a child process inside a fresh memory cgroup of `limit_bytes` with
    `swap_bytes` of swap on top (a swap file of that size enabled meanwhile; 0: none)."""
    import contextlib

    from edgecaffe.experiment.limits import MemoryCgroup, SwapFile

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        if swap_bytes:
            stack.enter_context(SwapFile(swap_bytes))
        cgroup = stack.enter_context(MemoryCgroup(limit_bytes, swap_bytes))
        spec = {"packages": {n: str(p.directory) for n, p in packages.items()},
                "networks": list(networks), "mode": mode, "batches": batches,
                "limit_bytes": limit_bytes, "usage_file": str(cgroup.usage_path),
                "outputs_file": outputs_file, "backend": BACKEND}
        spec_file, out_file = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec_file.write_text(json.dumps(spec))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", str(spec_file),
                               str(out_file)], preexec_fn=cgroup.join, capture_output=True,
                              text=True, check=False)
        stats = cgroup.stats()
        result = json.loads(out_file.read_text()) if out_file.exists() else {}
    # The child resets the cgroup's peak at every sample (window peaks): the run's peak is
    # the largest of its windows' and of what came after its last one.
    if result.get("window_peak_bytes"):
        stats["peak_bytes"] = max(stats["peak_bytes"] or 0, result["window_peak_bytes"])
    result.update(stats=stats, code=done.returncode, wall_s=time.perf_counter() - started,
                  error=done.stderr.strip().splitlines()[-1:] if done.returncode else [])
    return result


def _line(label: str, limited: dict, free: dict, limit_bytes: int) -> str:
    if limited["code"] or not limited.get("responses_ms"):
        oom = limited["stats"].get("oom_kills")
        return f"{label:<8} FAILED (exit {limited['code']}, OOM kills {oom}) {limited['error']}"
    mean = statistics.mean(limited["responses_ms"])
    ratio = mean / statistics.mean(free["responses_ms"]) if free.get("responses_ms") else None
    peak = limited["stats"]["peak_bytes"]
    gap = max(limited["gap_over_bytes"], -limited["gap_under_bytes"]) / limit_bytes
    memsw = limited["stats"].get("peak_with_swap_bytes")
    memsw = "n/a" if memsw is None else f"{memsw / 2**20:.0f} MiB"
    return (f"{label:<8} completed  mean {mean:8.0f} ms  vs no limit "
            f"{f'{ratio:.2f}x' if ratio else '   n/a'}  peak {peak / 2**20:5.0f} MiB "
            f"(limit {limit_bytes / 2**20:.0f}; with swap {memsw})  runtime "
            f"{limited['runtime_bytes'] / 2**20:.0f} MiB  ledger cap "
            f"{limited['capacity_bytes'] / 2**20:.0f} MiB  forced "
            f"{limited['forced']}  swap-in (system-wide) "
            f"{limited['stats']['swap_in_pages']} pages  gap "
            f"usage-accounted {limited['gap_over_bytes'] / 2**20:+.0f}/"
            f"{limited['gap_under_bytes'] / 2**20:+.0f} MiB = {100 * gap:.1f}% of the limit"
            + _window_line(limited.get("window_gaps"), limit_bytes)
            + "".join(f"\n{'':<8} at {t:.2f} s accounted {a / 2**20:.0f} MiB, usage "
                      f"{u / 2**20:.0f} MiB, running: {', '.join(r) or 'nothing'}"
                      for a, u, t, r in limited.get("worst_samples", [])[-1:]))


def _window_line(gaps: dict | None, limit_bytes: int) -> str:
    if not gaps:
        return "\n         (no window peaks: this kernel cannot reset the cgroup's peak)"
    (over, over_s), (under, under_s) = gaps["over"], gaps["under"]
    share = max(over, -under) / limit_bytes
    return (f"\n{'':<8} window peaks ({gaps['windows']} windows of ~20 ms): usage peak - "
            f"most accounted {over / 2**20:+.0f} MiB (at {over_s:.2f} s) / "
            f"{under / 2**20:+.0f} MiB (at {under_s:.2f} s) = {100 * share:.1f}% of the limit")


def loads(package) -> None:
    """Seconds to bring every weight file of `package` in, per method, cold and warm."""
    from edgecaffe.model.package.tensorfile import drop_page_cache, map_tensors, read_tensors

    files = [package.weight_file(layer.name) for layer in package.network.layers
             if package.weight_file(layer.name)]
    total = sum(f.stat().st_size for f in files)
    print(f"\nloads: {package.name}, {len(files)} weight files, {total / 2**20:.0f} MiB "
          "(median of 3, s)")
    for method, reader in (("read", read_tensors), ("mmap", map_tensors)):
        figures = {}
        for temperature in ("cold", "warm"):
            times = []
            for _ in range(3):
                if temperature == "warm":
                    for f in files:
                        f.read_bytes()  # in the page cache
                elapsed = 0.0
                for f in files:
                    if temperature == "cold":
                        drop_page_cache(f, sync=False)
                    started = time.perf_counter()
                    arrays = reader(f)
                    elapsed += time.perf_counter() - started
                    del arrays
                times.append(elapsed)
            figures[temperature] = statistics.median(times)
        print(f"  {method:<5} cold {figures['cold']:6.2f} s ({total / 2**30 / figures['cold']:.2f}"
              f" GiB/s)  warm {figures['warm']:6.2f} s ({total / 2**30 / figures['warm']:.2f}"
              " GiB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--modes", default="masa,bulk,linear")
    parser.add_argument("--limit", default="512M")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--memnet-batch", type=int, default=10,
                        help="MemNet's input batch (the original's large-3 runs it at 10)")
    parser.add_argument("--skip-loads", action="store_true")
    parser.add_argument("--swap", default="0",
                        help="swap for a mode that cannot run within the limit (e.g. 4G): "
                             "without it such a mode is reported, not run")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "onnxruntime"),
                        help="the engine's kernels (onnxruntime: its sessions and prepared "
                             "weights are then part of what the cgroup sees)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.backend
    if args.child:
        spec = json.loads(Path(args.child[0]).read_text())
        Path(args.child[1]).write_text(json.dumps(child(spec)))
        return
    from edgecaffe.sched import parse_bytes

    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} on "
          f"{os.cpu_count()} cores (a shared machine: times are noisy)")
    if not args.skip_loads:
        from edgecaffe.model.zoo import zoo_package

        loads(zoo_package("ObjectNet"))
    if os.geteuid() != 0:
        print("not root: the cgroup runs are skipped")
        return
    limit = parse_bytes(args.limit)
    swap = parse_bytes(args.swap) if args.swap != "0" else 0
    packages = _packages(SET, limit, {"MemNet": args.memnet_batch})
    print(f"\nlarge-3 (ObjectNet, EmotionNet, MemNet at batch {args.memnet_batch}), "
          f"{args.batches} batch arrivals, 2 workers, cold loads; "
          f"cgroup {limit / 2**20:.0f} MiB, no swap, vs the same in an unlimited cgroup")
    for mode in [m for m in args.modes.split(",") if m not in ("", "none")]:
        forced = needs_more(packages, mode, limit, args.batches)
        if forced and not swap:
            print(f"{mode:<8} needs swap: within {limit / 2**20:.0f} MiB the simulator forces "
                  f"{forced} reservations over the ledger's capacity (a network's whole "
                  "model does not fit): not run; give --swap SIZE to run it with swap",
                  flush=True)
            continue
        free = run_limited(SET, packages, mode, 64 << 30, args.batches)
        limited = run_limited(SET, packages, mode, limit, args.batches,
                              swap_bytes=swap if forced else 0)
        if forced:
            print(f"{mode:<8} needs swap ({forced} reservations forced over the ledger's "
                  f"capacity, simulated): run with {swap / 2**30:.1f} GiB of swap", flush=True)
        print(_line(mode, limited, free, limit), flush=True)
        print(f"{'':<8} unlimited: mean {statistics.mean(free['responses_ms'] or [0]):.0f} ms, "
              f"peak {free['stats']['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.skip_vgg:
        return
    _vgg(args.batches)


def _vgg(batches: int) -> None:
    import numpy as np

    from edgecaffe.engine.tasks import network_input
    from edgecaffe.model.zoo import zoo_package

    whole = zoo_package("ObjectNet")
    blocked = _packages(["ObjectNet"], 128 << 20)["ObjectNet"]
    block = blocked.manifest.get("source", {}).get("max_block_bytes", 0)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    expected = whole.forward(network_input(image, whole))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.npz"
        free = run_limited(["ObjectNet"], {"ObjectNet": blocked}, "masa", 64 << 30, batches)
        result = run_limited(["ObjectNet"], {"ObjectNet": blocked}, "masa", 128 << 20, batches,
                             outputs_file=str(out))
        exact = None
        if out.exists():
            with np.load(out) as got:
                exact = all(np.array_equal(got[f"ObjectNet/{b}"], a) for b, a in expected.items())
    print(f"\nVGG-19 (ObjectNet) batch 1, {whole.weight_bytes / 2**20:.0f} MiB of weights "
          f"(largest layer {max(l.weight_bytes for l in whole.network.layers) / 2**20:.0f} MiB, "
          f"in blocks of <= {block / 2**20:.0f} MiB, chosen by the engine's automatic rule), "
          "128 MiB cgroup, no swap:")
    print(_line("masa", result, free, 128 << 20) + f"  bit-exact: {exact}")
    print(f"{'':<8} unlimited: mean {statistics.mean(free['responses_ms'] or [0]):.0f} ms, "
          f"peak {free['stats']['peak_bytes'] / 2**20:.0f} MiB")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
