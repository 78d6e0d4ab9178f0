"""`edgecaffe experiment [CONFIG] [flags]`: run one configuration and write its results folder."""

from __future__ import annotations

import argparse

FLAGS = [  # (flag, config key, type, help)
    ("--mode", "mode", str, "execution mode (masa, bulk, linear, deepeye, ...)"),
    ("--policy", "policy", str, "scheduling policy (default: the mode's own)"),
    ("--mem-limit", "mem_limit", str, "memory budget, e.g. 512M, 1G"),
    ("--granularity", "granularity", str, "memory accounting: layer or network"),
    ("--n-workers", "workers", int, "worker threads"),
    ("--blas-threads", "blas_threads", int, "BLAS threads (default: the worker count)"),
    ("--networks", "networks", str, "comma-separated networks (zoo names or folders)"),
    ("--arrival-mode", "arrival_mode", str, "batch (closed loop), poisson or stochastic"),
    ("--n-arrivals", "n_arrivals", int, "arrivals to generate"),
    ("--mean-gap-ms", "mean_gap_ms", float, "mean inter-arrival time of Poisson arrivals"),
    ("--seed", "seed", int, "arrival and synthetic-weight seed"),
    ("--network-path", "network_path", str, "folder the networks' paths are relative to"),
    ("--resources-path", "resources_path", str, "folder the arrivals' images are relative to"),
    ("--output-prefix", "prefix", str, "name of the run's results folder"),
]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "experiment", help="run an experiment configuration and write its results",
        description="Run one configuration: a YAML file of ours or one of the original "
        "EdgeCaffe's *.exp.yaml files (mem_limit, mode, n-workers, arrival-mode, network-path, "
        "resources-path, output-path, output-prefix and its arrivals: list), with any key "
        "overridden by a flag; no file is needed when the flags say enough.",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML (optional)")
    parser.add_argument("-o", "--output", help="results folder (default: the config's "
                        "output-path, else ./results)")
    parser.add_argument("--synthetic", action="store_true", default=None,
                        help="seeded synthetic weights for original folders without caffemodels")
    for flag, key, kind, text in FLAGS:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecaffe.cli.progress import Progress
    from edgecaffe.experiment.config import arrivals_of, load_config
    from edgecaffe.experiment.networks import resolve_networks
    from edgecaffe.experiment.runner import run_once

    overrides = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    overrides.update(output=args.output, synthetic=args.synthetic)
    config = load_config(args.config, overrides)
    arrivals, closed_loop = arrivals_of(config)
    names = [name for arrival in arrivals for name in arrival.networks]
    packages = resolve_networks(names, config)
    folder = Path(config.output) / (config.prefix or f"{config.mode}-{config.mem_limit}")
    bar = Progress(len(arrivals), f"{config.mode} {config.mem_limit}", unit="arrivals",
                   scale=1)
    summary, _ = run_once(
        packages, arrivals, mode=config.mode, budget=config.mem_limit, policy=config.policy,
        granularity=config.granularity, workers=config.workers,
        blas_threads=config.blas_threads, closed_loop=closed_loop, output=folder,
        config=config.to_dict(), on_done=lambda: bar.advance(1),
    )
    bar.close()
    rss = summary["peak_rss_bytes"] or 0
    print(f"{folder}: {summary['completed']}/{summary['requests']} requests, mean response "
          f"{summary['mean_network_response_ms']:.0f} ms (per network), p95 "
          f"{summary['p95_response_ms']:.0f} ms (per request), makespan "
          f"{summary['makespan_ms']:.0f} ms, peak ledger "
          f"{summary['peak_ledger_bytes'] / 2**20:.0f} MiB, peak RSS {rss / 2**20:.0f} MiB")
    return 0 if summary["failed"] == 0 else 1
