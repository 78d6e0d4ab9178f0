"""`load_onnx`: an .onnx file -> the format-neutral `Network`.

The graph is read and checked with the `onnx` package, put in topological order, and walked
once. A node whose inputs are all known constants (initializers, Constant nodes, shapes of
activations) is folded; any other node is mapped by its converter onto IR layers, whose shapes
are inferred as they are added. Initializers that feed a layer become its named weights.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.network import Network, NetworkError
from edgecaffe.model.onnx import (  # noqa: F401
    convert_math,
    convert_nn,
    convert_shape,
    convert_tensor,
)
from edgecaffe.model.onnx.context import ImportContext, attributes
from edgecaffe.model.onnx.errors import OnnxError
from edgecaffe.model.onnx.fold import fold_node
from edgecaffe.model.onnx.reader import (
    check_model,
    default_opset,
    input_shapes,
    node_label,
    read_model,
    topological_order,
    upgrade_opset,
)
from edgecaffe.model.onnx.registry import CONVERTERS

#: Ops that only ever compute constants: never a layer (they must fold).
SHAPE_OPS = {"Shape", "Size"}
#: Ops whose output is random or otherwise not a function of constant inputs.
NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli"}


def load_onnx(
    path: str | Path,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
    fold_transposes: bool = True,
) -> Network:
    """Read an ONNX model into a runnable `Network` with its weights.

    `input_shape`: a shape for a single-input graph, or input name -> shape; it fills the
    graph's symbolic dims (`N`, `batch`; default 1) and must agree with its fixed ones.
    `fold_transposes` sinks and cancels the Transpose pairs of NHWC exports (transposes.py).
    Raises OnnxError (a ModelError) naming the file, and the node where one is at fault.
    """
    path = Path(path)
    started = time.perf_counter()
    model = read_model(path)
    model, converted_from = upgrade_opset(model, path)
    opset = default_opset(model, path)
    graph = model.graph
    nodes = topological_order(graph, path)
    del graph.node[:]
    graph.node.extend(nodes)
    check_model(model, path)
    shapes = input_shapes(graph, path, input_shape)
    readers: Counter[str] = Counter(name for node in nodes for name in node.input if name)
    readers.update(output.name for output in graph.output)
    ctx = ImportContext(path, opset, [o.name for o in graph.output], readers)
    _initializers(ctx, graph)
    for input_name, shape in shapes.items():
        ctx.shapes[input_name] = shape
        ctx.layers.append(_input_layer(input_name, shape))
    folded = 0
    for index, node in enumerate(nodes):
        ctx.node, ctx.index = node, index
        if _foldable(ctx, node):
            _fold(ctx, node)
            folded += 1
        else:
            _convert(ctx, node)
    ctx.node = None
    _graph_outputs(ctx, graph)
    layers, weights, removed = ctx.layers, ctx.weights, 0
    if fold_transposes:
        from edgecaffe.model.onnx.transposes import fold_transposes as fold

        layers, weights, removed = fold(layers, weights, ctx.shapes,
                                        {o.name for o in graph.output})
    network_name = name or path.stem
    try:
        network = Network(network_name, layers, weights)
    except NetworkError as error:
        raise OnnxError(f"{path}: {error}") from None
    network.meta["source"] = {"kind": "onnx", "path": str(path), "opset": opset,
                              "producer": model.producer_name, "folded_nodes": folded,
                              "transposes_removed": removed,
                              "import_ms": round((time.perf_counter() - started) * 1e3, 1)}
    if converted_from is not None:
        network.meta["source"]["converted_from_opset"] = converted_from
    from edgecaffe.model.onnx.sidefile import apply_side_file

    apply_side_file(network, path)
    return network


def _input_layer(name: str, shape: tuple[int, ...]):
    from edgecaffe.model.network import Layer

    return Layer(name, "Input", [], [name], {"shape": list(shape)})


def _initializers(ctx: ImportContext, graph: Any) -> None:
    from onnx import numpy_helper

    for tensor in graph.initializer:
        try:
            ctx.consts[tensor.name] = numpy_helper.to_array(tensor)
        except (ValueError, TypeError, OSError) as error:
            raise OnnxError(f"{ctx.path}: initializer {tensor.name!r} cannot be read: "
                            f"{error}") from None


def _foldable(ctx: ImportContext, node: Any) -> bool:
    if node.op_type in NEVER_FOLD or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in SHAPE_OPS:
        return True
    if node.op_type == "Constant":
        return True
    present = [name for name in node.input if name]
    return bool(present) and all(ctx.is_const(name) for name in present)


def _fold(ctx: ImportContext, node: Any) -> None:
    attrs = attributes(node)
    if node.op_type == "Constant":
        results = [_constant_value(ctx, attrs)]
    elif node.op_type in SHAPE_OPS:
        shape = ctx.shape(0)
        if node.op_type == "Size":
            results = [np.array(int(np.prod(shape)), np.int64)]
        else:
            start, end = attrs.get("start", 0), attrs.get("end")
            results = [np.array(shape[start:end], np.int64)]
    else:
        values = [ctx.consts[ctx.resolve(n)] if n else None for n in node.input]
        try:
            results = fold_node(node, values, attrs, ctx.opset)
        except Exception as error:  # the reference evaluator raises many kinds
            raise ctx.error(f"cannot fold constant inputs: {type(error).__name__}: {error}") \
                from None
    for name, value in zip(node.output, results, strict=False):
        if name:
            ctx.consts[name] = np.asarray(value)


def _constant_value(ctx: ImportContext, attrs: dict[str, Any]) -> np.ndarray:
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    if "value" in attrs:
        return np.asarray(attrs["value"])
    raise ctx.error(f"Constant with attributes {sorted(attrs)} is not supported")


def _convert(ctx: ImportContext, node: Any) -> None:
    entry = CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if entry is None:
        known = ", ".join(sorted(CONVERTERS))
        raise OnnxError(
            f"{ctx.path}: {node_label(node, ctx.index, ctx.opset)} is not supported by the "
            f"importer (supported: {known}); if it only computes shapes, give fixed input "
            "shapes so it folds, or replace it in the exporting framework")
    try:
        entry.convert(ctx)
    except OnnxError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ctx.error(f"cannot be mapped: {type(error).__name__}: {error}") from None


def _graph_outputs(ctx: ImportContext, graph: Any) -> None:
    """Graph outputs keep their ONNX names: an alias (Identity, Cast) gets an Identity layer."""
    for output in graph.output:
        name = output.name
        if name in ctx.shapes and ctx.resolve(name) == name:
            continue
        source = ctx.resolve(name)
        if source in ctx.consts:
            raise OnnxError(f"{ctx.path}: graph output {name!r} is a constant (it does not "
                            "depend on the inputs)")
        from edgecaffe.model.network import Layer

        ctx.layers.append(Layer(f"{name}/identity", "Identity", [source], [name], {}))
        ctx.shapes[name] = ctx.shapes[source]
