"""The `edgecaffe` command. Each subcommand lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from edgecaffe import __version__
from edgecaffe.cli import (
    demo_cmd,
    device_cmd,
    experiment_cmd,
    export_cmd,
    graph_cmd,
    optimal_cmd,
    profile_cmd,
    report_cmd,
    run_cmd,
    split_cmd,
    synth_cmd,
    zoo_cmd,
)

COMMANDS = [
    demo_cmd, experiment_cmd, report_cmd, optimal_cmd, device_cmd, run_cmd, zoo_cmd, synth_cmd,
    split_cmd, profile_cmd, export_cmd, graph_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecaffe",
        description="Memory-aware multi-DNN inference for edge devices (Caffe models in numpy).",
    )
    parser.add_argument("--version", action="version", version=f"edgecaffe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"edgecaffe: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # Users need the message, not our source line; only while the command runs (a program
    # calling `main` gets its own warning display back).
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from edgecaffe.model.errors import ModelError

    try:
        return args.handler(args) or 0
    except (ModelError, OSError, ValueError) as error:
        print(f"edgecaffe {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
