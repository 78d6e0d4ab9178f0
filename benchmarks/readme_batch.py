"""The original's README batch under a real memory limit: our mean response per mode against
OpenCV DNN running the same three networks one after another, in the same cgroup, same run.

    sudo python benchmarks/readme_batch.py [--rounds 3] [--limit 512M] [--swap 1G]
        [--modes masa,bulk,deepeye,linear] [--blas-threads adaptive,1] [--backend numpy]

The batch is `edgecaffe demo`'s (GenderNet at batch 10, FaceNet at 1340 x 1340 as the
original's multi-scale input, AgeNet; seeded synthetic weights; packages built and profiled
outside the limit on first use). Every run is a child process inside a fresh memory cgroup of
`--limit` (v1 or v2, `experiment.limits.MemoryCgroup`, with a swap file of `--swap` when the
machine allows one), started after the page cache was dropped (cold weights). Rounds
interleave the contenders, so machine noise hits all alike.

* ours: `run_once` (the engine, 2 workers) on one batch: the mean response over the three
  networks (the paper's metric: arrival to each network's last task).
* OpenCV: `cv2.dnn.readNetFromCaffe` + preprocessing + `forward` of each network in turn, on
  all cores: the time from the first read to the last output (its "response" for all three).

Printed per contender: the median over rounds (ms) and [fastest-slowest], ours / OpenCV, the
cgroup's peak and OOM kills, and the load average (the machine may be shared: figures are
noisy). Issue 14's goals: masa <= 0.22x OpenCV's sequential time, every mode below 1.0x.
Needs root; what it creates (cgroups, the swap file) is removed however it ends (run record
and reaper: `edgecaffe/leftovers.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

NETWORKS = ["GenderNet", "FaceNet", "AgeNet"]


# -- the child: one run inside the cgroup ------------------------------------------------------

def child_ours(job: dict) -> dict:
    from edgecaffe.experiment import run_once
    from edgecaffe.model.package import open_package
    from edgecaffe.workload import batches

    packages = {name: open_package(path) for name, path in job["packages"].items()}
    summary, _ = run_once(packages, batches(NETWORKS, 1), mode=job["mode"],
                          budget=job["budget"], workers=job["workers"],
                          blas_threads=job["blas_threads"], output=job["output"],
                          backend=job["backend"])
    return {"ms": summary["mean_network_response_ms"],
            "per_network_ms": summary["network_mean_response_ms"]}


def child_opencv(job: dict) -> dict:
    import cv2

    from edgecaffe.model.package import open_package
    from edgecaffe.model.preprocess import preprocess_for, sample_image

    cv2.setNumThreads(job["threads"])
    image = sample_image()
    shapes = {name: open_package(path) for name, path in job["packages"].items()}
    per_network = {}
    started = time.perf_counter()
    for name in NETWORKS:
        prototxt, caffemodel = job["files"][name]
        net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        package = shapes[name]
        net.setInput(preprocess_for(image, package.input_shape, package.meta))
        net.forward()
        del net  # its weights go before the next network's, as a sequential run would
        per_network[name] = (time.perf_counter() - started) * 1e3
    return {"ms": (time.perf_counter() - started) * 1e3, "per_network_ms": per_network}


def child_main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    result = child_ours(job) if job["kind"] == "ours" else child_opencv(job)
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: packages, limits, rounds ------------------------------------------------------

def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def prepare() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Our packages (built and profiled outside the limit) and OpenCV's Caffe files."""
    from edgecaffe.cli.demo_cmd import ORIGINAL_COST
    from edgecaffe.model.zoo import zoo_files, zoo_package

    packages, files = {}, {}
    for name in NETWORKS:
        cost = ORIGINAL_COST.get(name, {})
        packages[name] = str(zoo_package(name, profile_runs=3, **cost).directory)
        files[name] = [str(p) for p in zoo_files(name, batch=cost.get("batch", 1))]
    return packages, files


def run_child(job: dict, limit: int, swap: int, record, parent: int) -> dict:
    """One job in a child process inside a fresh cgroup, caches dropped first."""
    from edgecaffe.experiment.limits import MemoryCgroup, run_in_cgroup
    from edgecaffe.leftovers import die_with_parent

    orphan = die_with_parent(parent)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job, handle)
    try:
        drop_caches()
        with MemoryCgroup(limit, swap) as cgroup:
            record.cgroups.append(str(cgroup.path))
            record.save()
            child, out, err, stats = run_in_cgroup(
                cgroup, record, [sys.executable, __file__, "--child", handle.name], orphan,
                capture=True)
        record.cgroups.remove(str(cgroup.path))
        record.children.clear()
        record.save()
    finally:
        os.unlink(handle.name)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][7:]) if lines and child.returncode == 0 else \
        {"ms": float("nan"), "error": (err.strip().splitlines() or ["?"])[-1]}
    result["peak_bytes"] = stats.get("peak_bytes")
    result["swap_pages"] = (stats.get("swap_in_pages", 0), stats.get("swap_out_pages", 0))
    result["oom"] = child.returncode == -signal.SIGKILL or stats.get("oom_kills", 0) > 0
    return result


