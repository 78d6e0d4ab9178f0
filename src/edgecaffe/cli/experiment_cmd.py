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
    parser.add_argument("--enforce-memory", action="store_true",
                        help="run inside a cgroup memory limit equal to the budget (needs root)")
    parser.add_argument("--swap", metavar="SIZE",
                        help="with --enforce-memory: a swap file of SIZE (e.g. 4G) the run may "
                        "use, created and removed by this command")
    parser.set_defaults(handler=run)


def _child_argv(argv: list[str]) -> list[str]:
    """The same command without the options that set up the limit."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--enforce-memory":
            continue
        elif arg == "--swap":
            skip = True
        elif not arg.startswith("--swap="):
            out.append(arg)
    return out


def run_limited(args: argparse.Namespace) -> int:
    """Run this same experiment in a child process inside a memory cgroup (and with swap)."""
    import json
    import signal
    import subprocess
    import sys
    from contextlib import ExitStack

    from edgecaffe.experiment.config import arrivals_of
    from edgecaffe.experiment.limits import MemoryCgroup, SwapFile
    from edgecaffe.experiment.networks import resolve_networks
    from edgecaffe.sched import parse_bytes

    config = _config(args)
    arrivals, _ = arrivals_of(config)
    # Build packages first, outside the limit: the run should measure inference, not splitting.
    resolve_networks([n for a in arrivals for n in a.networks], config)
    limit = parse_bytes(config.mem_limit)
    swap = parse_bytes(args.swap) if args.swap else 0
    with ExitStack() as stack:
        if swap:
            stack.enter_context(SwapFile(swap))
        cgroup = stack.enter_context(MemoryCgroup(limit, swap))
        child = subprocess.run([sys.executable, "-m", "edgecaffe", *_child_argv(args.argv)],
                               preexec_fn=cgroup.join, check=False)
        stats = cgroup.stats()
    stats["oom_killed"] = child.returncode == -signal.SIGKILL or stats.get("oom_kills", 0) > 0
    stats["exit_code"] = child.returncode
    folder = _folder(config)
    if folder.exists():
        (folder / "limits.json").write_text(json.dumps(stats, indent=2))
    peak = stats.get("peak_bytes")
    print(f"memory limit {limit / 2**20:.0f} MiB (cgroup v{stats['cgroup_version']}), swap "
          f"{swap / 2**20:.0f} MiB: peak {peak / 2**20 if peak else float('nan'):.0f} MiB, "
          f"swap in/out {stats['swap_in_pages']}/{stats['swap_out_pages']} pages, "
          f"{'OOM KILLED' if stats['oom_killed'] else 'no OOM kill'}")
    if stats["oom_killed"]:
        print(f"edgecaffe experiment: error: the OOM killer ended the run at {limit} bytes; "
              "add --swap or raise --mem-limit", file=sys.stderr)
        return 1
    return child.returncode


def _config(args: argparse.Namespace):
    from edgecaffe.experiment.config import load_config

    overrides = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    overrides.update(output=args.output, synthetic=args.synthetic)
    return load_config(args.config, overrides)


def _folder(config):
    from pathlib import Path

    return Path(config.output) / (config.prefix or f"{config.mode}-{config.mem_limit}")


def run(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.experiment.config import arrivals_of
    from edgecaffe.experiment.networks import resolve_networks
    from edgecaffe.experiment.runner import run_once

    if args.enforce_memory:
        return run_limited(args)
    if args.swap:
        raise ValueError("--swap needs --enforce-memory")
    config = _config(args)
    arrivals, closed_loop = arrivals_of(config)
    names = [name for arrival in arrivals for name in arrival.networks]
    packages = resolve_networks(names, config)
    folder = _folder(config)
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
