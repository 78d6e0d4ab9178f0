"""The importer's state while it walks the graph: constants, blob shapes, aliases, layers, weights.

Converters (one function per ONNX op type, in `convert_*.py`) read a node through this object
and add IR layers with `add_layer`, which runs the operator's shape inference at once, so a bad
node is reported as itself, and later nodes (Shape) can read the shapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.network import Layer
from edgecaffe.model.onnx.errors import OnnxError
from edgecaffe.model.onnx.reader import node_label
from edgecaffe.ops import OpError, get_op

FLOAT = np.dtype(np.float32)


def as_float(value) -> np.ndarray:
    """float32, C-contiguous, same shape (np.ascontiguousarray would turn a scalar into (1,))."""
    array = np.asarray(value, dtype=FLOAT)
    return array if array.flags.c_contiguous else array.copy(order="C")


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded, tensors as numpy arrays)."""
    from onnx import helper, numpy_helper

    result = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif hasattr(value, "dims") and hasattr(value, "data_type"):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        result[attribute.name] = value
    return result


class ImportContext:
    """What converters read and write. `node`/`index` are the node being converted."""

    def __init__(self, path: Path, opset: int, graph_outputs: Sequence[str],
                 readers: Counter[str]) -> None:
        self.path = path
        self.opset = opset
        self.graph_outputs = set(graph_outputs)
        #: How many node inputs (plus graph outputs) read each tensor name.
        self.readers = readers
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.aliases: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.producer: dict[str, Layer] = {}
        self._names: set[str] = set()
        self._constant_layers: dict[str, str] = {}
        self.node: Any = None
        self.index = 0

    # -- errors and names ------------------------------------------------------------------

    def error(self, message: str, hint: str = "") -> OnnxError:
        where = node_label(self.node, self.index, self.opset) if self.node is not None else ""
        return OnnxError(f"{self.path}: {where}: {message}" + (f" ({hint})" if hint else ""))

    def layer_name(self, suffix: str = "") -> str:
        base = (self.node.name or f"{self.node.op_type}_{self.index}") + suffix
        name, count = base, 1
        while name in self._names:
            count += 1
            name = f"{base}_{count}"
        self._names.add(name)
        return name

    # -- reading a node's inputs -------------------------------------------------------------

    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def is_const(self, ref: int | str) -> bool:
        """Whether the node's input at position `ref` (or the tensor named `ref`) is constant;
        an omitted optional input is not."""
        if isinstance(ref, int):
            if ref >= len(self.node.input) or not self.node.input[ref]:
                return False
            ref = self.node.input[ref]
        return self.resolve(ref) in self.consts

    def const(self, position: int, default: Any = None, what: str = "") -> np.ndarray | None:
        """The node's input at `position` as a constant (None/default when omitted); an error
        naming the input if it is computed at run time."""
        inputs = self.node.input
        if position >= len(inputs) or not inputs[position]:
            return None if default is None else np.asarray(default)
        name = self.resolve(inputs[position])
        if name not in self.consts:
            label = what or f"input {position}"
            raise self.error(f"{label} ({inputs[position]!r}) is computed at run time; it must "
                             "be an initializer or foldable to a constant")
        return self.consts[name]

    def ints(self, position: int, what: str = "") -> list[int] | None:
        value = self.const(position, what=what)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def weight(self, position: int, what: str) -> np.ndarray:
        value = self.const(position, what=what)
        if value is None:
            raise self.error(f"{what} is missing")
        return as_float(value)

    def blob(self, position: int) -> str:
        """The node's input at `position` as a blob; a constant becomes a Constant layer."""
        name = self.resolve(self.node.input[position])
        if name in self.consts:
            if name not in self._constant_layers:
                value = as_float(self.consts[name])
                blob = f"{name}@const"
                layer = self.add_layer("Constant", [], [blob], {"shape": list(value.shape)},
                                       {"value": value}, name=self.layer_name("/const"))
                self._constant_layers[name] = layer.outputs[0]
            return self._constant_layers[name]
        if name not in self.shapes:
            raise self.error(f"input {name!r} is neither a blob nor a constant")
        return name

    def shape(self, position: int) -> tuple[int, ...]:
        name = self.resolve(self.node.input[position])
        if name in self.consts:
            return tuple(self.consts[name].shape)
        return self.shapes[name]

    def output(self, position: int = 0) -> str:
        return self.node.output[position]

    # -- writing layers ----------------------------------------------------------------------

    def add_layer(self, op: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any],
                  weights: dict[str, np.ndarray] | None = None, name: str | None = None) -> Layer:
        """Append one IR layer, inferring its output shapes now (errors name the node)."""
        layer = Layer(name or self.layer_name(), op, list(inputs), list(outputs), dict(attrs))
        in_shapes = [self.shapes[blob] for blob in inputs]
        try:
            operator = get_op(op)
            params = operator.param_shapes(in_shapes, layer.attrs)
            out_shapes = operator.output_shapes(in_shapes, layer.attrs)
        except (OpError, KeyError, ValueError) as error:
            raise self.error(f"as IR {op} with input shapes {in_shapes}: {error}") from None
        weights = dict(weights or {})
        for key, shape in params.items():
            if key not in weights or tuple(weights[key].shape) != tuple(shape):
                got = None if key not in weights else tuple(weights[key].shape)
                raise self.error(f"IR {op} needs weight {key!r} of shape {tuple(shape)}, got {got}")
            weights[key] = as_float(weights[key])
        for blob, shape in zip(outputs, out_shapes, strict=True):
            self.shapes[blob] = tuple(int(d) for d in shape)
            self.producer[blob] = layer
        self.layers.append(layer)
        if weights:
            self.weights[layer.name] = {k: weights[k] for k in params}
        return layer

    def alias(self, output: str, source: str) -> None:
        """`output` is another name for `source` (Identity, Dropout, float Cast): no layer."""
        self.aliases[output] = self.resolve(source)
