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
import mmap
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
    """Write `tensors` to `path`; returns (file bytes, CRC-32 of the whole file)."""
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them (1,)).
    arrays = {name: np.require(array, requirements="C") for name, array in tensors.items()}
    header: dict[str, object] = {}
    offset = 0
    for name, array in arrays.items():
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == "=" else array.dtype
        if dtype not in _NAMES:
            raise WeightFileError(f"{path}: tensor {name!r}: dtype {array.dtype} is not "
                                  "supported")
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = Path(path)
    with open(path, "wb") as out:
        head = struct.pack("<Q", len(encoded)) + encoded
        crc = zlib.crc32(head)
        out.write(head)
        for array in arrays.values():
            data = memoryview(array.astype(array.dtype.newbyteorder("<"), copy=False)).cast("B")
            crc = zlib.crc32(data, crc)
            out.write(data)
    return 8 + len(encoded) + offset, crc


def drop_page_cache(path: str | Path, sync: bool = True) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read comes from storage
    (and the memory, charged to this process's cgroup, goes back). Pages still mapped by
    someone stay. `sync`: write dirty pages first (they cannot be dropped); weight files
    being read are never dirty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if sync:
            os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


#: Largest header we read (the `safetensors` library allows 100 MB; ours are a few hundred
#: bytes per tensor). Checked before the header is read, so a declared size cannot allocate.
MAX_HEADER_BYTES = 1 << 20
#: Deepest JSON nesting a header may have (a real one has 3 levels); deeper is refused before
#: `json.loads` could recurse.
_MAX_DEPTH = 8


def read_tensors(path: str | Path, expected_bytes: int | None = None,
                 expected_crc: int | None = None, what: str = "",
                 expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
                 crc_covers_header: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a weight file into fresh arrays (one `readinto` each, no second
    copy).

    Before anything is allocated the header is validated: its declared length (at most
    MAX_HEADER_BYTES and inside the file), its JSON, every entry's dtype, shape and offsets
    (contiguous, covering the data section exactly, as the safetensors format requires) and,
    when `expected` maps tensor name -> (dtype name, shape), the names, dtypes and shapes the
    manifest records. `expected_bytes` is the file size; `expected_crc` the CRC-32 of the whole
    file (header included), or of the data section only when `crc_covers_header` is False
    (packages of format 1). Raises WeightFileError naming the file and the field.
    """
    path = Path(path)
    label = f"{path}{f' ({what})' if what else ''}"
    handle = _open(path, label)
    with handle:
        layout, crc, _ = _header(handle, label, expected_bytes, expected, crc_covers_header)
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, shape, nbytes in layout:
            array = np.empty(shape, dtype=dtype)  # sizes checked against the file above
            view = memoryview(array).cast("B") if nbytes else memoryview(b"")
            if nbytes and handle.readinto(view) != nbytes:
                raise WeightFileError(f"{label}: tensor {name!r} is truncated")
            crc = zlib.crc32(view, crc)
            arrays[name] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
    if expected_crc is not None and crc != expected_crc:
        raise WeightFileError(
            f"{label}: checksum {crc:08x} does not match the manifest's {expected_crc:08x} (the "
            "file was altered)"
        )
    return arrays


def map_tensors(path: str | Path, expected_bytes: int | None = None,
                expected_crc: int | None = None, what: str = "",
                expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
                crc_covers_header: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a weight file as a read-only array over a memory map of the file: no
    copy; the pages are the page cache's, file-backed (under memory pressure the kernel drops
    them instead of swapping them out), and faulted in here, so the load pays the reading.
    The map goes when the last array does. Same checks and errors as `read_tensors`; tensors
    whose dtype is not native, or not aligned in the file, are copied."""
    path = Path(path)
    label = f"{path}{f' ({what})' if what else ''}"
    handle = _open(path, label)
    with handle:
        layout, crc, start = _header(handle, label, expected_bytes, expected, crc_covers_header)
        size = os.fstat(handle.fileno()).st_size
        if size == start:
            return {name: np.empty(shape, dtype) for name, dtype, shape, _ in layout}
        mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    mapped.madvise(mmap.MADV_WILLNEED)
    data = np.frombuffer(mapped, dtype=np.uint8)
    if expected_crc is not None:
        crc = zlib.crc32(memoryview(mapped)[start:], crc)  # reads every page once
        if crc != expected_crc:
            raise WeightFileError(f"{label}: checksum {crc:08x} does not match the manifest's "
                                  f"{expected_crc:08x} (the file was altered)")
    else:
        int(data[start::_PAGE].sum())  # fault every page in: the load, not the exec, reads
    arrays: dict[str, np.ndarray] = {}
    offset = start
    for name, dtype, shape, nbytes in layout:
        view = data[offset:offset + nbytes]
        offset += nbytes
        if dtype.isnative and (offset - nbytes) % dtype.alignment == 0:
            arrays[name] = view.view(dtype).reshape(shape)
        else:
            arrays[name] = view.view(dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return arrays


_PAGE = mmap.PAGESIZE


def _open(path: Path, label: str):
    try:
        return open(path, "rb")
    except OSError as error:
        raise WeightFileError(f"{label}: cannot open weight file: {error.strerror}") from None


def _header(handle, label: str, expected_bytes: int | None,
            expected: Mapping[str, tuple[str, tuple[int, ...]]] | None,
            crc_covers_header: bool
            ) -> tuple[list[tuple[str, np.dtype, tuple[int, ...], int]], int, int]:
    """Check the size and the header (see `read_tensors`); returns (layout, CRC-32 so far,
    offset of the data section)."""
    size = os.fstat(handle.fileno()).st_size
    if expected_bytes is not None and size != expected_bytes:
        raise WeightFileError(
            f"{label}: weight file is {size} bytes, the manifest says {expected_bytes}"
            f"{' (truncated)' if size < expected_bytes else ''}"
        )
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise WeightFileError(f"{label}: header length: the file has only {size} bytes")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise WeightFileError(f"{label}: header length {length} exceeds "
                              f"{'the file' if length > size - 8 else MAX_HEADER_BYTES}")
    raw = handle.read(length)
    layout = _layout(raw, size - 8 - length, label)
    if expected is not None:
        _match(layout, expected, label)
    crc = zlib.crc32(raw, zlib.crc32(prefix)) if crc_covers_header else 0
    return layout, crc, 8 + length


def _layout(raw: bytes, data_bytes: int, label: str
            ) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """The header's tensors as (name, dtype, shape, bytes) in file order, every field checked;
    the data section (`data_bytes` long) must be covered exactly, with no gap or overlap."""
    depth = 0
    for char in raw:  # bound the nesting before json recurses (a bracket inside a string only
        if char in b"[{":  # makes this stricter, never looser)
            depth += 1
            if depth > _MAX_DEPTH:
                raise WeightFileError(f"{label}: header: nested deeper than {_MAX_DEPTH} levels")
        elif char in b"]}":
            depth -= 1
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise WeightFileError(f"{label}: header: not JSON ({error})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{label}: header: expected a JSON object")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        field = f"{label}: header: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise WeightFileError(f"{field}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise WeightFileError(f"{field}: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise WeightFileError(f"{field}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))
                and offsets[0] <= offsets[1]):
            raise WeightFileError(f"{field}: data_offsets {offsets!r} is not [begin, end]")
        nbytes = _DTYPES[dtype].itemsize
        for dim in shape:  # Python ints: a huge declared shape cannot overflow
            nbytes *= dim
        if nbytes != offsets[1] - offsets[0]:
            raise WeightFileError(f"{field}: shape {shape} needs {nbytes} bytes, data_offsets "
                                  f"{offsets} hold {offsets[1] - offsets[0]}")
        entries.append((offsets[0], offsets[1], name, _DTYPES[dtype], tuple(shape), nbytes))
    entries.sort(key=lambda entry: entry[:2])
    position = 0
    for begin, end, name, *_ in entries:
        if begin != position:
            raise WeightFileError(f"{label}: header: tensor {name!r} starts at {begin}, "
                                  f"expected {position} (gap or overlap)")
        position = end
    if position != data_bytes:
        raise WeightFileError(f"{label}: header: the tensors hold {position} bytes, the file's "
                              f"data section {data_bytes}")
    return [(name, dtype, shape, nbytes) for _, _, name, dtype, shape, nbytes in entries]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _match(layout: list[tuple[str, np.dtype, tuple[int, ...], int]],
           expected: Mapping[str, tuple[str, tuple[int, ...]]], label: str) -> None:
    """The header's names, dtypes and shapes must be the manifest's."""
    found = {name: (_NAMES[dtype], shape) for name, dtype, shape, _ in layout}
    wanted = {name: (dtype, tuple(shape)) for name, (dtype, shape) in expected.items()}
    if found.keys() != wanted.keys():
        raise WeightFileError(f"{label}: header: tensors {sorted(found)}, the manifest says "
                              f"{sorted(wanted)}")
    for name, (dtype, shape) in wanted.items():
        if found[name] != (dtype, shape):
            raise WeightFileError(f"{label}: header: tensor {name!r} is {found[name][0]} "
                                  f"{list(found[name][1])}, the manifest says {dtype} "
                                  f"{list(shape)}")
