"""`edgecaffe experiment [CONFIG] [flags]`: run one configuration and write its results folder."""

from __future__ import annotations

import argparse

from edgecaffe.cli.backend_flag import add_backend_flag

FLAGS = [  # (flag, config key, type, help)
    ("--mode", "mode", str, "execution mode"),
    ("--policy", "policy", str, "scheduling policy (default: the mode's own)"),
    ("--mem-limit", "mem_limit", str, "memory budget, e.g. 512M, 1G"),
    ("--granularity", "granularity", str, "memory accounting"),
    ("--n-workers", "workers", int, "worker threads"),
    ("--blas-threads", "blas_threads", int, "BLAS threads (default: the worker count)"),
    ("--networks", "networks", str, "comma-separated networks (zoo names or folders)"),
    ("--arrival-mode", "arrival_mode", str, "batch (closed loop), poisson or stochastic"),
    ("--n-arrivals", "n_arrivals", int, "arrivals to generate"),
    ("--mean-gap-ms", "mean_gap_ms", float, "mean inter-arrival time of Poisson arrivals"),
    ("--seed", "seed", int, "arrival and synthetic-weight seed"),
    ("--set", "set_name", str, "a built-in network set: small-3, mixed-3, large-3, "
     "lifelogging, all-networks"),
    ("--multiplier", "multiplier", float, "mean gap as a multiple of the mean service time"),
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
    from edgecaffe.sched import GRANULARITIES, MODES, POLICIES

    registries = {"mode": MODES, "policy": POLICIES, "granularity": GRANULARITIES}
    for flag, key, kind, text in FLAGS:
        if key in registries:  # the registries' names, so that new entries show up here too
            text = f"{text}; one of {', '.join(registries[key])}"
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--enforce-memory", action="store_true",
                        help="run inside a cgroup memory limit equal to the budget (needs root)")
    parser.add_argument("--simulate", action="store_true",
                        help="simulate instead of running: the same scheduler on a virtual "
                        "clock, with profiled per-layer times (or --device); writes the same "
                        "results")
    parser.add_argument("--device", metavar="PROFILE",
                        help="with --simulate: a device profile, built in (host, rpi4-sd) or a "
                        "YAML file (compute-factor, storage-mb-per-s, load-latency-ms, gflops)")
    parser.add_argument("--run-only", help=argparse.SUPPRESS)  # one run of a matrix (children)
    parser.add_argument("--swap", metavar="SIZE",
                        help="with --enforce-memory: a swap file of SIZE (e.g. 4G) the run may "
                        "use, created and removed by this command")
    parser.add_argument("--resume", action="store_true",
                        help="skip runs whose results folders are complete (complete.json)")
    from edgecaffe.cli.cluster_cmd import add_cluster_arguments

    add_cluster_arguments(parser)
    add_backend_flag(parser)
    parser.set_defaults(handler=run)


