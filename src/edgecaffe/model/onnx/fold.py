"""Constant folding: nodes whose inputs are all known at import (initializers, Constant nodes,
the shape of an activation) are evaluated once, so shape-computing subgraphs (Shape -> Gather ->
Unsqueeze -> Concat -> Reshape) become the constant a layer's attrs need.

The operators exporters use for shape arithmetic are evaluated here in numpy; anything else
with constant inputs goes through onnx's reference evaluator (`onnx.reference`), one node at a
time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Folder = Callable[[list[np.ndarray], dict[str, Any]], list[np.ndarray]]


def _np_dtype(onnx_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def _axes(inputs, attrs, index=1):
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return [int(a) for a in attrs.get("axes", [])]


def _unsqueeze(inputs, attrs):
    x, axes = inputs[0], _axes(inputs, attrs)
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = np.expand_dims(x, axis)
    return [x]


def _squeeze(inputs, attrs):
    axes = _axes(inputs, attrs)
    x = inputs[0]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes)) if axes else np.squeeze(x)]


def _slice(inputs, attrs):
    x = inputs[0]
    starts, ends = np.asarray(inputs[1]).reshape(-1), np.asarray(inputs[2]).reshape(-1)
    axes = _axes(inputs, attrs, 3) if len(inputs) > 3 else list(range(len(starts)))
    steps = (np.asarray(inputs[4]).reshape(-1) if len(inputs) > 4 and inputs[4] is not None
             else np.ones(len(starts), np.int64))
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis % x.ndim] = slice(*clamp_slice(int(start), int(end), int(step),
                                                  x.shape[axis % x.ndim]))
    return [x[tuple(index)]]


def clamp_slice(start: int, end: int, step: int, size: int) -> tuple[int, int | None, int]:
    """ONNX Slice bounds (any int64, negative counting from the end, INT_MAX for 'to the end')
    -> Python slice bounds for an axis of `size` (the ONNX Slice spec's clamping rules)."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
        return start, end, step
    start, end = min(max(start, -1), size - 1), min(max(end, -1), size - 1)
    return start, (None if end < 0 else end), step


def _reshape(inputs, attrs):
    x, shape = inputs[0], [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    return [x.reshape(resolve_reshape(x.shape, shape, bool(attrs.get("allowzero", 0))))]


def resolve_reshape(shape, target, allowzero: bool = False) -> tuple[int, ...]:
    """ONNX Reshape's target (0 copies the input dim unless allowzero, -1 is inferred) ->
    explicit dims; ValueError if the sizes do not match."""
    dims = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if dims.count(-1) > 1:
        raise ValueError(f"reshape target {target} infers more than one dim")
    total = int(np.prod(shape))
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {tuple(shape)} into {target}")
        dims[dims.index(-1)] = total // known
    if int(np.prod(dims)) != total:
        raise ValueError(f"cannot reshape {tuple(shape)} into {target}")
    return tuple(dims)


def _constant_of_shape(inputs, attrs):
    value = attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else value
    return [np.full(tuple(int(d) for d in inputs[0]), fill.reshape(-1)[0], dtype=fill.dtype)]


def _gather(inputs, attrs):
    return [np.take(inputs[0], inputs[1].astype(np.int64), axis=int(attrs.get("axis", 0)))]


def _cast(inputs, attrs):
    return [inputs[0].astype(_np_dtype(int(attrs["to"])))]


def _binary(ufunc):
    def fold(inputs, attrs):
        a, b = inputs
        result = ufunc(a, b)
        # Integer division truncates in ONNX (C semantics), not floors.
        if ufunc is np.divide and np.issubdtype(a.dtype, np.integer):
            result = np.trunc(result).astype(a.dtype)
        return [np.asarray(result).astype(np.result_type(a, b), copy=False)]

    return fold


def _range(inputs, attrs):
    start, limit, delta = (np.asarray(i).reshape(()) for i in inputs)
    return [np.arange(start, limit, delta, dtype=start.dtype)]


NUMPY_FOLDERS: dict[str, Folder] = {
    "Identity": lambda i, a: [i[0]],
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda i, a: [np.concatenate([np.atleast_1d(x) for x in i], axis=int(a["axis"]))],
    "Gather": _gather,
    "Slice": _slice,
    "Reshape": _reshape,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide),
    "Equal": lambda i, a: [np.equal(i[0], i[1])],
    "Where": lambda i, a: [np.where(i[0], i[1], i[2])],
    "Expand": lambda i, a: [i[0] * np.ones(tuple(int(d) for d in i[1]), dtype=i[0].dtype)],
    "Transpose": lambda i, a: [np.transpose(i[0], a.get("perm"))],
    "Floor": lambda i, a: [np.floor(i[0])],
    "Ceil": lambda i, a: [np.ceil(i[0])],
    "Sqrt": lambda i, a: [np.sqrt(i[0])],
    "Neg": lambda i, a: [np.negative(i[0])],
    "Abs": lambda i, a: [np.abs(i[0])],
}


def fold_node(node: Any, inputs: list[np.ndarray | None], attrs: dict[str, Any],
              opset: int) -> list[np.ndarray]:
    """Evaluate one node on constant inputs; the numpy folders first, else onnx.reference."""
    folder = NUMPY_FOLDERS.get(node.op_type) if not node.domain else None
    if folder is not None:
        return [np.asarray(v) for v in folder(inputs, attrs)]
    return _reference(node, inputs, opset)


def _reference(node: Any, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [name for name in node.input if name]
    values = [value for name, value in zip(node.input, inputs, strict=True) if name]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, values, strict=True)],
        [helper.make_empty_tensor_value_info(name) for name in node.output if name],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    results = ReferenceEvaluator(model).run(None, dict(zip(names, values, strict=True)))
    return [np.asarray(r) for r in results]
