"""`edgecaffe device [-o FILE.yaml]`: measure this machine as a device profile for the
simulator."""

from __future__ import annotations

import argparse

from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "device", help="measure this machine's parallelism into a device profile (simulator)",
        description="Measure how many tasks this machine runs at full speed at once (a "
        "convolution on one BLAS thread plus a 4 MB copy and CRC, on 1 thread, then on N at the "
        "same time) and print "
        "a device profile for `edgecaffe experiment --simulate --device FILE`: execution and "
        "load times as profiled, with that parallelism. Shared or throttled virtual cores often "
        "give much less than the core count.",
    )
    parser.add_argument("-o", "--output", metavar="FILE.yaml", help="write the profile here")
    parser.add_argument("--threads", type=int, default=None,
                        help="concurrent tasks to measure (default: the core count, at most 4)")
    parser.add_argument("--name", default="host-measured", help="the profile's name")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import yaml

    from edgecaffe.sim.device import measure_parallelism

    threads = args.threads or max(2, min(4, os.cpu_count() or 1))
    if threads < 2:
        raise UsageError(f"--threads must be 2 or more, got {threads}")
    parallelism = measure_parallelism(threads)
    text = yaml.safe_dump({"name": args.name, "compute-factor": 1.0,
                           "parallelism": parallelism}, sort_keys=False)
    print(f"# {threads} concurrent tasks ran {parallelism:g}x as fast as one "
          f"({os.cpu_count()} cores)")
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0