def _child_argv(argv: list[str], run_name: str) -> list[str]:
    """The same command for one run, without the options that set up the limit."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--swap", "--run-only"):
            skip = True
        elif arg != "--enforce-memory" and not arg.startswith(("--swap=", "--run-only=")):
            out.append(arg)
    return [*out, "--run-only", run_name]


def _config(args: argparse.Namespace):
    from edgecaffe.experiment.config import load_config

    overrides = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    overrides.update(output=args.output, synthetic=args.synthetic)
    return load_config(args.config, overrides)


def _plan(args: argparse.Namespace):
    """[(results subfolder, config, arrivals, closed loop, packages)] for every run."""
    from edgecaffe.experiment.config import arrivals_of, expand_matrix
    from edgecaffe.experiment.networks import resolve_infos, resolve_networks
    from edgecaffe.model.info import package_info

    config = _config(args)
    device = _device(args)
    plans = []
    for name, run in expand_matrix(config):
        if args.run_only is not None and name != args.run_only:
            continue
        pool = run.arrivals_networks() if run.arrivals is not None else run.networks
        if args.simulate:
            networks = resolve_infos(pool, run)
            infos = networks
        else:
            networks = resolve_networks(pool, run)
            infos = {n: package_info(p) for n, p in networks.items()}
        service_ms = sum(sum(device.layer_exec_ms(infos[n], layer.name)
                             for layer in infos[n].layers)
                         if device is not None else infos[n].mean_exec_ms
                         for n in run.networks if n in infos)
        arrivals, closed_loop = arrivals_of(run, service_ms)
        plans.append((name, run, arrivals, closed_loop, networks))
    if not plans:
        raise ValueError(f"no run named {args.run_only!r} in this configuration")
    return plans


def _device(args: argparse.Namespace):
    """The device profile for --simulate (None: the profiled times as they are)."""
    if args.device and not args.simulate:
        raise ValueError("--device needs --simulate (a real run uses this machine)")
    if not args.simulate or not args.device:
        return None
    from edgecaffe.sim import load_device

    return load_device(args.device)


def _summary_line(folder, summary) -> str:
    rss = summary["peak_rss_bytes"]
    return (f"{folder}: {summary['completed']}/{summary['requests']} requests, mean response "
            f"{summary['mean_network_response_ms']:.0f} ms (per network), p95 "
            f"{summary['p95_response_ms']:.0f} ms (per request), makespan "
            f"{summary['makespan_ms']:.0f} ms, peak ledger "
            f"{summary['peak_ledger_bytes'] / 2**20:.0f} MiB, "
            + ("simulated" if rss is None else f"peak RSS {rss / 2**20:.0f} MiB"))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecaffe.cli.progress import Progress
    from edgecaffe.experiment.results import is_complete
    from edgecaffe.experiment.runner import run_entry

    if args.swap and not args.enforce_memory:
        raise ValueError("--swap needs --enforce-memory")
    if args.simulate and args.enforce_memory:
        raise ValueError("--enforce-memory limits a real run; a simulated one uses no memory")
    if args.cluster:  # check the flags before building anything
        from edgecaffe.cli.cluster_cmd import check_cluster_args

        check_cluster_args(args)
    plans = _plan(args)
    if args.cluster:
        from edgecaffe.cli.cluster_cmd import run_on_cluster

        return run_on_cluster(args, plans, _device(args))
    if args.enforce_memory:
        return run_limited(args, plans)
    device = _device(args)
    failed = 0
    for name, config, arrivals, closed_loop, networks in plans:
        folder = Path(config.output) / name
        if args.resume and is_complete(folder):
            print(f"{folder}: complete, skipped (--resume)", flush=True)
            continue
        bar = Progress(len(arrivals), name, unit="arrivals", scale=1)
        summary = run_entry(name, config, arrivals, closed_loop, networks, folder,
                            simulate=args.simulate, device=device,
                            on_done=lambda bar=bar: bar.advance(1), backend=args.backend)
        bar.close()
        print(_summary_line(folder, summary), flush=True)
        failed += summary["failed"]
    return 0 if failed == 0 else 1


def run_limited(args: argparse.Namespace, plans) -> int:
    """Run each run in a child process inside a memory cgroup as large as its budget (and with
    the swap file); packages were built before, outside the limit."""
    import json
    import signal
    import subprocess
    import sys
    from contextlib import ExitStack
    from pathlib import Path

    from edgecaffe.experiment.limits import MemoryCgroup, SwapFile
    from edgecaffe.experiment.results import is_complete
    from edgecaffe.sched import parse_bytes

    swap = parse_bytes(args.swap) if args.swap else 0
    worst = 0

    def interrupted(signum, frame):  # a `kill` cleans up like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with ExitStack() as stack:
        if swap:
            stack.enter_context(SwapFile(swap))
        for name, config, *_ in plans:
            if args.resume and is_complete(Path(config.output) / name):
                print(f"{Path(config.output) / name}: complete, skipped (--resume)", flush=True)
                continue
            limit = parse_bytes(config.mem_limit)
            with MemoryCgroup(limit, swap) as cgroup:
                child = subprocess.Popen(
                    [sys.executable, "-m", "edgecaffe", *_child_argv(args.argv, name)],
                    preexec_fn=cgroup.join)
                try:
                    child.wait()
                except BaseException:  # Ctrl-C: stop the run before the limit goes away
                    child.kill()
                    child.wait()
                    raise
                stats = cgroup.stats()
            stats["oom_killed"] = (child.returncode == -signal.SIGKILL
                                   or stats.get("oom_kills", 0) > 0)
            stats["exit_code"] = child.returncode
            folder = Path(config.output) / name
            if folder.exists():
                (folder / "limits.json").write_text(json.dumps(stats, indent=2))
            peak = stats.get("peak_bytes")
            print(f"  memory limit {limit / 2**20:.0f} MiB (cgroup v{stats['cgroup_version']}), "
                  f"swap {swap / 2**20:.0f} MiB: peak "
                  f"{peak / 2**20 if peak else float('nan'):.0f} MiB, swap in/out "
                  f"{stats['swap_in_pages']}/{stats['swap_out_pages']} pages, "
                  f"{'OOM KILLED' if stats['oom_killed'] else 'no OOM kill'}", flush=True)
            if stats["oom_killed"]:
                print(f"edgecaffe experiment: error: the OOM killer ended run {name} at {limit} "
                      "bytes; add --swap or raise --mem-limit", file=sys.stderr)
                worst = 1
            elif child.returncode:
                worst = worst or 1
    return worst
