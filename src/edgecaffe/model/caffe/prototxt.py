"""Reading Caffe's text network definitions (V1 `layers` and V2 `layer`, legacy input headers)."""

from __future__ import annotations

import warnings
from pathlib import Path

from google.protobuf import text_format

from edgecaffe.model.caffe.schema import message_class
from edgecaffe.model.errors import ModelError


class CaffeError(ModelError):
    """A Caffe file that cannot be read; the message names the file and, where known, the layer."""


def parse_prototxt(text: str, source: str = "<string>"):
    """Parse prototxt text into a `NetParameter` message.

    Fields outside our schema (solver settings, data-layer options, fields of other Caffe forks)
    are skipped with a warning naming the first one; a syntax error raises `CaffeError` with the
    line and column.
    """
    net_class = message_class("NetParameter")
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as some editors write
    try:
        return text_format.Parse(text, net_class())
    except text_format.ParseError as error:
        if "has no field named" not in str(error):
            raise CaffeError(f"{source}: malformed prototxt: {error}") from None
        first_unknown = str(error)
    except RecursionError:
        raise CaffeError(f"{source}: malformed prototxt: blocks nested too deeply to read "
                         "(thousands of unclosed `{`)") from None
    try:
        net = text_format.Parse(text, net_class(), allow_unknown_field=True)
    except text_format.ParseError as error:
        raise CaffeError(f"{source}: malformed prototxt: {error}") from None
    except RecursionError:
        raise CaffeError(f"{source}: malformed prototxt: blocks nested too deeply to read "
                         "(thousands of unclosed `{`)") from None
    warnings.warn(
        f"{source}: skipped fields that are not in EdgeCaffe's Caffe schema (options of layers "
        "it does not run, or of other Caffe forks; if a layer it runs depends on one, results "
        f"may differ from that fork's), first at {first_unknown}", stacklevel=3
    )
    return net


def read_prototxt(path: str | Path):
    """Read a .prototxt file into a `NetParameter` message."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaffeError(f"{path}: cannot read prototxt: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeError(
            f"{path}: not a text prototxt (binary data; a .caffemodel given as the prototxt?)"
        ) from None
    net = parse_prototxt(text, str(path))
    if not net.layer and not net.layers:
        raise CaffeError(f"{path}: the prototxt defines no layers")
    return net
