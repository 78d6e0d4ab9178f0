"""Streaming access to binary .caffemodel files (a serialized NetParameter).

A caffemodel can be larger than the memory of the device reading it (VGG-19: 575 MB), so it is
never parsed whole. `CaffeModelReader` walks the protobuf wire format over a memory map to index
each layer's name, type and blob positions, touching only those few header bytes; `read_blobs`
then reads one layer's float data from the file straight into fresh numpy arrays. Small
sub-messages (blob shapes, layer headers) go through the protobuf classes of `schema.py`.
`write_caffemodel` streams the other way, one layer at a time.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from math import prod
from pathlib import Path

import numpy as np

from edgecaffe.model.caffe.layers import V1_TYPES
from edgecaffe.model.caffe.prototxt import CaffeError
from edgecaffe.model.caffe.schema import message_class

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# NetParameter fields: number -> wire type (layer = 100 in V2, layers = 2 in V1).
_NET_FIELDS = {1: _LENGTH, 2: _LENGTH, 3: _LENGTH, 4: None, 5: _VARINT, 6: _LENGTH,
               7: _VARINT, 8: _LENGTH, 100: _LENGTH}


class _MalformedError(Exception):
    pass


class _UnreadableEncodingError(Exception):
    """A well-formed blob whose values are stored in an encoding we cannot read."""


#: NVIDIA Caffe's BlobProto.raw_data_type (its caffe.proto `enum Type`) -> numpy dtype.
_RAW_TYPES = {0: ("DOUBLE", "<f8"), 1: ("FLOAT", "<f4"), 2: ("FLOAT16", "<f2")}
_RAW_UNREADABLE = {3: "INT", 4: "UINT", 5: "BOOL"}
#: BlobProto fields that carry values we never read (gradients), by field number.
_DIFF_FIELDS = {6, 9, 11, 13}


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _MalformedError("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _MalformedError("a varint is longer than 10 bytes")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or start, end) for each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _MalformedError(f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == _LENGTH:
            length, pos = _varint(buf, pos, end)
        elif wire == _FIXED32:
            length = 4
        elif wire == _FIXED64:
            length = 8
        else:
            raise _MalformedError(f"wire type {wire} (field {number}) at byte {pos}")
        if pos + length > end:
            raise _MalformedError(
                f"field {number} at byte {pos} needs {length} bytes but only {end - pos} remain"
            )
        yield number, wire, pos, pos + length
        pos += length


@dataclass
class LayerRecord:
    """Where one layer of a caffemodel sits in the file."""

    name: str
    type: str
    blob_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(end - start for start, end in self.blob_spans)


@cache
def _v1_type_names() -> dict[int, str]:
    enum = message_class("V1LayerParameter").DESCRIPTOR.enum_types_by_name["LayerType"]
    return {value.number: V1_TYPES.get(value.name, value.name) for value in enum.values}


def _v1_type_name(number: int) -> str:
    return _v1_type_names().get(number, f"V1 type {number}")


class CaffeModelReader:
    """Index of a caffemodel's layers; reads one layer's blobs at a time.

    Use as a context manager, or call `close()`. Thread-safe for concurrent `read_blobs`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise CaffeError(f"{self.path}: cannot open caffemodel: {error.strerror}") from None
        self._lock = threading.Lock()
        self.size = os.fstat(self._file.fileno()).st_size
        if self.size == 0:
            self._file.close()
            raise CaffeError(f"{self.path}: empty file, not a caffemodel")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.name = ""
        self.layers: dict[str, LayerRecord] = {}
        try:
            self._index()
        except CaffeError:
            self.close()
            raise

    def _index(self) -> None:
        buf, order = self._map, 0
        try:
            for number, wire, start, end in _fields(buf, 0, self.size):
                expected = _NET_FIELDS.get(number, -1)
                if expected == -1 or (expected is not None and wire != expected):
                    raise _MalformedError(
                        f"unexpected field {number} (wire type {wire}) at byte {start}"
                    )
                if number == 1:
                    self.name = bytes(buf[start:end]).decode("utf-8", "replace")
                elif number in (2, 100):
                    record = self._index_layer(start, end, v1=number == 2, order=order)
                    self.layers[record.name] = record
                    order += 1
        except _MalformedError as error:
            where = f" after layer {list(self.layers)[-1]!r}" if self.layers else ""
            truncated = "remain" in str(error) or "past the end" in str(error)
            what = "truncated or corrupt caffemodel" if truncated else "not a caffemodel"
            raise CaffeError(f"{self.path}: {what}{where}: {error}") from None
        if not self.layers:
            raise CaffeError(f"{self.path}: not a caffemodel: it holds no layers")

    def _index_layer(self, start: int, end: int, v1: bool, order: int) -> LayerRecord:
        name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
        record = LayerRecord(name=f"#{order}", type="")
        for number, wire, a, b in _fields(self._map, start, end):
            if number == name_field and wire == _LENGTH:
                record.name = bytes(self._map[a:b]).decode("utf-8", "replace")
            elif number == type_field:
                if v1 and wire == _VARINT:
                    record.type = _v1_type_name(a)
                elif wire == _LENGTH:
                    record.type = bytes(self._map[a:b]).decode("utf-8", "replace")
            elif number == blob_field and wire == _LENGTH:
                record.blob_spans.append((a, b))
        return record

    def read_blobs(self, name: str) -> list[np.ndarray]:
        """The blobs of layer `name`, as fresh float32 arrays in their stored shapes.

        Reads BVLC's `data` (float) and `double_data`, the legacy 4-d header, and NVIDIA Caffe's
        `raw_data` + `raw_data_type` (FLOAT, FLOAT16, DOUBLE). A blob stored in an encoding we
        cannot read raises CaffeError saying so; a damaged one, saying it is damaged.
        """
        record = self.layers[name]
        blobs = []
        for index, (start, end) in enumerate(record.blob_spans):
            try:
                blobs.append(self._read_blob(start, end))
            except _UnreadableEncodingError as error:
                raise CaffeError(f"{self.path}: layer {name!r} blob {index}: {error}") from None
            except _MalformedError as error:
                raise CaffeError(f"{self.path}: layer {name!r} blob {index}: damaged (truncated "
                                 f"or corrupt) weight blob: {error}") from None
        return blobs

    def _read_blob(self, start: int, end: int) -> np.ndarray:
        legacy = {1: 0, 2: 0, 3: 0, 4: 0}
        shape = None
        data = None
        raw_span = raw_type = None
        loose: list[bytes] = []
        unknown: list[int] = []
        for number, wire, a, b in _fields(self._map, start, end):
            if number == 7 and wire == _LENGTH:
                shape = self._blob_shape(a, b)
            elif number in legacy and wire == _VARINT:
                legacy[number] = a
            elif number == 5 and wire == _LENGTH:
                if (b - a) % 4:
                    raise _MalformedError(f"float data of {b - a} bytes is not whole floats")
                data = self._read_array(a, (b - a) // 4, "<f4")
            elif number == 5 and wire == _FIXED32:  # unpacked repeated float
                loose.append(bytes(self._map[a:b]))
            elif number == 8 and wire == _LENGTH:
                if (b - a) % 8:
                    raise _MalformedError(f"double data of {b - a} bytes is not whole doubles")
                data = self._read_array(a, (b - a) // 8, "<f8").astype(np.float32)
            elif number == 10 and wire == _VARINT:
                raw_type = a
            elif number == 12 and wire == _LENGTH:
                raw_span = (a, b)
            elif number not in _DIFF_FIELDS:
                unknown.append(number)
        if raw_span is not None and data is None and not loose:
            data = self._read_raw(raw_span, raw_type)
        if data is None and not loose and unknown:
            raise _UnreadableEncodingError(
                f"its values are in field(s) {sorted(set(unknown))} of BlobProto, an encoding "
                "EdgeCaffe cannot read (BVLC's data/double_data and NVIDIA Caffe's raw_data are "
                "read; is this file from another Caffe fork?)")
        if data is None:
            data = np.frombuffer(b"".join(loose), dtype="<f4").astype(np.float32)
        if shape is None:
            dims = [legacy[i] for i in (1, 2, 3, 4)]
            shape = tuple(dims) if any(dims) else (data.size,)
        if prod(shape) != data.size:
            raise _MalformedError(
                f"shape {shape} declares {prod(shape)} values but {data.size} are stored"
            )
        return data.reshape(shape)

    def _blob_shape(self, start: int, end: int) -> tuple[int, ...]:
        dims = []
        for number, wire, a, b in _fields(self._map, start, end):
            if number != 1:
                continue
            if wire == _VARINT:
                dims.append(a)
            elif wire == _LENGTH:  # packed
                pos = a
                while pos < b:
                    value, pos = _varint(self._map, pos, b)
                    dims.append(value)
        # int64 dims: a negative value arrives as a 10-byte two's complement varint.
        dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
        if any(d < 0 for d in dims):
            raise _MalformedError(f"blob shape {dims} has a negative dimension")
        return tuple(dims)

    def _read_raw(self, span: tuple[int, int], raw_type: int | None) -> np.ndarray:
        """NVIDIA Caffe's raw_data (blob.cpp FromProto): count * sizeof(type) bytes."""
        a, b = span
        if raw_type is None:
            raise _MalformedError("raw_data without raw_data_type")
        if raw_type not in _RAW_TYPES:
            name = _RAW_UNREADABLE.get(raw_type, f"number {raw_type}")
            raise _UnreadableEncodingError(
                f"its values are NVIDIA Caffe raw_data of type {name}, an encoding EdgeCaffe "
                "cannot read as weights (FLOAT, FLOAT16 and DOUBLE are read)")
        type_name, dtype = _RAW_TYPES[raw_type]
        size = np.dtype(dtype).itemsize
        if (b - a) % size:
            raise _MalformedError(f"{type_name} raw_data of {b - a} bytes is not whole values")
        array = self._read_array(a, (b - a) // size, dtype)
        return array.astype(np.float32, copy=False)

    def _read_array(self, offset: int, count: int, dtype: str) -> np.ndarray:
        array = np.empty(count, dtype=dtype)
        view = memoryview(array).cast("B")
        with self._lock:
            self._file.seek(offset)
            got = self._file.readinto(view)
        if got != view.nbytes:
            raise _MalformedError(f"expected {view.nbytes} bytes at {offset}, read {got}")
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
        self._file.close()

    def __enter__(self) -> CaffeModelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- writing ----------------------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


@dataclass
class LayerBlobs:
    """One layer to write: its header (name, type, bottoms, tops) and weight blobs."""

    name: str
    type: str
    blobs: list[np.ndarray]
    bottom: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)


def write_caffemodel(path: str | Path, net_name: str, layers: Iterable[LayerBlobs]) -> int:
    """Write a V2 caffemodel, streaming one layer at a time; returns the bytes written.

    `layers` may be a generator, so only one layer's weights need to exist at once.
    """
    header_class, shape_class = message_class("LayerParameter"), message_class("BlobShape")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    written = 0
    with open(tmp, "wb") as out:
        name = net_name.encode()
        written += out.write(_key(1, _LENGTH) + _encode_varint(len(name)) + name)
        for layer in layers:
            header = header_class(name=layer.name, type=layer.type, bottom=layer.bottom,
                                  top=layer.top).SerializeToString()
            blobs = []
            for array in layer.blobs:
                array = np.asarray(array, dtype="<f4")  # 0-d stays 0-d (Caffe's scalar blobs)
                shape = shape_class(dim=array.shape).SerializeToString()
                array = np.ascontiguousarray(array.reshape(-1))
                head = (_key(7, _LENGTH) + _encode_varint(len(shape)) + shape
                        + _key(5, _LENGTH) + _encode_varint(array.nbytes))
                blobs.append((head, array))
            bodies = [len(head) + array.nbytes for head, array in blobs]
            body_length = len(header) + sum(
                len(_key(7, _LENGTH)) + len(_encode_varint(n)) + n for n in bodies
            )
            written += out.write(_key(100, _LENGTH) + _encode_varint(body_length) + header)
            for (head, array), n in zip(blobs, bodies, strict=True):
                written += out.write(_key(7, _LENGTH) + _encode_varint(n) + head)
                written += out.write(memoryview(array).cast("B"))
    os.replace(tmp, path)
    return written
