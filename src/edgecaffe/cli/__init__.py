"""The `edgecaffe` command. Each subcommand lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from edgecaffe import __version__
from edgecaffe.cli import (
    cleanup_cmd,
    demo_cmd,
    device_cmd,
    experiment_cmd,
    export_cmd,
    graph_cmd,
    optimal_cmd,
    pipeline_cmd,
    profile_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
    split_cmd,
    synth_cmd,
    zoo_cmd,
)

COMMANDS = [
    demo_cmd, experiment_cmd, report_cmd, optimal_cmd, device_cmd, run_cmd, pipeline_cmd, zoo_cmd,
    synth_cmd, split_cmd, profile_cmd, export_cmd, graph_cmd, serve_cmd, cleanup_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecaffe",
        description="Memory-aware multi-DNN inference for edge devices (Caffe models in numpy).",
    )
    parser.add_argument("--version", action="version", version=f"edgecaffe {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an internal error, print the full traceback")
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
    from edgecaffe.errors import EdgeCaffeError

    try:
        return args.handler(args) or 0
    except (EdgeCaffeError, OSError) as error:  # bad input or environment: the message says
        if args.debug:
            traceback.print_exc()
        print(f"edgecaffe {args.command}: error: {_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything else is a bug: show where it happened
        return _internal_error(args, error)


def _message(error: BaseException) -> str:
    """An error's one line; an OSError as 'PATH: what happened' (which file, not the errno),
    naming a missing folder when the file could not be created in it."""
    if not isinstance(error, OSError) or not error.filename:
        return str(error)
    path = Path(str(error.filename).removesuffix(".partial"))
    if isinstance(error, FileNotFoundError) and path.parent != path and \
            not path.parent.exists():
        return f"{path}: cannot write it: the folder {path.parent} does not exist"
    return f"{path}: {error.strerror or error}"


def _internal_error(args: argparse.Namespace, error: Exception) -> int:
    """Report a bug: the exception and its last frames (all of them with --debug)."""
    frames = traceback.format_exception(type(error), error, error.__traceback__,
                                        limit=None if args.debug else -3)
    print(f"edgecaffe {args.command}: internal error (a bug in edgecaffe, please report it): "
          f"{type(error).__name__}: {error}", file=sys.stderr)
    print("".join(frames).rstrip(), file=sys.stderr)
    if not args.debug:
        print("rerun with --debug (edgecaffe --debug COMMAND ...) for the full traceback",
              file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
