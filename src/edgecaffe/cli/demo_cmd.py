"""`edgecaffe demo`: the original's README example at the original's cost (GenderNet at batch
10, FaceNet on its multi-scale input, AgeNet), masa against bulk, deepeye and linear, in rounds,
with medians, spreads and a plain verdict on what is within the noise."""

from __future__ import annotations

import argparse
import os
import statistics
import time

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.cli.experiment_cmd import blas_threads_arg
from edgecaffe.errors import UsageError

NETWORKS = ["GenderNet", "FaceNet", "AgeNet"]
#: The original's README batch: its GenderNet description runs batch 10, and its FaceNet
#: (`use-scales: true`) runs on the README's 268-px image enlarged 5x: 1340 x 1340.
ORIGINAL_COST = {"GenderNet": {"batch": 10}, "FaceNet": {"input_size": (1340, 1340)},
                 "AgeNet": {}}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "demo", help="compare masa, bulk, deepeye and linear on the original's README batch",
        description="Builds the zoo packages it needs on first use (GenderNet at batch 10, "
        "FaceNet at 1340 x 1340 as the original's multi-scale input, AgeNet; seeded synthetic "
        "weights, profiled on this machine), then runs the batch under a memory budget with "
        "each mode, in rounds (modes interleaved), and prints each mode's median response "
        "with its range and whether differences are within the noise. Writes each run's "
        "results folder, a summary and a report.",
    )
    parser.add_argument("--budget", default="512M", help="memory budget (default 512M)")
    parser.add_argument("--modes", default="masa,bulk,deepeye,linear",
                        help="modes to compare (default masa,bulk,deepeye,linear)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every mode, for medians and ranges (default 3)")
    parser.add_argument("--batches", type=int, default=1,
                        help="closed-loop batches per run (default 1, as the README example)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    parser.add_argument("--light", action="store_true",
                        help="the cheap zoo versions instead (batch 1, FaceNet at 227 px): "
                        "seconds instead of minutes, but not the original's work")
    parser.add_argument("-o", "--output", default="edgecaffe-demo",
                        help="results folder (default ./edgecaffe-demo)")
    parser.add_argument("--blas-threads", default="adaptive", type=blas_threads_arg,
                        help="BLAS threads per execution: adaptive (default: the cores shared "
                        "out among the executions running) or a fixed count")
    add_backend_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecaffe.cli.report_cmd import warn_without_matplotlib
    from edgecaffe.experiment import run_once
    from edgecaffe.sched import MODES
    from edgecaffe.workload import batches

    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.batches < 1:
        raise UsageError("--batches must be 1 or more")
    if args.rounds < 1:
        raise UsageError("--rounds must be 1 or more")
    if not (args.blas_threads == "adaptive" or 1 <= args.blas_threads <= 256):
        raise UsageError(f"--blas-threads {args.blas_threads} is not allowed; expected "
                         "adaptive or 1 to 256")
    if not 1 <= args.workers <= 64:
        raise UsageError(f"--workers {args.workers} is not allowed; expected 1 to 64")
    from edgecaffe.experiment.schema import check_memory

    check_memory(args.budget, "--budget", "demo", False, UsageError)
    warn_without_matplotlib("the demo's report")
    packages = _packages(args.light)
    output = Path(args.output)
    cost = "the cheap zoo versions (--light)" if args.light else \
        "GenderNet batch 10, FaceNet 1340 x 1340, AgeNet"
    print(f"\n{args.batches} batch(es) of {cost}; budget {args.budget} (layer granularity), "
          f"{args.workers} workers where the mode allows, BLAS threads {args.blas_threads} "
          f"(load average {os.getloadavg()[0]:.1f}); {args.rounds} rounds, modes "
          "interleaved.\nResponse ms: mean over networks (the paper's metric), median over "
          "rounds [fastest-slowest round]; per network, medians.", flush=True)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode in modes:
            summary, _ = run_once(packages, batches(NETWORKS, args.batches), mode=mode,
                                  budget=args.budget, workers=args.workers,
                                  output=output / mode / f"round-{round_index + 1}",
                                  backend=args.backend, blas_threads=args.blas_threads)
            runs[mode].append(summary)
        print(f"  round {round_index + 1}/{args.rounds} done", flush=True)
    rows = _print_table(runs)
    _print_verdicts(rows)
    _write_summary(output, rows, args, cost)
    from edgecaffe.experiment.report import write_report

    # The report shows each mode's median round.
    folders = [output / mode / f"round-{row['median_round'] + 1}" for mode, row in rows.items()]
    _, page = write_report(folders, output / "report")
    print(f"results: {output}/<mode>/round-N/ (tasks, requests, networks, ledger, rss, workers "
          f"CSV); summary: {output / 'summary.md'}; report: {page}")
    return 0


