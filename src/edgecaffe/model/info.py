"""What the scheduler needs of a model, worked out from the model: `NetworkInfo` from a `Network`
or a model package.

The scheduler core (`edgecaffe.sched`) takes plain numbers and names and knows no model format;
this module is the adapter between the two. Nothing here reads weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecaffe.model.network import Network
from edgecaffe.ops import get_op
from edgecaffe.sched.info import LayerInfo, NetworkInfo

if TYPE_CHECKING:
    from edgecaffe.model.package import ModelPackage


def network_info(
    network: Network,
    stages: dict[str, str] | None = None,
    mean_exec_ms: float | None = None,
    peak_bytes: int | None = None,
    profile: dict[str, dict[str, float]] | None = None,
    init_ms: float = 0.0,
) -> NetworkInfo:
    """A network's layers as the scheduler sees them: bytes of weights and outputs, the buffers
    each layer reads and writes (views such as Dropout write none: they share their input),
    DeepEye stage (`stages`, layer -> "conv" or "fc"; "conv" when not given), profiled times
    (`profile`, layer -> {"load_ms", "exec_ms", "exec_ms_single_thread"}), each exec's
    workspace (`Op.workspace_bytes`).

    `peak_bytes` is the network-granularity reservation; by default all weights plus the
    forward pass's peak activations. `mean_exec_ms` is Masa's shortest-network-first key
    (unknown: +inf, last)."""
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
        op = get_op(layer.op)
        workspace = op.workspace_bytes([network.blob_shapes[b] for b in layer.inputs],
                                       [network.blob_shapes[b] for b in layer.outputs],
                                       layer.attrs)
        layers.append(LayerInfo(
            name=layer.name, op=layer.op, weight_bytes=layer.weight_bytes,
            output_bytes=sum(buffer_bytes[b] for b in writes), reads=reads, writes=writes,
            stage=(stages or {}).get(layer.name, "conv"),
            load_ms=timing.get("load_ms"), exec_ms=timing.get("exec_ms"),
            exec_ms_single=timing.get("exec_ms_single_thread"), flops=layer.flops,
            workspace_bytes=int(workspace),
        ))
    outputs = frozenset(storage[b] for b in network.outputs)
    info = NetworkInfo(network.name, layers, tuple(network.inputs), input_bytes, outputs,
                       buffer_bytes,
                       float("inf") if mean_exec_ms is None else float(mean_exec_ms), 0,
                       dict(network.meta), float(init_ms))
    info.peak_bytes = peak_bytes or (info.weight_bytes + info.peak_activation_bytes
                                     + info.max_workspace_bytes)
    return info


def package_info(package: ModelPackage) -> NetworkInfo:
    """From a model package: stages, profiled times and peaks from its manifest.

    The network-granularity peak is the original's own figure (`max-memory-valgrind`, else
    `max-memory-usage`, in MB) when the package came from an original folder, else the
    profiled whole-model peak RSS, else weights plus peak activations."""
    manifest = package.manifest
    stages = {entry["name"]: entry.get("stage", "conv") for entry in manifest["layers"]}
    profile = {entry["name"]: entry["profile"] for entry in manifest["layers"]
               if "profile" in entry}
    summary = manifest.get("profile") or _source_profile(manifest)
    original = manifest.get("original") or {}
    # Masa's key: the median run (robust to one slow run), else the mean, else the original's.
    mean_exec = summary.get("median_exec_ms", summary.get("mean_exec_ms",
                                                          original.get("mean-execution-time")))
    peak = summary.get("peak_rss_whole_model_bytes")
    for key in ("max-memory-valgrind", "max-memory-usage"):  # newer, then older files
        if original.get(key):
            peak = int(float(original[key]) * 2**20)
            break
    info = network_info(package.network, stages, mean_exec, peak, profile,
                        summary.get("init_ms", 0.0))
    info.meta["package"] = str(package.directory)
    return info


def _source_profile(manifest: dict) -> dict:
    """A blocked copy's whole-network profile figures (Masa's key, the peak) when it has none
    of its own: its source package's (`source.blocked_from`; the blocks compute what the
    layer did, in the same time give or take), else none."""
    source = (manifest.get("source") or {}).get("blocked_from")
    if not source:
        return {}
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.manifest import PackageError

    try:
        return open_package(source).manifest.get("profile") or {}
    except (PackageError, OSError):
        return {}
