"""`export_onnx`: any IR network (Caffe models, the zoo, packages, imported ONNX) -> an .onnx file.

Each IR layer becomes one or a few ONNX nodes (`export_ops.py`, one emitter per IR operator);
its weights become initializers named `<layer>.<weight>`; blob names and layer names are kept,
so an output is found under the same name in onnxruntime. Caffe's rules that ONNX lacks are
spelled out with standard operators: pooling's ceil-and-clip output size as explicit end pads,
its average-pooling divisor as a zero Pad before an AveragePool that excludes padding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.network import Layer, Network
from edgecaffe.model.onnx.errors import OnnxError

#: The opset written: supported by onnxruntime >= 1.14 and every current converter.
EXPORT_OPSET = 17


class ExportError(OnnxError):
    """A network that cannot be written as ONNX; the message names the layer and operator."""


class GraphBuilder:
    """Nodes, initializers and fresh names for the graph being written."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set(network.blob_shapes)
        self.layer: Layer | None = None

    def fresh(self, hint: str) -> str:
        name, count = hint, 1
        while name in self._names:
            count += 1
            name = f"{hint}_{count}"
        self._names.add(name)
        return name

    def const(self, hint: str, array: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def ints(self, hint: str, values) -> str:
        return self.const(hint, [int(v) for v in values], np.int64)

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None,
             **attrs: Any) -> list[str]:
        """Add one node; `outputs` default to one fresh name. Returns the output names."""
        from onnx import helper

        layer = self.layer.name if self.layer is not None else "graph"
        outputs = outputs or [self.fresh(f"{layer}/{op_type}")]
        self.nodes.append(helper.make_node(op_type, inputs, outputs,
                                           name=self.fresh(f"{layer}:{op_type}"), **attrs))
        return outputs

    def shape(self, blob: str) -> tuple[int, ...]:
        return self.network.blob_shapes[blob]

    def error(self, message: str) -> ExportError:
        layer = self.layer
        where = f"layer {layer.name!r} ({layer.op})" if layer is not None else "network"
        return ExportError(f"network {self.network.name!r}: {where}: {message}")


WeightSource = Callable[[Layer], dict[str, np.ndarray]]


def build_model(network: Network, weights_for: WeightSource | None = None) -> Any:
    """The ONNX ModelProto of `network`; weights from `weights_for(layer)` (default: the
    network's own). Raises ExportError for an operator with no ONNX mapping."""
    from onnx import TensorProto, helper

    from edgecaffe.model.onnx.export_ops import EMITTERS

    weights_for = weights_for or (lambda layer: network.weights.get(layer.name, {}))
    builder = GraphBuilder(network)
    inputs = []
    for layer in network.layers:
        builder.layer = layer
        if layer.op == "Input":
            inputs += [helper.make_tensor_value_info(b, TensorProto.FLOAT,
                                                     list(network.blob_shapes[b]))
                       for b in layer.outputs]
            continue
        emitter = EMITTERS.get(layer.op)
        if emitter is None:
            raise builder.error(f"operator {layer.op!r} has no ONNX export "
                                f"(exportable: {', '.join(sorted(EMITTERS))})")
        weights = weights_for(layer) if layer.params else {}
        emitter(builder, layer, weights)
    builder.layer = None
    outputs = [helper.make_tensor_value_info(b, TensorProto.FLOAT, list(network.blob_shapes[b]))
               for b in network.outputs]
    graph = helper.make_graph(builder.nodes, network.name, inputs, outputs,
                              builder.initializers)
    model = helper.make_model(graph, producer_name="edgecaffe",
                              opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    return model


def export_onnx(network: Network, path: str | Path, weights_for: WeightSource | None = None,
                check: bool = True) -> Path:
    """Write `network` to `path` as ONNX (checked with onnx's checker), and its labels and
    preprocessing to the side file `<path>.yaml` when it has any."""
    import onnx

    path = Path(path)
    model = build_model(network, weights_for)
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            raise ExportError(f"{path}: the exported model fails onnx's checker: "
                              f"{str(error).splitlines()[0]}") from None
    onnx.save(model, str(path))
    _write_side_file(network, path)
    return path


def _write_side_file(network: Network, path: Path) -> None:
    import yaml

    keys = ("labels", "mean", "scale", "channel_order", "layout", "output")
    meta = {k: network.meta[k] for k in keys if network.meta.get(k) not in (None, [], "")}
    if "mean" in meta:
        meta["mean"] = [float(v) for v in meta["mean"]]
    if "scale" in meta:
        meta["scale"] = float(meta["scale"])
    if "labels" in meta:
        meta["labels"] = [str(v) for v in meta["labels"]]
    side = Path(f"{path}.yaml")
    if meta:
        side.write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None,
                                       width=100))
    elif side.exists():
        side.unlink()
