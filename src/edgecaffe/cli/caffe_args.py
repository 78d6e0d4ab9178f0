"""Flags shared by the commands that read Caffe files: net state (--stage, --level) and input
size (--input-size)."""

from __future__ import annotations

import argparse
from typing import Any


def input_size(text: str) -> tuple[int, int]:
    """'HxW' (or 'H,W') -> (H, W), both positive."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-size wants HxW, e.g. 300x400, not {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"--input-size {text!r}: sizes must be positive")
    return height, width


def add_caffe_flags(parser: argparse.ArgumentParser, input_size_flag: bool = True) -> None:
    """--stage (repeatable), --level and (optionally) --input-size."""
    parser.add_argument("--stage", action="append", default=None, metavar="NAME",
                        help="a Caffe NetState stage for include/exclude rules (repeatable; "
                        "added to the prototxt's own state { stage })")
    parser.add_argument("--level", type=int, default=None,
                        help="the Caffe NetState level for min_level/max_level rules (default 0)")
    if input_size_flag:
        parser.add_argument("--input-size", type=input_size, default=None, metavar="HxW",
                            help="reshape the network's input to H x W before inferring shapes "
                            "(fully convolutional networks)")


def caffe_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `load_caffe` keyword arguments the flags ask for (only those given)."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "stage", None):
        kwargs["stages"] = list(args.stage)
    if getattr(args, "level", None) is not None:
        kwargs["level"] = args.level
    if getattr(args, "input_size", None) is not None:
        kwargs["input_shape"] = list(args.input_size)
    return kwargs