def contenders(args, packages, files, output: Path) -> dict[str, dict]:
    jobs = {"opencv": {"kind": "opencv", "packages": packages, "files": files,
                       "threads": os.cpu_count() or 1}}
    for threads in args.blas_threads.split(","):
        setting = threads if threads == "adaptive" else int(threads)
        for mode in args.modes.split(","):
            jobs[f"{mode} [{threads}]"] = {
                "kind": "ours", "packages": packages, "mode": mode, "budget": args.limit,
                "workers": args.workers, "blas_threads": setting, "backend": args.backend,
                "output": str(output / f"{mode}-{threads}")}
    return jobs


def report(results: dict[str, list[dict]], loads: list[float]) -> None:
    cv = statistics.median(r["ms"] for r in results["opencv"])
    print(f"\n{'contender':<22}{'median ms':>10}{'range':>16}{'/ OpenCV':>10}"
          f"{'peak MiB':>10}  OOM")
    for name, runs in results.items():
        times = [r["ms"] for r in runs]
        median = statistics.median(times)
        peak = max((r["peak_bytes"] or 0) for r in runs) / 2**20
        errors = {r["error"] for r in runs if "error" in r}
        print(f"{name:<22}{median:>10.0f}{f'[{min(times):.0f}-{max(times):.0f}]':>16}"
              f"{median / cv:>9.2f}x{peak:>10.0f}  {sum(r['oom'] for r in runs)}"
              + (f"  errors: {errors}" if errors else ""))
    print(f"load average (1 min) over the rounds: {min(loads):.1f}-{max(loads):.1f} on "
          f"{os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", default="512M", help="cgroup limit and budget")
    parser.add_argument("--swap", default="1G", help="swap file (0: none)")
    parser.add_argument("--modes", default="masa,bulk,deepeye,linear")
    parser.add_argument("--blas-threads", default="adaptive",
                        help="comma-separated settings to compare, e.g. adaptive,1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (a memory cgroup and dropping the page cache)")
    from edgecaffe.leftovers import Reaper, RunRecord
    from edgecaffe.sched import parse_bytes

    packages, files = prepare()
    limit = parse_bytes(args.limit)
    swap = parse_bytes(args.swap) if args.swap not in ("0", "") else 0
    record = RunRecord.create()
    reaper = Reaper(record)
    signal.signal(signal.SIGTERM, interrupted)  # `kill` cleans up as Ctrl-C does
    try:
        with tempfile.TemporaryDirectory() as folder:
            bench(args, packages, files, limit, swap, record, Path(folder))
    finally:
        if not record.remaining():
            record.forget()
        reaper.release()


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def bench(args, packages, files, limit: int, swap: int, record, output: Path) -> None:
    from contextlib import ExitStack

    from edgecaffe.experiment.limits import LimitError, SwapFile

    with ExitStack() as stack:
        if swap:
            try:
                swap_file = stack.enter_context(SwapFile(swap))
                record.swap = str(swap_file.path)
                record.save()
            except LimitError as error:
                print(f"no swap: {error}")
                swap = 0
        jobs = contenders(args, packages, files, output)
        print(f"README batch (GenderNet batch 10, FaceNet 1340 x 1340, AgeNet) in a "
              f"{limit / 2**20:.0f} MiB cgroup, swap {swap / 2**20:.0f} MiB, page cache dropped "
              f"before each run; {args.rounds} rounds, contenders interleaved; backend "
              f"{args.backend}, {args.workers} workers", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in jobs}
        loads = [os.getloadavg()[0]]
        for round_index in range(args.rounds):
            for name, job in jobs.items():
                result = run_child(job, limit, swap, record, os.getpid())
                results[name].append(result)
                loads.append(os.getloadavg()[0])
                per = ", ".join(f"{n} {ms:.0f}" for n, ms in
                                result.get("per_network_ms", {}).items())
                print(f"  round {round_index + 1} {name:<22} {result['ms']:8.0f} ms ({per}) "
                      f"peak {(result['peak_bytes'] or 0) / 2**20:.0f} MiB, swap in/out "
                      f"{'/'.join(map(str, result['swap_pages']))} pages, load "
                      f"{loads[-1]:.1f}" + (f"  {result['error']}" if "error" in result else ""),
                      flush=True)
        report(results, loads)


if __name__ == "__main__":
    main()
