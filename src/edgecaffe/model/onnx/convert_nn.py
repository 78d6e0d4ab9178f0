"""Converters for the operators with weights or windows: Conv, pooling, Gemm, MatMul,
BatchNormalization, LRN, Softmax and friends."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.model.onnx.context import ImportContext, attributes
from edgecaffe.model.onnx.registry import converts


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """auto_pad SAME_UPPER/SAME_LOWER: output ceil(size / stride), the odd pixel at the end
    (UPPER) or the start (LOWER), per the ONNX Conv spec."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def spatial_pads(ctx: ImportContext, attrs, sizes, kernel, strides, dilations) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial axes, from `pads` or `auto_pad`."""
    auto = attrs.get("auto_pad", "NOTSET")
    rank = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_pads(s, k, st, d, auto == "SAME_UPPER")
                 for s, k, st, d in zip(sizes, kernel, strides, dilations, strict=True)]
        return [p[0] for p in pairs] + [p[1] for p in pairs]
    if auto == "VALID":
        return [0] * (2 * rank)
    if auto != "NOTSET":
        raise ctx.error(f"auto_pad {auto!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    if len(pads) != 2 * rank:
        raise ctx.error(f"pads {pads} should have {2 * rank} entries")
    return pads


def _pad_layer(ctx: ImportContext, blob: str, pads: list[int], value: float) -> str:
    """A Pad layer for asymmetric spatial padding of a 4-d blob (NCHW)."""
    full = [0, 0, *pads[:2], 0, 0, *pads[2:]]
    out = f"{ctx.output()}@pad"
    ctx.add_layer("Pad", [blob], [out], {"pads": full, "mode": "constant", "value": value},
                  name=ctx.layer_name("/pad"))
    return out


def _window(ctx: ImportContext, attrs, sizes, kernel):
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = spatial_pads(ctx, attrs, sizes, kernel, strides, dilations)
    return strides, dilations, pads


def _need_4d(ctx: ImportContext, what: str) -> None:
    if len(ctx.shape(0)) != 4:
        raise ctx.error(f"{what} of a {len(ctx.shape(0))}-d input: only 2-d (NCHW) is supported",
                        "reshape 1-d/3-d data to 4-d in the exporting framework")


@converts("Conv")
def conv(ctx: ImportContext) -> None:
    _need_4d(ctx, "convolution")
    attrs = attributes(ctx.node)
    weight = ctx.weight(1, "weight W")
    bias = ctx.const(2)
    kernel = list(weight.shape[2:])
    strides, dilations, pads = _window(ctx, attrs, ctx.shape(0)[2:], kernel)
    blob = ctx.blob(0)
    if pads[:2] != pads[2:]:
        blob, pads = _pad_layer(ctx, blob, pads, 0.0), [0, 0, 0, 0]
    weights = {"weight": weight}
    if bias is not None:
        weights["bias"] = np.asarray(bias, np.float32)
    ctx.add_layer("Conv", [blob], [ctx.output()], {
        "out_channels": int(weight.shape[0]), "kernel": kernel, "stride": strides,
        "pad": pads[:2], "dilation": dilations, "group": int(attrs.get("group", 1)),
        "bias": bias is not None,
    }, weights)


@converts("MaxPool", "AveragePool")
def pool(ctx: ImportContext) -> None:
    _need_4d(ctx, "pooling")
    attrs = attributes(ctx.node)
    if len(ctx.node.output) > 1 and ctx.readers[ctx.node.output[1]]:
        raise ctx.error("MaxPool's Indices output is not supported")
    kernel = list(attrs["kernel_shape"])
    strides, dilations, pads = _window(ctx, attrs, ctx.shape(0)[2:], kernel)
    if any(d != 1 for d in dilations):
        raise ctx.error(f"pooling dilations {dilations} are not supported")
    is_max = ctx.node.op_type == "MaxPool"
    layer_attrs = {
        "method": "max" if is_max else "avg", "kernel": kernel, "stride": strides,
        "pad": pads[:2], "global": False, "ceil": bool(attrs.get("ceil_mode", 0)),
        "count_include_pad": bool(attrs.get("count_include_pad", 0)),
        "convention": "onnx", "pad_end": pads[2:],
    }
    ctx.add_layer("Pool", [ctx.blob(0)], [ctx.output()], layer_attrs)


@converts("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: ImportContext) -> None:
    _need_4d(ctx, "global pooling")
    method = "max" if ctx.node.op_type == "GlobalMaxPool" else "avg"
    ctx.add_layer("Pool", [ctx.blob(0)], [ctx.output()], {
        "method": method, "kernel": [1, 1], "stride": [1, 1], "pad": [0, 0], "global": True,
        "ceil": False})


def _dense(ctx: ImportContext, blob: str, weight: np.ndarray, transpose: bool,
           bias: np.ndarray | None, axis: int) -> None:
    out_features = int(weight.shape[1] if transpose else weight.shape[0])
    weights = {"weight": weight}
    if bias is not None:
        weights["bias"] = bias
    ctx.add_layer("Dense", [blob], [ctx.output()], {
        "out_features": out_features, "axis": axis, "bias": bias is not None,
        "transpose": transpose}, weights)


@converts("Gemm")
def gemm(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    if attrs.get("transA", 0) or len(ctx.shape(0)) != 2:
        raise ctx.error("Gemm with transA=1 or a non-2-d A is not supported")
    weight = ctx.weight(1, "weight B")
    transposed = bool(attrs.get("transB", 0))
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        weight = (weight * np.float32(alpha)).astype(np.float32)
    out = weight.shape[0] if transposed else weight.shape[1]
    bias = ctx.const(2)
    if bias is not None:
        bias = np.asarray(bias, np.float32) * np.float32(beta)
        if bias.size == 1:
            bias = np.full(out, bias.reshape(-1)[0], np.float32)
        elif bias.shape not in ((out,), (1, out)):
            raise ctx.error(f"Gemm bias C of shape {bias.shape} (not ({out},)) is not supported")
        bias = np.ascontiguousarray(bias.reshape(out), np.float32)
    _dense(ctx, ctx.blob(0), weight, not transposed, bias, axis=1)


@converts("MatMul")
def matmul(ctx: ImportContext) -> None:
    if ctx.is_const(1) and ctx.const(1).ndim == 2 and not ctx.is_const(0):
        # x @ W with a constant matrix: a Dense layer over the last axis.
        _dense(ctx, ctx.blob(0), ctx.weight(1, "B"), True, None, axis=-1)
        return
    ctx.add_layer("MatMul", [ctx.blob(0), ctx.blob(1)], [ctx.output()], {})


@converts("BatchNormalization")
def batch_norm(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    if len([o for o in ctx.node.output if o]) > 1 or attrs.get("training_mode", 0):
        raise ctx.error("training-mode BatchNormalization is not supported")
    scale, bias = ctx.weight(1, "scale"), ctx.weight(2, "B")
    mean, var = ctx.weight(3, "input_mean"), ctx.weight(4, "input_var")
    normalized = f"{ctx.output()}@norm"
    ctx.add_layer("BatchNorm", [ctx.blob(0)], [normalized],
                  {"eps": float(attrs.get("epsilon", 1e-5))},
                  {"mean": mean.reshape(-1), "var": var.reshape(-1)}, name=ctx.layer_name("/norm"))
    ctx.add_layer("Scale", [normalized], [ctx.output()], {"axis": 1, "num_axes": 1, "bias": True},
                  {"scale": scale.reshape(-1), "bias": bias.reshape(-1)})


@converts("LRN")
def lrn(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    ctx.add_layer("LRN", [ctx.blob(0)], [ctx.output()], {
        "size": int(attrs["size"]), "alpha": float(attrs.get("alpha", 1e-4)),
        "beta": float(attrs.get("beta", 0.75)), "k": float(attrs.get("bias", 1.0)),
        "region": "across"})


@converts("Softmax", "LogSoftmax", note="opsets < 13 flatten from `axis` first (as specified)")
def softmax(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    shape = ctx.shape(0)
    op = ctx.node.op_type
    if ctx.opset >= 13:
        ctx.add_layer(op, [ctx.blob(0)], [ctx.output()], {"axis": int(attrs.get("axis", -1))})
        return
    # Before opset 13 the input is coerced to 2-d at `axis` (default 1) and normalised per row.
    axis = int(attrs.get("axis", 1)) % len(shape)
    if all(d == 1 for d in shape[axis + 1 :]):
        ctx.add_layer(op, [ctx.blob(0)], [ctx.output()], {"axis": axis})
        return
    flat = f"{ctx.output()}@2d"
    ctx.add_layer("Reshape", [ctx.blob(0)], [flat], {
        "shape": [prod(shape[:axis]), prod(shape[axis:])], "axis": 0, "num_axes": -1},
        name=ctx.layer_name("/2d"))
    normed = f"{ctx.output()}@normed"
    ctx.add_layer(op, [flat], [normed], {"axis": 1}, name=ctx.layer_name("/softmax"))
    ctx.add_layer("Reshape", [normed], [ctx.output()], {
        "shape": list(shape), "axis": 0, "num_axes": -1})
