"""`edgecaffe experiment [CONFIG] [flags]`: run one configuration and write its results folder."""

from __future__ import annotations

import argparse

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.errors import UsageError


def blas_threads_arg(text: str) -> int | str:
    """`--blas-threads`: "adaptive" or a count (checked by the config's schema)."""
    return text if text == "adaptive" else int(text)


FLAGS = [  # (flag, config key, type, help)
    ("--mode", "mode", str, "execution mode"),
    ("--policy", "policy", str, "scheduling policy (default: the mode's own)"),
    ("--mem-limit", "mem_limit", str, "memory budget, e.g. 512M, 1G"),
    ("--granularity", "granularity", str, "memory accounting"),
    ("--n-workers", "workers", int, "worker threads"),
    ("--blas-threads", "blas_threads", blas_threads_arg,
     "BLAS threads per execution: a count, or adaptive (the default: the cores shared out "
     "among the executions running)"),
    ("--networks", "networks", str,
     "comma-separated networks (zoo names, folders or .onnx files under --network-path)"),
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
    ("--context", "context", str, "context policy for gated networks (config key gated): "
     "aware (load them once their condition holds), oblivious (load them speculatively) or "
     "aware-idle (load them speculatively only into budget nothing else asks for)"),
    ("--context-share", "context_share", float, "share of requests whose parent network "
     "finds something (0 to 1; the gated networks run on those only)"),
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
    parser.add_argument("--force", action="store_true",
                        help="replace the results of an earlier run in the same folder (else "
                        "such a run is refused)")
    parser.add_argument("--allow-large", action="store_true", default=None,
                        help="lift the config schema's upper bounds (n-arrivals, n-workers, "
                        "repetitions, ...; see docs/experiments.md)")
    parser.add_argument("--keep-weights", action="store_true", default=None,
                        help="keep freed weights in memory while the budget has room, so that "
                        "later loads of the same layer read nothing (config key keep-weights; "
                        "off: the paper's load/free)")
    parser.add_argument("--enforce-memory", action="store_true",
                        help="run inside a cgroup memory limit equal to the budget (needs root)")
    parser.add_argument("--simulate", action="store_true",
                        help="simulate instead of running: the same scheduler on a virtual "
                        "clock, with profiled per-layer times (or --device); writes the same "
                        "results")
    parser.add_argument("--device", metavar="PROFILE",
                        help="with --simulate: a device profile, built in (host, rpi4-sd) or a "
                        "YAML file (compute-factor, storage-mb-per-s, load-latency-ms, gflops)")
    parser.add_argument("--allow-overcommit", action="store_true",
                        help="accept tasks admitted over the budget (a layer larger than the "
                        "budget runs alone, over it); without it such a run ends with a warning "
                        "and exit status 1")
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
    overrides.update(output=args.output, synthetic=args.synthetic, allow_large=args.allow_large,
                     keep_weights=args.keep_weights)
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
        pool = run.arrivals_networks() if run.arrivals is not None else run.all_networks()
        if args.simulate:
            networks = resolve_infos(pool, run)
            infos = networks
        else:
            networks = resolve_networks(pool, run)
            infos = {n: package_info(p) for n, p in networks.items()}
        arrivals, closed_loop = arrivals_of(run, _service_ms(run, infos, device))
        if not closed_loop:
            _warn_if_overloaded(name, run, arrivals, infos, device)
        plans.append((name, run, arrivals, closed_loop, networks))
    if not plans:
        raise UsageError(f"no run named {args.run_only!r} in this configuration")
    return plans


def _service_ms(run, infos, device) -> float:
    """A request's loads and executions, run alone, with the BLAS threads the run will use."""
    from edgecaffe.experiment.runner import service_ms

    threads = _threads(run, device)[1]
    work = service_ms(run.unconditional(), infos, device, threads)
    if run.gated:  # the gated networks' expected share: how often, and on how many inputs
        work += _expected_count(run) * service_ms(list(run.gated), infos, device, threads)
    return work


def _expected_count(run) -> float:
    """Mean inputs per request of each gated network: share x mean detection count."""
    counts = run.detections if isinstance(run.detections, dict) else {run.detections: 1.0}
    mean = sum(k * w for k, w in counts.items()) / sum(counts.values())
    return run.context_share * mean


def _threads(run, device) -> tuple[int, int]:
    """(workers, BLAS threads per exec) of a run, on the device if simulated."""
    from edgecaffe.blas import default_blas_threads
    from edgecaffe.sched import MODES

    workers = MODES[run.mode].workers or run.workers
    if device is not None and device.parallelism is not None:
        workers = min(workers, device.parallelism)
    # Adaptive threads give each busy worker its share of the cores, as a fixed count does.
    return workers, (run.blas_threads if isinstance(run.blas_threads, int)
                     else default_blas_threads(int(workers)))


def _offered_load(run, arrivals, infos, device) -> tuple[float, float, float, int] | None:
    """(rho, work ms per request, mean gap ms, workers) of an open-loop run: the sum of every
    task's time (loads and executions, as the device or the profile gives them) per request,
    over what the workers can do in the mean gap. rho >= 1 means requests come faster than the
    workers could serve them even if they never waited for memory or each other. None when the
    times are not known (unprofiled packages) or there is one arrival."""
    import math

    from edgecaffe.experiment.runner import isolated_totals_ms

    if len(arrivals) < 2:
        return None
    workers, threads = _threads(run, device)
    totals = {name: sum(isolated_totals_ms(info, device, threads))
              for name, info in infos.items()}
    work_ms = sum(sum(totals.get(n, math.nan) for n in a.networks)
                  + (a.detections or 0) * sum(totals.get(c, math.nan) for c, _ in a.gated)
                  for a in arrivals) / len(arrivals)
    gap_ms = sum(a.gap_ms for a in arrivals[1:]) / (len(arrivals) - 1)
    if not math.isfinite(work_ms) or gap_ms <= 0:
        return None
    return work_ms / (gap_ms * workers), work_ms, gap_ms, workers


def _warn_if_overloaded(name, run, arrivals, infos, device) -> None:
    load = _offered_load(run, arrivals, infos, device)
    if load is not None and load[0] >= 1:
        import warnings

        rho, work_ms, gap_ms, workers = load
        warnings.warn(
            f"run {name}: offered load rho = {rho:.2f} >= 1: each request brings "
            f"{work_ms:.0f} ms of loads and executions, arriving every {gap_ms:.0f} ms on "
            f"average, more than {workers:g} worker(s) can do; the queue and the response "
            "times grow without bound. Give a larger mean-gap-ms, or a multiplier (the gap as "
            "a multiple of the mean service time)", stacklevel=2)


def _device(args: argparse.Namespace):
    """The device profile for --simulate (None: the profiled times as they are)."""
    if args.device and not args.simulate:
        raise UsageError("--device needs --simulate (a real run uses this machine)")
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
        raise UsageError("--swap needs --enforce-memory")
    if args.simulate and args.enforce_memory:
        raise UsageError("--enforce-memory limits a real run; a simulated one uses no memory")
    if args.cluster:  # check the flags before building anything
        from edgecaffe.cli.cluster_cmd import check_cluster_args

        check_cluster_args(args)
    plans = _plan(args)
    if args.run_only is None:  # a --run-only child's parent has claimed the folders
        from edgecaffe.experiment.results import claim_run_folder

        names = [name for name, *_ in plans]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise UsageError(f"the matrix has several runs named {', '.join(twice)} (a set or "
                             "value listed twice); each would overwrite the other's results")
        if not args.cluster:  # a campaign writes its runs home itself (and may --resume)
            from edgecaffe.experiment.results import is_complete

            for name, config, *_ in plans:
                folder = Path(config.output) / name
                if args.resume and is_complete(folder):
                    continue  # skipped below
                # --resume reruns an incomplete run: its partial files may be replaced.
                claim_run_folder(folder, config.output, args.force or args.resume)
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
        failed += summary["failed"] + overcommitted(name, config.mem_limit, summary, args)
    return 0 if failed == 0 else 1


def overcommitted(name: str, budget: str, summary, args: argparse.Namespace) -> int:
    """1 (and a warning) when tasks were admitted over the budget without --allow-overcommit;
    the engine and the simulator record such forced admissions in the trace."""
    import sys

    forced = summary.get("forced_admissions") or 0
    if not forced or args.allow_overcommit:
        return 0
    print(f"edgecaffe experiment: warning: run {name}: {forced} task(s) were admitted over the "
          f"{budget} budget (the progress rule: nothing was running and no ready task fitted, "
          "because a task needs more than the budget or partly loaded networks held it), so "
          "this run did not keep to its budget; raise --mem-limit, or add --allow-overcommit "
          "to accept it", file=sys.stderr)
    return 1


def run_limited(args: argparse.Namespace, plans) -> int:
    """Run each run in a child process inside a memory cgroup as large as its budget (and with
    the swap file); packages were built before, outside the limit. Nothing outlives the run:
    see `edgecaffe/leftovers.py` (run record, reaper, children dying with the parent)."""
    import os
    import signal
    import sys

    from edgecaffe.experiment.limits import LimitError
    from edgecaffe.leftovers import Reaper, RunRecord, find_leftovers

    if os.geteuid() != 0:
        raise LimitError("--enforce-memory needs root to create a memory cgroup; without it "
                         "the budget is still kept by the scheduler's accounting")
    leftovers = find_leftovers()
    if leftovers:
        print(f"edgecaffe experiment: warning: earlier runs left {len(leftovers)} item(s): "
              + ", ".join(f"{kind} {path}" for kind, path in leftovers[:5])
              + ("..." if len(leftovers) > 5 else "") + "; `edgecaffe cleanup` removes them",
              file=sys.stderr, flush=True)

    def interrupted(signum, frame):  # `kill` and a closed terminal clean up like Ctrl-C does
        raise KeyboardInterrupt

    handlers = {signum: signal.signal(signum, interrupted)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    record = RunRecord.create()
    reaper = Reaper(record)
    try:
        return _run_limited(args, plans, record, os.getpid())
    finally:
        if not record.remaining():  # else the reaper removes what is left when released
            record.forget()
        reaper.release()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _run_limited(args: argparse.Namespace, plans, record, parent: int) -> int:
    import json
    import os
    import signal
    import sys
    from contextlib import ExitStack
    from pathlib import Path

    from edgecaffe.experiment.limits import MemoryCgroup, SwapFile, run_in_cgroup
    from edgecaffe.experiment.results import is_complete
    from edgecaffe.leftovers import die_with_parent
    from edgecaffe.sched import parse_bytes

    swap = parse_bytes(args.swap) if args.swap else 0
    worst = 0
    orphan = die_with_parent(parent)
    with ExitStack() as stack:
        if swap:
            swap_file = stack.enter_context(SwapFile(swap))
            record.swap = str(swap_file.path)
            record.save()
        for name, config, _, _, networks in plans:
            if args.resume and is_complete(Path(config.output) / name):
                print(f"{Path(config.output) / name}: complete, skipped (--resume)", flush=True)
                continue
            limit = parse_bytes(config.mem_limit)
            # Blocked copies of layers too large for the limit are written here, outside it
            # (the run's engine finds them in the cache).
            from edgecaffe.engine.limit import RUNTIME_ESTIMATE_BYTES, blocked_packages

            blocked_packages(networks, max(1, limit - RUNTIME_ESTIMATE_BYTES))
            with MemoryCgroup(limit, swap) as cgroup:
                record.cgroups.append(str(cgroup.path))
                record.save()
                from edgecaffe.experiment.runner import ENFORCED_ENV

                child, _, _, stats = run_in_cgroup(
                    cgroup, record,
                    [sys.executable, "-m", "edgecaffe", *_child_argv(args.argv, name)], orphan,
                    env={**os.environ, ENFORCED_ENV: "1"})
            record.cgroups.remove(str(cgroup.path))
            record.children.clear()
            record.save()
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
