"""`edgecaffe cleanup [--dry-run]`: remove what earlier `--enforce-memory` runs left behind."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "cleanup", help="remove cgroups, swap files and processes that earlier runs left",
        description="Find what `edgecaffe experiment --enforce-memory [--swap]` runs that are no "
        "longer running left behind, and remove it: their run records, their memory cgroups "
        "(edgecaffe-<pid>-<n>, cgroup v1 and v2; processes still inside are killed), their swap "
        "files (/var/tmp/edgecaffe-<pid>-<n>.swap; swapoff first) and their orphan processes. "
        "Nothing that belongs to a live run is touched. Needs root to remove.",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="only list what would be removed")
    parser.add_argument("--legacy", action="store_true",
                        help="also remove /var/tmp/edgecaffe.swap, the fixed swap path of "
                        "versions before per-run names (make sure no such run is active)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from edgecaffe.errors import UsageError
    from edgecaffe.leftovers import find_leftovers, remove_leftovers

    found = find_leftovers()
    if not found:
        print("nothing left behind by earlier runs")
        return 0
    if args.dry_run:
        for kind, path in found:
            print(f"would remove {kind} {path}")
        return 0
    if os.geteuid() != 0:
        raise UsageError(f"{len(found)} leftover item(s) need root to remove; rerun as root "
                         "(or see them with --dry-run)")
    lines = remove_leftovers(found, legacy=args.legacy)
    for line in lines:
        print(line)
    failed = [line for line in lines if line.startswith("could not")]
    return 1 if failed else 0
