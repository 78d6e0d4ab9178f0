"""A model package on disk, opened lazily: weights come and go one layer at a time."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.network import BlobRunner, Network
from edgecaffe.model.package.manifest import (
    MANIFEST,
    PackageError,
    dump_manifest,
    load_manifest,
    network_from_manifest,
    weight_path,
)
from edgecaffe.model.package.tensorfile import drop_page_cache, map_tensors, read_tensors

#: How a load brings a layer's weights into memory: "mmap" maps the weight file and faults its
#: pages in (one copy: the page cache's, file-backed), "read" reads into fresh arrays and then
#: drops the file's pages (one copy: anonymous memory). Measured in benchmarks/memory.py.
LOAD_METHODS = ("mmap", "read")
DEFAULT_LOAD_METHOD = "mmap"

#: Loads remembered in `ModelPackage.load_log`.
LOAD_LOG_LENGTH = 1024


class ModelPackage:
    """A network whose weights stay on disk until a layer is loaded.

    `load(layer)` reads that layer's weight file into fresh arrays (its size checked every time,
    its checksum the first time),
    `free(layer)` drops them, and `forward(x)` runs load i, exec i, free i for every layer, with
    activations released after their last reader: the same kernels and the same in-place
    decisions as `Network.forward`, hence bit-for-bit the same outputs.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], network: Network) -> None:
        self.directory = directory
        self.manifest = manifest
        self.network = network
        self._entries = {entry["name"]: entry for entry in manifest["layers"]}
        #: Layer -> its weight file, each checked to stay inside the folder (`weight_path`).
        self._paths = {entry["name"]: weight_path(directory, entry, directory / MANIFEST)
                       for entry in manifest["layers"] if entry.get("weights")}
        #: Format 1 packages: CRC-32 of the data section only, every tensor F32.
        self._whole_file_crc = manifest.get("format") != "edgecaffe-package/1"
        self.loaded: dict[str, dict[str, np.ndarray]] = {}
        self._verified: set[str] = set()
        #: (layer, seconds, cold) of the latest loads (bounded: an engine serving for days
        #: loads millions of layers).
        self.load_log: deque[tuple[str, float, bool]] = deque(maxlen=LOAD_LOG_LENGTH)
        #: `LOAD_METHODS`: how `read` brings weights in.
        self.load_method = DEFAULT_LOAD_METHOD

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.network.input_shape

    @property
    def meta(self) -> dict[str, Any]:
        return self.network.meta

    def weight_file(self, layer: str) -> Path | None:
        return self._paths.get(layer)

    @property
    def weight_bytes(self) -> int:
        return self.network.weight_bytes

    def load(self, layer: str, cold: bool = False) -> dict[str, np.ndarray]:
        """Read one layer's weights (nothing else) and keep them in `loaded` until `free`;
        `cold` drops the file's cached pages first."""
        arrays = self.read(layer, cold)
        self.loaded[layer] = arrays
        return arrays

    def read(self, layer: str, cold: bool = False, method: str | None = None
             ) -> dict[str, np.ndarray]:
        """Bring one layer's weights into memory for the caller (thread-safe: the engine reads
        layers of one package for several requests at once). `method` (default
        `self.load_method`): "read" fills fresh arrays and drops the file's cached pages after,
        "mmap" returns read-only arrays over a map of the file, its pages faulted in; either
        way the weights are in memory once. Call `release(layer)` once they are dropped."""
        if layer not in self._entries:
            raise PackageError(f"{self.directory}: no layer {layer!r}")
        weights = self._entries[layer].get("weights")
        if not weights:
            return {}
        path = self._paths[layer]
        if cold:
            drop_page_cache(path)
        started = time.perf_counter()
        # The size, header and dtypes/shapes are checked on every load; the checksum on the
        # first load after opening (CRC-32 runs at ~1.7 GB/s, which would otherwise cost a warm
        # load about 40%).
        crc = None if layer in self._verified else weights.get("crc32")
        dtypes = weights.get("dtypes") or {}
        expected = {name: (dtypes.get(name, "F32"), tuple(shape))
                    for name, shape in weights["tensors"].items()}
        method = method or self.load_method
        if method not in LOAD_METHODS:
            raise PackageError(f"load method {method!r}: choose from {', '.join(LOAD_METHODS)}")
        reader = map_tensors if method == "mmap" else read_tensors
        arrays = reader(path, weights.get("bytes"), crc,
                        what=f"layer {layer!r} of package {self.name!r}",
                        expected=expected, crc_covers_header=self._whole_file_crc)
        if method == "read":
            drop_page_cache(path, sync=False)  # not counted twice
        self._verified.add(layer)
        self.load_log.append((layer, time.perf_counter() - started, cold))
        return arrays

    def release(self, layer: str) -> None:
        """The caller has dropped its arrays of `layer`: drop the file's cached pages too, so
        that freeing returns the memory (pages another load still maps stay)."""
        path = self._paths.get(layer)
        if path is not None:
            drop_page_cache(path, sync=False)

    def free(self, layer: str) -> None:
        """Drop a layer's weights (a no-op when they are not loaded) and their cached pages."""
        if self.loaded.pop(layer, None) is not None:
            self.release(layer)

    def forward(
        self,
        x: np.ndarray | Mapping[str, np.ndarray],
        outputs: Iterable[str] | None = None,
        cold: bool = False,
        backend: str = "numpy",
    ) -> dict[str, np.ndarray]:
        """Layer by layer: load, execute, free. Same result as the whole-model forward.
        `backend`: the kernels (see `BlobRunner`)."""
        runner = BlobRunner(self.network, x, outputs, backend=backend)
        for layer in runner.layers:
            weights = self.loaded.get(layer.name)
            owned = weights is None
            if owned:
                weights = runner.prepare(layer, self.load(layer.name, cold=cold))
            runner.run(layer, weights)
            if owned:
                self.free(layer.name)
        return runner.results()

    def load_all(self) -> Network:
        """The whole model in memory: a `Network` with every weight loaded (bulk loading)."""
        for layer in self.network.layers:
            if layer.params and layer.name not in self.loaded:
                self.load(layer.name)
        self.network.weights = {name: w for name, w in self.loaded.items() if w}
        return self.network

    def save_manifest(self) -> None:
        dump_manifest(self.manifest, self.directory)

    def __repr__(self) -> str:
        return (f"<ModelPackage {self.name!r} at {self.directory}: {len(self.network.layers)} "
                f"layers, {self.weight_bytes / 1e6:.1f} MB, {len(self.loaded)} loaded>")


def open_package(directory: str | Path) -> ModelPackage:
    """Open a package folder: read and check its manifest; no weights are read.

    The layers must rebuild into a network with the recorded shapes, and every weight file must
    exist with the recorded size; a package that does not match its files is rejected here.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    network = network_from_manifest(manifest, directory / MANIFEST)
    for entry in manifest["layers"]:
        weights = entry.get("weights")
        if not weights:
            continue
        path = weight_path(directory, entry, directory / MANIFEST)  # before anything is opened
        if not path.is_file():
            raise PackageError(f"{directory}: weight file {weights['file']} of layer "
                               f"{entry['name']!r} is missing")
        size = path.stat().st_size
        if size != weights["bytes"]:
            raise PackageError(f"{directory}: weight file {weights['file']} of layer "
                               f"{entry['name']!r} is {size} bytes, the manifest says "
                               f"{weights['bytes']}")
    return ModelPackage(directory, manifest, network)
