"""Registry of converters: ONNX op type -> function that maps one node onto IR layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecaffe.model.onnx.context import ImportContext

Converter = Callable[[ImportContext], None]


@dataclass(frozen=True)
class Entry:
    convert: Converter
    #: Opsets this mapping covers (inclusive); None for "the newest onnx knows".
    since: int
    until: int | None
    note: str


CONVERTERS: dict[str, Entry] = {}


def converts(*op_types: str, since: int = 11, until: int | None = None, note: str = ""):
    """Decorator: register a converter for `op_types` over opsets `since`..`until`."""

    def register(function: Converter) -> Converter:
        for op_type in op_types:
            if op_type in CONVERTERS:
                raise RuntimeError(f"two converters for {op_type}")
            CONVERTERS[op_type] = Entry(function, since, until, note)
        return function

    return register
