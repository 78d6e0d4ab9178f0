"""`edgecaffe demo`: the original's README example, masa against bulk, deepeye and linear."""

from __future__ import annotations

import argparse
import time

from edgecaffe.cli.backend_flag import add_backend_flag

NETWORKS = ["GenderNet", "FaceNet", "AgeNet"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "demo", help="compare masa, bulk, deepeye and linear on three zoo networks",
        description="Builds the zoo packages it needs on first use (GenderNet, FaceNet, AgeNet "
        "with seeded synthetic weights, profiled on this machine), then runs batches of all "
        "three under a memory budget with each mode, prints the comparison and writes each run's "
        "results folder, a summary and a report (HTML and Markdown, with plots when matplotlib "
        "is installed).",
    )
    parser.add_argument("--budget", default="512M", help="memory budget (default 512M)")
    parser.add_argument("--modes", default="masa,bulk,deepeye,linear",
                        help="modes to compare (default masa,bulk,deepeye,linear)")
    parser.add_argument("--batches", type=int, default=5,
                        help="closed-loop batches per mode (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    parser.add_argument("-o", "--output", default="edgecaffe-demo",
                        help="results folder (default ./edgecaffe-demo)")
    add_backend_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecaffe.experiment import run_once
    from edgecaffe.model.zoo import cache_dir, zoo_package
    from edgecaffe.sched import MODES
    from edgecaffe.workload import batches

    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.batches < 1:
        raise ValueError("--batches must be 1 or more")
    print(f"packages (cached in {cache_dir()}):", flush=True)
    packages = {}
    for name in NETWORKS:
        started = time.perf_counter()
        packages[name] = zoo_package(name, profile_runs=3)
        print(f"  {name:<10} {packages[name].weight_bytes / 1e6:6.1f} MB, mean execution "
              f"{packages[name].manifest['profile']['mean_exec_ms']:6.1f} ms "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    output = Path(args.output)
    print(f"\n{args.batches} batches of {', '.join(NETWORKS)}, budget {args.budget} "
          f"(layer granularity), {args.workers} workers where the mode allows:")
    print("response ms: mean over networks (the paper's metric), p95 over requests (arrival to "
          "the last network's end), and per network")
    header = f"{'mode':<16}{'mean':>8}{'p95 req':>9}" + "".join(f"{n:>11}" for n in NETWORKS)
    print(header + f"{'peak ledger':>13}")
    rows = {}
    for mode in modes:
        summary, _ = run_once(packages, batches(NETWORKS, args.batches), mode=mode,
                              budget=args.budget, workers=args.workers,
                              output=output / mode, backend=args.backend)
        rows[mode] = summary
        per = summary["network_mean_response_ms"]
        print(f"{mode:<16}{summary['mean_network_response_ms']:>8.0f}"
              f"{summary['p95_response_ms']:>9.0f}"
              + "".join(f"{per.get(n, float('nan')):>11.0f}" for n in NETWORKS)
              + f"{summary['peak_ledger_bytes'] / 2**20:>10.0f} MiB", flush=True)
    if "masa" in rows:
        base = rows["masa"]["mean_network_response_ms"]
        others = ", ".join(f"{m} {rows[m]['mean_network_response_ms'] / base:.2f}x"
                           for m in rows if m != "masa")
        print(f"\nmean response relative to masa: {others}")
    lines = [f"# EdgeCaffe demo: {', '.join(NETWORKS)}, budget {args.budget}", "",
             "Response times in ms: mean over networks, p95 over requests, mean per network.", "",
             "| mode | mean | p95 request | " + " | ".join(NETWORKS) + " |",
             "|---|---|---|" + "---|" * len(NETWORKS)]
    for mode, summary in rows.items():
        per = summary["network_mean_response_ms"]
        lines.append(f"| {mode} | {summary['mean_network_response_ms']:.0f} | "
                     f"{summary['p95_response_ms']:.0f} | "
                     + " | ".join(f"{per.get(n, float('nan')):.0f}" for n in NETWORKS) + " |")
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    from edgecaffe.experiment.report import write_report

    _, page = write_report([output / mode for mode in modes], output / "report")
    print(f"results: {output}/<mode>/ (tasks, requests, networks, ledger, rss, workers CSV); "
          f"summary: {output / 'summary.md'}; report: {page}")
    return 0
