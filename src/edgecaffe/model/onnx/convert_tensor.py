"""Converters for operators that move data: reshapes as views, Concat, Split, Slice, Gather with
constant indices, and the names that need no layer at all (Identity, Dropout, float Cast)."""

from __future__ import annotations

from itertools import accumulate
from math import prod

import numpy as np

from edgecaffe.model.onnx.context import ImportContext, attributes
from edgecaffe.model.onnx.fold import clamp_slice, resolve_reshape
from edgecaffe.model.onnx.registry import converts

#: ONNX float types the IR computes as float32 (a Cast to one of them moves no data here).
FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@converts("Identity", "Dropout", note="Dropout's mask output is not supported")
def identity(ctx: ImportContext) -> None:
    if len(ctx.node.output) > 1 and ctx.readers[ctx.node.output[1]]:
        raise ctx.error("Dropout's mask output is read; it is not supported (inference only)")
    ctx.alias(ctx.output(), ctx.node.input[0])


@converts("Cast", note="float to float only; integer casts of activations are not supported")
def cast(ctx: ImportContext) -> None:
    to = int(attributes(ctx.node)["to"])
    if to not in FLOAT_TYPES:
        raise ctx.error(f"Cast of an activation to type {to} (not float)",
                        "the IR computes in float32; integer activations are not supported")
    ctx.alias(ctx.output(), ctx.node.input[0])


def reshape_to(ctx: ImportContext, shape) -> None:
    """A Reshape layer (a view) to an explicit shape."""
    ctx.add_layer("Reshape", [ctx.blob(0)], [ctx.output()],
                  {"shape": [int(d) for d in shape], "axis": 0, "num_axes": -1})


@converts("Reshape")
def reshape(ctx: ImportContext) -> None:
    target = ctx.ints(1, "shape")
    allowzero = bool(attributes(ctx.node).get("allowzero", 0))
    try:
        reshape_to(ctx, resolve_reshape(ctx.shape(0), target, allowzero))
    except ValueError as error:
        raise ctx.error(str(error)) from None


@converts("Flatten")
def flatten(ctx: ImportContext) -> None:
    shape = ctx.shape(0)
    axis = int(attributes(ctx.node).get("axis", 1)) % (len(shape) + 1)
    reshape_to(ctx, [prod(shape[:axis]), prod(shape[axis:])])


def _axes(ctx: ImportContext) -> list[int] | None:
    if ctx.opset >= 13:
        return ctx.ints(1, "axes")
    axes = attributes(ctx.node).get("axes")
    return None if axes is None else [int(a) for a in axes]


@converts("Squeeze", note="axes as attribute before opset 13, as input from 13")
def squeeze(ctx: ImportContext) -> None:
    shape = ctx.shape(0)
    axes = _axes(ctx)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else \
        [a % len(shape) for a in axes]
    if any(shape[a] != 1 for a in axes):
        raise ctx.error(f"cannot squeeze axes {axes} of shape {shape}")
    reshape_to(ctx, [d for i, d in enumerate(shape) if i not in axes])


@converts("Unsqueeze", note="axes as attribute before opset 13, as input from 13")
def unsqueeze(ctx: ImportContext) -> None:
    shape = list(ctx.shape(0))
    axes = _axes(ctx) or []
    rank = len(shape) + len(axes)
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    reshape_to(ctx, shape)


@converts("Concat")
def concat(ctx: ImportContext) -> None:
    axis = int(attributes(ctx.node)["axis"])
    blobs = [ctx.blob(i) for i in range(len(ctx.node.input)) if ctx.node.input[i]]
    if len(blobs) == 1:
        ctx.alias(ctx.output(), blobs[0])
        return
    ctx.add_layer("Concat", blobs, [ctx.output()], {"axis": axis})


@converts("Split", note="sizes as attribute before opset 13, as input from 13; num_outputs (18)")
def split(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    shape = ctx.shape(0)
    axis = int(attrs.get("axis", 0)) % len(shape)
    count = len(ctx.node.output)
    sizes = ctx.ints(1, "split") if ctx.opset >= 13 else attrs.get("split")
    if sizes is None:
        # Equal parts; from opset 18 the last part may be smaller (ceil division).
        part = -(-shape[axis] // count)
        sizes = [min(part, shape[axis] - part * i) for i in range(count)]
    if len(sizes) != count or sum(sizes) != shape[axis]:
        raise ctx.error(f"split sizes {sizes} do not cut axis {axis} of {shape} into {count}")
    points = list(accumulate(sizes))[:-1]
    ctx.add_layer("Slice", [ctx.blob(0)], list(ctx.node.output),
                  {"axis": axis, "points": points, "num_outputs": count})


@converts("Slice")
def slice_(ctx: ImportContext) -> None:
    shape = ctx.shape(0)
    starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
    axes = ctx.ints(3, "axes") if len(ctx.node.input) > 3 and ctx.node.input[3] else \
        list(range(len(starts)))
    steps = ctx.ints(4, "steps") if len(ctx.node.input) > 4 and ctx.node.input[4] else \
        [1] * len(starts)
    bounds = [clamp_slice(s, e, st, shape[a % len(shape)])
              for s, e, a, st in zip(starts, ends, axes, steps, strict=True)]
    ctx.add_layer("StridedSlice", [ctx.blob(0)], [ctx.output()], {
        "starts": [b[0] for b in bounds], "ends": [b[1] for b in bounds],
        "axes": [a % len(shape) for a in axes], "steps": [b[2] for b in bounds]})


@converts("Gather", note="constant scalar or contiguous indices on an activation")
def gather(ctx: ImportContext) -> None:
    shape = ctx.shape(0)
    axis = int(attributes(ctx.node).get("axis", 0)) % len(shape)
    indices = np.asarray(ctx.const(1, what="indices")).astype(np.int64)
    flat = [int(i) % shape[axis] for i in indices.reshape(-1)]
    if not flat or flat != list(range(flat[0], flat[0] + len(flat))) or indices.ndim > 1:
        raise ctx.error(f"Gather of indices {indices.tolist()} from an activation",
                        "only a scalar or a contiguous run of indices is supported")
    sliced = f"{ctx.output()}@slice" if indices.ndim == 0 else ctx.output()
    ctx.add_layer("StridedSlice", [ctx.blob(0)], [sliced], {
        "starts": [flat[0]], "ends": [flat[-1] + 1], "axes": [axis], "steps": [1]},
        name=ctx.layer_name("/slice") if indices.ndim == 0 else None)
    if indices.ndim == 0:
        ctx.add_layer("Reshape", [sliced], [ctx.output()], {
            "shape": [d for i, d in enumerate(shape) if i != axis], "axis": 0, "num_axes": -1})
