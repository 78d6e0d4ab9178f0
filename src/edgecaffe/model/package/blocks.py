"""Layers larger than a block size become blocks along their output dimension.

`block_network` rewrites a network so that every Dense (InnerProduct) layer and every group-1
Conv layer whose weights exceed `max_block_bytes` becomes consecutive `DenseBlock`/`ConvBlock`
layers (`ops/block.py`), each holding a slice of the output rows/channels, `fc6[0]`, `fc6[1]`,
...; the last block writes the original output blob, so later layers are untouched. Each block
is a layer like any other: its own weight file, load task and exec task; the scheduler and
the simulator need to know nothing more. The forward pass is bit-for-bit the unsplit one
(block edges on multiples of `ops.block.ALIGN` rows; tests/test_blocks.py).

`block_package` derives a blocked package from an existing one (streaming: one source layer's
weights in memory at a time); `edgecaffe split --max-block` blocks while splitting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np

from edgecaffe.model.network import DTYPE, Layer, Network
from edgecaffe.model.package.manifest import MANIFEST, PackageError
from edgecaffe.ops.base import CHUNK_MIN_BYTES
from edgecaffe.ops.block import ALIGN

_BLOCKED = {"Dense": ("DenseBlock", "out_features"), "Conv": ("ConvBlock", "out_channels")}


def block_edges(layer: Layer, max_block_bytes: int) -> list[int] | None:
    """Output row/channel edges [0, e1, ..., total] of `layer`'s blocks, or None when it stays
    whole (not Dense or group-1 Conv, within `max_block_bytes`, or not larger than
    `ops.base.CHUNK_MIN_BYTES`: only layers that compute in chunks split exactly). Blocks
    are as equal as `ALIGN`-row edges allow; a block of `ALIGN` rows may still exceed the
    size (the smallest block there is)."""
    if layer.op not in _BLOCKED or layer.weight_bytes <= max_block_bytes:
        return None
    # The kernels chunk by the weight alone (bias aside: ops.base.output_chunk), so that is
    # what decides whether blocks of this layer can be exact.
    if int(np.prod(layer.params["weight"])) * np.dtype(DTYPE).itemsize <= CHUNK_MIN_BYTES:
        return None
    if layer.op == "Conv" and layer.attrs.get("group", 1) != 1:
        return None
    total = layer.attrs[_BLOCKED[layer.op][1]]
    if total <= ALIGN:
        return None
    per_row = layer.weight_bytes / total
    rows = max(ALIGN, int(max_block_bytes // per_row) // ALIGN * ALIGN)
    count = -(-total // rows)
    even = -(-total // count)
    rows = -(-even // ALIGN) * ALIGN  # balanced, still aligned and <= rows
    return [*range(0, total, rows), total]


def block_network(network: Network, max_block_bytes: int
                  ) -> tuple[Network, dict[str, tuple[str, int, int]]]:
    """`network` with its large layers split into blocks; returns (network, block layer ->
    (source layer, begin, end)). Raises PackageError for a size that is not positive."""
    if max_block_bytes <= 0:
        raise PackageError(f"block size {max_block_bytes} bytes: must be positive")
    layers: list[Layer] = []
    sources: dict[str, tuple[str, int, int]] = {}
    for layer in network.layers:
        edges = block_edges(layer, max_block_bytes)
        if edges is None:
            layers.append(Layer(layer.name, layer.op, list(layer.inputs), list(layer.outputs),
                                dict(layer.attrs)))
            continue
        op = _BLOCKED[layer.op][0]
        previous = None
        count = len(edges) - 1
        (output,) = layer.outputs
        for k, (begin, end) in enumerate(pairwise(edges)):
            name = f"{layer.name}[{k}]"
            blob = output if k == count - 1 else f"{output}[{k}]"
            inputs = list(layer.inputs) if previous is None else [previous, *layer.inputs]
            layers.append(Layer(name, op, inputs, [blob],
                                {**layer.attrs, "block": [begin, end]}))
            sources[name] = (layer.name, begin, end)
            previous = blob
    blocked = Network(network.name, layers, meta=network.meta)
    return blocked, sources


def block_weights(arrays: dict[str, np.ndarray], layer: Layer, begin: int, end: int
                  ) -> dict[str, np.ndarray]:
    """The slice of a Dense/Conv layer's weights that block [begin, end) holds (copies, C
    order: what its weight file stores)."""
    out = {}
    for name, array in arrays.items():
        axis = 1 if name == "weight" and layer.attrs.get("transpose") else 0
        index = (slice(None),) * axis + (slice(begin, end),)
        out[name] = np.ascontiguousarray(array[index], dtype=DTYPE)
    return out


def blocked_source(network: Network, sources: dict[str, tuple[str, int, int]],
                   weights_for: Callable[[Layer], dict[str, np.ndarray]]
                   ) -> Callable[[Layer], dict[str, np.ndarray]]:
    """A weight source for the blocked network, reading each source layer once (its blocks
    come one after another) and slicing it."""
    held: dict[str, dict[str, np.ndarray]] = {}

    def weights(layer: Layer) -> dict[str, np.ndarray]:
        if layer.name not in sources:
            held.clear()
            return weights_for(network.layer_by_name[layer.name])
        name, begin, end = sources[layer.name]
        if name not in held:
            held.clear()
            held[name] = weights_for(network.layer_by_name[name])
        return block_weights(held[name], network.layer_by_name[name], begin, end)

    return weights


def block_package(package, max_block_bytes: int, directory: str | Path | None = None):
    """A package of `package`'s network with layers over `max_block_bytes` in blocks, written
    to `directory` (default: the cache, keyed by the source package and the size; reused when
    there). Returns `package` itself when no layer needs splitting."""
    from edgecaffe.model.package.package import open_package
    from edgecaffe.model.package.split import write_package

    blocked, sources = block_network(package.network, max_block_bytes)
    if not sources:
        return package
    cached = directory is None
    if directory is None:
        from edgecaffe.model.zoo import cache_dir

        manifest = package.directory / MANIFEST
        stat = manifest.stat()
        key = f"{package.directory.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{max_block_bytes}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        directory = cache_dir() / "blocks" / f"{package.name}-{digest}"
        if (directory / MANIFEST).is_file():
            return open_package(directory)
    source = dict(package.manifest.get("source") or {})
    source["blocked_from"] = str(package.directory)
    source["max_block_bytes"] = int(max_block_bytes)

    def write(folder: Path):
        return write_package(blocked, blocked_source(package.network, sources,
                                                     lambda layer: package.read(layer.name)),
                             folder, source=source, original=package.manifest.get("original"))

    if cached:  # a write cut short must not leave a half package where the next use looks
        from edgecaffe.model.package.cached import cached_package

        return cached_package(directory, write)
    return write(Path(directory))
