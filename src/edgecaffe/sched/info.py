"""What the scheduler knows about a network: its layers' bytes, stages and readers, its speed.

Built from a model package (or any `Network`); no weights involved, so the same object serves
the real engine and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from edgecaffe.model.network import Network
from edgecaffe.ops import get_op


@dataclass(frozen=True)
class LayerInfo:
    name: str
    op: str
    weight_bytes: int
    #: Bytes this layer's outputs add (0 for views such as Dropout, which share their input).
    output_bytes: int
    #: Owner blobs (buffers) this layer reads.
    reads: tuple[str, ...]
    #: Owner blobs this layer creates.
    writes: tuple[str, ...]
    stage: str = "conv"
    #: Profiled median times, if known (the simulator uses them).
    load_ms: float | None = None
    exec_ms: float | None = None
    #: Profiled on one BLAS thread (what each of several workers gets).
    exec_ms_single: float | None = None
    flops: int = 0
    #: Whether the layer has a load task; None: when it has weight bytes. Simulated
    #: ("generated") layers load for a given time without any bytes.
    has_weights: bool | None = None

    @property
    def weighted(self) -> bool:
        return self.weight_bytes > 0 if self.has_weights is None else self.has_weights


@dataclass
class NetworkInfo:
    name: str
    layers: list[LayerInfo]
    #: The input buffers (fed by init) and their total bytes.
    inputs: tuple[str, ...]
    input_bytes: int
    #: Buffers that are outputs of the network: held until the network finishes.
    outputs: frozenset[str]
    #: Bytes of each owner buffer.
    buffer_bytes: dict[str, int]
    #: Masa's shortest-network-first key (ms); +inf when unknown.
    mean_exec_ms: float = float("inf")
    #: The network-granularity reservation: its peak memory estimate.
    peak_bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    #: Time of the init task (preprocessing the input, setting up), profiled; 0 when unknown.
    init_ms: float = 0.0

    @cached_property
    def _by_name(self) -> dict[str, LayerInfo]:
        return {layer.name: layer for layer in self.layers}

    def layer(self, name: str) -> LayerInfo:
        return self._by_name[name]

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers)

    @property
    def readers(self) -> dict[str, int]:
        """Owner buffer -> how many layers read it."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            for owner in layer.reads:
                counts[owner] = counts.get(owner, 0) + 1
        return counts

    @cached_property
    def last_reads(self) -> dict[str, tuple[str, ...]]:
        """Layer -> the buffers it is the last reader of (in layer order), outputs excepted:
        what its execution frees, since every mode executes a network's layers in order."""
        last: dict[str, str] = {}
        for layer in self.layers:
            for owner in layer.reads:
                last[owner] = layer.name
        freed: dict[str, tuple[str, ...]] = {layer.name: () for layer in self.layers}
        for owner, layer in last.items():
            if owner not in self.outputs:
                freed[layer] += (owner,)
        return freed

    @property
    def peak_activation_bytes(self) -> int:
        """Largest sum of live buffers during a forward pass (what a whole-model exec holds)."""
        remaining = self.readers
        live = self.input_bytes
        peak = live
        for layer in self.layers:
            live += sum(self.buffer_bytes[owner] for owner in layer.writes)
            peak = max(peak, live)
            for owner in layer.reads:
                remaining[owner] -= 1
                if remaining[owner] == 0 and owner not in self.outputs:
                    live -= self.buffer_bytes[owner]
        return peak

    @classmethod
    def from_network(
        cls,
        network: Network,
        stages: dict[str, str] | None = None,
        mean_exec_ms: float | None = None,
        peak_bytes: int | None = None,
        profile: dict[str, dict[str, float]] | None = None,
        init_ms: float = 0.0,
    ) -> NetworkInfo:
        storage = network.buffer_owner
        layers: list[LayerInfo] = []
        buffer_bytes: dict[str, int] = {}
        input_bytes = 0
        for layer in network.layers:
            if layer.op == "Input":
                input_bytes += sum(network.blob_bytes(b) for b in layer.outputs)
                for blob in layer.outputs:
                    buffer_bytes[blob] = network.blob_bytes(blob)
                continue
            view = get_op(layer.op).view
            writes = () if view else tuple(layer.outputs)
            for blob in writes:
                buffer_bytes[blob] = network.blob_bytes(blob)
            reads = () if view else tuple(dict.fromkeys(storage[b] for b in layer.inputs))
            timing = (profile or {}).get(layer.name, {})
            layers.append(LayerInfo(
                name=layer.name, op=layer.op, weight_bytes=layer.weight_bytes,
                output_bytes=sum(buffer_bytes[b] for b in writes), reads=reads, writes=writes,
                stage=(stages or {}).get(layer.name, "conv"),
                load_ms=timing.get("load_ms"), exec_ms=timing.get("exec_ms"),
                exec_ms_single=timing.get("exec_ms_single_thread"), flops=layer.flops,
            ))
        outputs = frozenset(storage[b] for b in network.outputs)
        info = cls(network.name, layers, tuple(network.inputs), input_bytes, outputs, buffer_bytes,
                   float("inf") if mean_exec_ms is None else float(mean_exec_ms), 0,
                   dict(network.meta), float(init_ms))
        info.peak_bytes = peak_bytes or info.weight_bytes + info.peak_activation_bytes
        return info

    @classmethod
    def from_package(cls, package) -> NetworkInfo:
        """From a `ModelPackage`: stages, profiled times and peaks from its manifest."""
        manifest = package.manifest
        stages = {entry["name"]: entry.get("stage", "conv") for entry in manifest["layers"]}
        profile = {entry["name"]: entry["profile"] for entry in manifest["layers"]
                   if "profile" in entry}
        summary = manifest.get("profile") or {}
        original = manifest.get("original") or {}
        mean_exec = summary.get("mean_exec_ms", original.get("mean-execution-time"))
        # A network's whole peak, as the original's max-memory figures: the original's own
        # (MB) when the package came from its folder, else the profiled whole-model peak.
        peak = summary.get("peak_rss_whole_model_bytes")
        for key in ("max-memory-valgrind", "max-memory-usage"):  # newer, then older files
            if original.get(key):
                peak = int(float(original[key]) * 2**20)
                break
        info = cls.from_network(package.network, stages, mean_exec, peak, profile,
                                summary.get("init_ms", 0.0))
        info.meta["package"] = str(package.directory)
        return info
