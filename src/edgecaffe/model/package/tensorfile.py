"""One layer's weights in one file, in the safetensors layout, read straight into fresh arrays.

Layout (the safetensors format): 8-byte little-endian header length N, N bytes of JSON
`{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`
padded with spaces, then the raw little-endian data. Files written here open with the
`safetensors` library and vice versa; we read them ourselves so that one `readinto` per tensor
fills a fresh numpy array, the size is checked against the file before reading, a CRC-32 of the
data is verified, and the file's page cache can be dropped first for cold-storage timings.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgecaffe.model.errors import ModelError

_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"),
           "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "U8": np.dtype("u1")}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class WeightFileError(ModelError):
    """A layer's weight file that is missing, truncated, altered or not in the expected layout."""


def write_tensors(path: str | Path, tensors: Mapping[str, np.ndarray],
                  metadata: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Write `tensors` to `path`; returns (file bytes, CRC-32 of the data section)."""
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them (1,)).
    arrays = {name: np.require(array, requirements="C") for name, array in tensors.items()}
    header: dict[str, object] = {}
    offset = 0
    for name, array in arrays.items():
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == "=" else array.dtype
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} is not supported")
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    crc = 0
    path = Path(path)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for array in arrays.values():
            data = memoryview(array.astype(array.dtype.newbyteorder("<"), copy=False)).cast("B")
            crc = zlib.crc32(data, crc)
            out.write(data)
    return 8 + len(encoded) + offset, crc


def drop_page_cache(path: str | Path) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read comes from storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_tensors(path: str | Path, expected_bytes: int | None = None,
                 expected_crc: int | None = None, what: str = "") -> dict[str, np.ndarray]:
    """Read every tensor of a file into fresh arrays, checking size and CRC-32 when given."""
    path = Path(path)
    label = f"{path}{f' ({what})' if what else ''}"
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise WeightFileError(f"{label}: cannot open weight file: {error.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if expected_bytes is not None and size != expected_bytes:
            raise WeightFileError(
                f"{label}: weight file is {size} bytes, the manifest says {expected_bytes}"
                f"{' (truncated)' if size < expected_bytes else ''}"
            )
        try:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        except (struct.error, ValueError, UnicodeDecodeError) as error:
            raise WeightFileError(f"{label}: not a safetensors weight file: {error}") from None
        header.pop("__metadata__", None)
        arrays: dict[str, np.ndarray] = {}
        crc = 0
        data_start = 8 + length
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            try:
                dtype = _DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError):
                raise WeightFileError(f"{label}: bad header entry for tensor {name!r}") from None
            array = np.empty(shape, dtype=dtype)
            if array.nbytes != end - begin or data_start + end > size:
                raise WeightFileError(f"{label}: tensor {name!r} does not fit the file")
            handle.seek(data_start + begin)
            view = memoryview(array).cast("B") if array.nbytes else memoryview(b"")
            if array.nbytes and handle.readinto(view) != array.nbytes:
                raise WeightFileError(f"{label}: tensor {name!r} is truncated")
            crc = zlib.crc32(view, crc)
            arrays[name] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
    if expected_crc is not None and crc != expected_crc:
        raise WeightFileError(
            f"{label}: weight data checksum {crc:08x} does not match the manifest's "
            f"{expected_crc:08x} (the file was altered)"
        )
    return arrays
