"""What the scheduler knows about a network: its layers' bytes, stages and readers, its speed.

Plain numbers and names, no weights, no model formats: `edgecaffe.model.info` builds them from a
`Network` or a model package, `sim/generated.py` from the original's generated descriptions, and
tests by hand. The same object serves the real engine and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


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
    #: Bytes the exec task's kernel allocates besides the outputs (im2col buffers).
    workspace_bytes: int = 0

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
    def max_workspace_bytes(self) -> int:
        """The largest exec workspace of any layer (what a whole-model exec adds)."""
        return max((layer.workspace_bytes for layer in self.layers), default=0)

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