def _packages(light: bool) -> dict:
    from edgecaffe.model.zoo import cache_dir, zoo_package

    print(f"packages (cached in {cache_dir()}; built and profiled on first use):", flush=True)
    packages = {}
    for name in NETWORKS:
        started = time.perf_counter()
        options = {} if light else ORIGINAL_COST.get(name, {})
        packages[name] = package = zoo_package(name, profile_runs=3, **options)
        shape = "x".join(map(str, package.input_shape))
        print(f"  {name:<10} input {shape:<16} {package.weight_bytes / 1e6:6.1f} MB, "
              f"{package.network.flops / 1e9:6.1f} GFLOP, median execution "
              f"{package.manifest['profile']['median_exec_ms']:7.1f} ms "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
        for doubt in package.manifest["profile"].get("warnings") or []:
            print(f"    warning: its profile may not be trusted: {doubt}", flush=True)
    return packages


def _print_table(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per mode: the median round's figures and the range over rounds."""
    header = f"{'mode':<16}{'mean (median)':>14}{'range':>17}" + \
        "".join(f"{n:>11}" for n in NETWORKS) + f"{'peak ledger':>13}"
    print(header)
    rows = {}
    for mode, summaries in runs.items():
        means = [s["mean_network_response_ms"] for s in summaries]
        median_round = sorted(range(len(means)), key=means.__getitem__)[len(means) // 2]
        per = {n: statistics.median(s["network_mean_response_ms"].get(n, float("nan"))
                                    for s in summaries) for n in NETWORKS}
        rows[mode] = {"median": statistics.median(means), "low": min(means), "high": max(means),
                      "per_network": per, "median_round": median_round,
                      "peak_ledger_bytes": max(s["peak_ledger_bytes"] for s in summaries)}
        row = rows[mode]
        spread = f"[{row['low']:.0f}-{row['high']:.0f}]"
        print(f"{mode:<16}{row['median']:>14.0f}{spread:>17}"
              + "".join(f"{per[n]:>11.0f}" for n in NETWORKS)
              + f"{row['peak_ledger_bytes'] / 2**20:>10.0f} MiB", flush=True)
    return rows


def _print_verdicts(rows: dict[str, dict]) -> None:
    """Each mode against masa: the ratio of medians, and whether the rounds' ranges overlap
    (then the difference is within this machine's noise)."""
    if "masa" not in rows or len(rows) < 2:
        return
    masa = rows["masa"]
    print("\nagainst masa (ratio of medians):")
    for mode, row in rows.items():
        if mode == "masa":
            continue
        ratio = row["median"] / masa["median"]
        if row["low"] <= masa["high"] and masa["low"] <= row["high"]:
            verdict = "within the noise: the rounds' ranges overlap"
        elif ratio > 1:
            verdict = f"masa is faster in every round ({ratio:.2f}x)"
        else:
            verdict = f"masa is slower in every round ({1 / ratio:.2f}x)"
        print(f"  {mode:<14} {ratio:5.2f}x  {verdict}")


def _write_summary(output, rows: dict[str, dict], args: argparse.Namespace, cost: str) -> None:
    lines = [f"# EdgeCaffe demo: {cost}, budget {args.budget}", "",
             f"{args.rounds} rounds, modes interleaved; response ms: mean over networks, "
             "median over rounds [fastest-slowest round]; per network, medians.", "",
             "| mode | mean (median) | range | " + " | ".join(NETWORKS) + " |",
             "|---|---|---|" + "---|" * len(NETWORKS)]
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['median']:.0f} | {row['low']:.0f}-{row['high']:.0f} | "
                     + " | ".join(f"{row['per_network'][n]:.0f}" for n in NETWORKS) + " |")
    (output / "summary.md").write_text("\n".join(lines) + "\n")
