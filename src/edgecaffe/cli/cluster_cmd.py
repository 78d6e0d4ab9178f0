"""`edgecaffe experiment ... --cluster ADDRESS`: a matrix's runs on a Dask distributed cluster
(`experiment/cluster.py`); here only the flags, the local cluster and the printing."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LOCAL = re.compile(r"local:(\d+)$")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "campaigns across machines (the `cluster` extra: pip install 'edgecaffe[cluster]')")
    group.add_argument("--cluster", metavar="ADDRESS",
                       help="run every run of the matrix as a Dask task: tcp://HOST:8786 (a "
                       "running `dask scheduler`) or local:N (N worker processes on this "
                       "machine, 1 thread each, listening on 127.0.0.1 only)")
    group.add_argument("--retries", type=int, default=1, metavar="N",
                       help="with --cluster: submit a failing run again at most N times "
                       "(default 1)")
    group.add_argument("--shared-results", action="store_true",
                       help="with --cluster: workers write results straight under -o, a "
                       "path every worker sees (e.g. NFS), instead of sending them home")
    group.add_argument("--worker-device", metavar="NAME",
                       help="with --cluster: real runs only on workers named NAME or NAME-* "
                       "(a worker declares its device by its --name, e.g. rpi4-a)")


def check_cluster_args(args: argparse.Namespace) -> None:
    """Refuse what cannot work before anything is built: no Dask, a bad address, flags a
    campaign does not take."""
    from edgecaffe.experiment.cluster import ClusterError, require_distributed

    address = args.cluster
    if not (LOCAL.match(address) or re.match(r"(tcp|tls|ws|wss)://\S+:\d+$", address)):
        raise ClusterError(f"--cluster {address!r}: give tcp://HOST:PORT (a dask scheduler) "
                           "or local:N (N worker processes on this machine)")
    match = LOCAL.match(address)
    if match and int(match.group(1)) < 1:
        raise ClusterError("--cluster local:N needs N >= 1")
    if args.swap:
        raise ClusterError("--cluster does not take --swap: give the workers' machines swap "
                           "of their own (--enforce-memory limits each run's memory)")
    if args.run_only is not None:
        raise ClusterError("--cluster runs the whole matrix; drop --run-only")
    if args.retries < 0:
        raise ClusterError(f"--retries must be >= 0, got {args.retries}")
    if args.worker_device and args.simulate:
        raise ClusterError("--worker-device places real runs; simulated runs go anywhere")
    require_distributed()


def _specs(args: argparse.Namespace, plans, device):
    """(RunSpecs to submit, {run: results folder}) for the runs not yet complete."""
    from edgecaffe.experiment.cluster import RunSpec, weights_fingerprint
    from edgecaffe.experiment.results import is_complete
    from edgecaffe.sched import parse_bytes

    specs, folders = [], {}
    for name, config, arrivals, closed_loop, networks in plans:
        folder = Path(config.output) / name
        if args.resume and is_complete(folder):
            print(f"{folder}: complete, skipped (--resume)", flush=True)
            continue
        folders[name] = folder
        specs.append(RunSpec(
            name, config, list(arrivals), closed_loop, parse_bytes(config.mem_limit),
            simulate=args.simulate, device=device,
            infos=dict(networks) if args.simulate else None,
            fingerprints={} if args.simulate else {
                n: weights_fingerprint(p) for n, p in networks.items()},
            shared_folder=str(folder.resolve()) if args.shared_results else None,
            enforce_memory=bool(args.enforce_memory)))
    return specs, folders


def _client(address: str, retries: int, stack):
    """A Client on the cluster at `address`; local:N starts one bound to 127.0.0.1 only."""
    import tempfile

    import dask
    from distributed import Client, LocalCluster

    match = LOCAL.match(address)
    if match is None:
        try:
            return stack.enter_context(Client(address, timeout="30s"))
        except (OSError, TimeoutError) as failure:  # distributed's timeout is an OSError
            from edgecaffe.errors import UsageError

            raise UsageError(f"--cluster {address}: cannot reach a Dask scheduler there "
                             f"({failure}); start one with `dask scheduler` and workers with "
                             "`dask worker ADDRESS --resources device=1` (docs/experiments.md), "
                             "or use --cluster local:N") from None
    # The cluster's scratch space, removed after the cluster closes, however the campaign ends.
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecaffe-dask-"))
    # A lost worker's run is started again at most `retries` times, as a failing one is.
    stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": retries,
                                         "temporary-directory": scratch}))
    cluster = stack.enter_context(LocalCluster(
        local_directory=scratch, n_workers=int(match.group(1)), threads_per_worker=1,
        processes=True,
        # Every listener on loopback, on a free port (the scheduler's HTTP server even with
        # the dashboard off would take :8787).
        host="127.0.0.1", dashboard_address="127.0.0.1:0", resources={"device": 1},
        silence_logs=50))
    return stack.enter_context(Client(cluster))


def log(bar, line: str) -> None:
    """Print a line above the progress bar (which the next update redraws)."""
    if bar.enabled:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    print(line, flush=True)


def run_on_cluster(args: argparse.Namespace, plans, device) -> int:
    """Run `plans` (experiment_cmd._plan) on the cluster `args.cluster`; print each run's
    summary line, failures with their errors, and per-worker activity."""
    from contextlib import ExitStack

    from edgecaffe.cli.experiment_cmd import _summary_line
    from edgecaffe.cli.progress import Progress
    from edgecaffe.experiment.campaign import run_campaign
    from edgecaffe.experiment.cluster import scheduler_workers

    specs, folders = _specs(args, plans, device)
    if not specs:
        print("every run is complete; nothing to do", flush=True)
        return 0
    bar = Progress(len(specs), "campaign", unit="runs", scale=1, detail_width=100)
    seen = [0]

    def progress(campaign) -> None:
        finished = campaign.done + campaign.failed
        bar.advance(finished - seen[0], campaign.status())
        seen[0] = finished

    with ExitStack() as stack:
        client = _client(args.cluster, args.retries, stack)
        workers = scheduler_workers(client)
        print(f"cluster {args.cluster}: {len(workers)} workers "
              f"({', '.join(sorted(str(w['name']) for w in workers.values()))}); "
              f"{len(specs)} runs", flush=True)
        campaign = run_campaign(client, specs, folders, retries=args.retries,
                                worker_device=args.worker_device,
                                log=lambda line: log(bar, line),
                                on_progress=progress)
    bar.close()
    failed_requests = 0
    for spec in specs:
        summary = campaign.summaries.get(spec.name)
        if summary is not None:
            print(_summary_line(folders[spec.name], summary), flush=True)
            failed_requests += summary["failed"]
    for worker, counts in sorted(campaign.per_worker.items()):
        print(f"worker {worker}: {counts['done']:.0f} runs done, {counts['failed']:.0f} "
              f"failed, busy {counts['busy_s']:.1f} s", flush=True)
    print(f"campaign: {campaign.done} done, {campaign.failed} failed", flush=True)
    return 0 if campaign.failed == 0 and failed_requests == 0 else 1
