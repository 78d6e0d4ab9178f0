"""Converters onto the generic operators: Transpose, Pad, Clip, the Reduce family, Resize and
ConvTranspose."""

from __future__ import annotations

import numpy as np

from edgecaffe.model.onnx.context import ImportContext, attributes
from edgecaffe.model.onnx.convert_nn import _need_4d
from edgecaffe.model.onnx.registry import converts


@converts("Transpose")
def transpose(ctx: ImportContext) -> None:
    perm = attributes(ctx.node).get("perm")
    ctx.add_layer("Transpose", [ctx.blob(0)], [ctx.output()],
                  {"perm": None if perm is None else [int(p) for p in perm]})


@converts("Pad", note="constant, reflect, edge, wrap (19); axes input (18)")
def pad(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    rank = len(ctx.shape(0))
    pads = ctx.ints(1, "pads")
    value = ctx.const(2)
    axes = ctx.ints(3, "axes") if len(ctx.node.input) > 3 and ctx.node.input[3] else None
    if axes is not None:
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis % rank] = pads[i]
            full[rank + axis % rank] = pads[len(axes) + i]
        pads = full
    ctx.add_layer("Pad", [ctx.blob(0)], [ctx.output()], {
        "pads": pads, "mode": attrs.get("mode", "constant"),
        "value": 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])})


@converts("Tile")
def tile(ctx: ImportContext) -> None:
    ctx.add_layer("Tile", [ctx.blob(0)], [ctx.output()], {"repeats": ctx.ints(1, "repeats")})


@converts("Clip")
def clip(ctx: ImportContext) -> None:
    low, high = ctx.const(1, what="min"), ctx.const(2, what="max")
    ctx.add_layer("Clip", [ctx.blob(0)], [ctx.output()], {
        "min": None if low is None else float(low.reshape(-1)[0]),
        "max": None if high is None else float(high.reshape(-1)[0])})


_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod", "ReduceL1": "asum", "ReduceL2": "l2",
           "ReduceSumSquare": "sumsq", "ReduceLogSumExp": "logsumexp"}


@converts(*_REDUCE, note="axes as attribute, or as input (ReduceSum from 13, the rest from 18)")
def reduce(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    as_input = ctx.opset >= (13 if ctx.node.op_type == "ReduceSum" else 18)
    axes = ctx.ints(1, "axes") if as_input else attrs.get("axes")
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            ctx.alias(ctx.output(), ctx.node.input[0])
            return
        axes = None
    ctx.add_layer("Reduce", [ctx.blob(0)], [ctx.output()], {
        "operation": _REDUCE[ctx.node.op_type],
        "axes": None if axes is None else [int(a) for a in axes],
        "keepdims": bool(attrs.get("keepdims", 1))})


@converts("Resize", note="nearest and linear over H and W of NCHW; no cubic, no antialias")
def resize(ctx: ImportContext) -> None:
    _need_4d(ctx, "Resize")
    attrs = attributes(ctx.node)
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear") or attrs.get("antialias", 0):
        raise ctx.error(f"Resize mode {mode!r} (antialias {attrs.get('antialias', 0)})",
                        "nearest and linear without antialias are supported")
    if attrs.get("axes") is not None or attrs.get("keep_aspect_ratio_policy", "stretch") \
            != "stretch":
        raise ctx.error("Resize with axes or keep_aspect_ratio_policy is not supported")
    scales, sizes = ctx.const(2, what="scales"), ctx.const(3, what="sizes")
    layer_attrs = {"mode": mode, "nearest_mode": attrs.get("nearest_mode", "round_prefer_floor"),
                   "coordinate_transformation_mode":
                       attrs.get("coordinate_transformation_mode", "half_pixel")}
    if sizes is not None and sizes.size:
        if [int(s) for s in sizes[:2]] != list(ctx.shape(0)[:2]):
            raise ctx.error(f"Resize sizes {sizes.tolist()} change N or C")
        layer_attrs["sizes"] = [int(s) for s in sizes[2:]]
    elif scales is not None and scales.size:
        if [float(s) for s in scales[:2]] != [1.0, 1.0]:
            raise ctx.error(f"Resize scales {scales.tolist()} change N or C")
        layer_attrs["scales"] = [float(s) for s in scales[2:]]
    else:
        raise ctx.error("Resize has neither scales nor sizes")
    ctx.add_layer("Resize", [ctx.blob(0)], [ctx.output()], layer_attrs)


@converts("ConvTranspose")
def conv_transpose(ctx: ImportContext) -> None:
    _need_4d(ctx, "ConvTranspose")
    attrs = attributes(ctx.node)
    weight = ctx.weight(1, "weight W")
    bias = ctx.const(2)
    group = int(attrs.get("group", 1))
    kernel = list(weight.shape[2:])
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    output_padding = list(attrs.get("output_padding", [0, 0]))
    auto = attrs.get("auto_pad", "NOTSET")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        # The ONNX ConvTranspose spec: total padding from the wanted output size.
        sizes = ctx.shape(0)[2:]
        wanted = list(attrs.get("output_shape", [s * st for s, st in zip(sizes, strides,
                                                                          strict=True)]))[-2:]
        totals = [st * (s - 1) + op + (k - 1) * d + 1 - w for s, st, op, k, d, w in
                  zip(sizes, strides, output_padding, kernel, dilations, wanted, strict=True)]
        upper = auto != "SAME_LOWER"
        begin = [t // 2 if upper else t - t // 2 for t in totals]
        pads = begin + [t - b for t, b in zip(totals, begin, strict=True)]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    weights = {"weight": weight}
    if bias is not None:
        weights["bias"] = np.asarray(bias, np.float32)
    ctx.add_layer("ConvTranspose", [ctx.blob(0)], [ctx.output()], {
        "out_channels": int(weight.shape[1]) * group, "kernel": kernel, "stride": strides,
        "dilation": dilations, "output_padding": output_padding, "pads": pads,
        "group": group, "bias": bias is not None}, weights)
