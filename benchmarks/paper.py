"""The paper's comparison on this machine: mean response time per mode for the mixed-3 and
large-3 sets at 512M, 1G and 2G; first with the scheduler's accounting only, then (as root)
under a real cgroup memory limit equal to the budget, with a swap file.

    python benchmarks/paper.py [--batches 3] [--sets mixed-3,large-3] [--swap 4G] [--no-real]

Each figure is the mean response per network (the paper's metric) over closed-loop batches of
the whole set, zoo networks at batch 1 with synthetic weights. The paper reports masa up to 90%
lower than bulk at 512 MB-1 GB on a Raspberry Pi; here the CPU is faster and the zoo inputs are
smaller, so expect the ordering rather than the magnitude.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ["masa", "bulk", "deepeye", "linear"]
LIMITS = ["512M", "1G", "2G"]


def run(set_name: str, limit: str, mode: str, batches: int, output: Path,
        real: bool, swap: str) -> dict:
    name = f"{set_name}-{limit}-{mode}-{'real' if real else 'accounting'}"
    command = [sys.executable, "-m", "edgecaffe", "experiment", "--set", set_name,
               "--mem-limit", limit, "--mode", mode, "--n-arrivals", str(batches),
               "-o", str(output), "--output-prefix", name]
    if real:
        command += ["--enforce-memory", "--swap", swap]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    folder = output / name
    summary = json.loads((folder / "summary.json").read_text()) if (
        folder / "summary.json").exists() else {}
    limits = json.loads((folder / "limits.json").read_text()) if (
        folder / "limits.json").exists() else {}
    return {"summary": summary, "limits": limits, "code": done.returncode,
            "error": done.stderr.strip().splitlines()[-1:] if done.returncode else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--sets", default="mixed-3,large-3")
    parser.add_argument("--swap", default="4G")
    parser.add_argument("--no-real", action="store_true", help="skip the cgroup runs")
    args = parser.parse_args()
    real_runs = [False] if args.no_real or os.geteuid() != 0 else [False, True]
    if os.geteuid() != 0 and not args.no_real:
        print("not root: real cgroup limits skipped, accounting only")
    with tempfile.TemporaryDirectory() as folder:
        for real in real_runs:
            label = (f"real cgroup limit + {args.swap} swap" if real
                     else "scheduler accounting only")
            print(f"\n{label}: mean response per network, ms ({args.batches} batches)")
            print(f"{'set':<10}{'limit':<7}" + "".join(f"{m:>10}" for m in MODES)
                  + "   masa vs bulk")
            for set_name in args.sets.split(","):
                for limit in LIMITS:
                    cells, means = [], {}
                    for mode in MODES:
                        result = run(set_name, limit, mode, args.batches, Path(folder), real,
                                     args.swap)
                        mean = result["summary"].get("mean_network_response_ms")
                        oom = result["limits"].get("oom_killed")
                        cells.append("OOM" if oom else f"{mean:.0f}" if mean else "failed")
                        if mean and not oom:
                            means[mode] = mean
                    # Negative: masa's mean response is that much lower than bulk's.
                    gain = (f"{means['masa'] / means['bulk'] - 1:+.0%}"
                            if {"masa", "bulk"} <= set(means) else "")
                    print(f"{set_name:<10}{limit:<7}" + "".join(f"{c:>10}" for c in cells)
                          + f"   {gain}", flush=True)


if __name__ == "__main__":
    main()
