"""One emitter per IR operator: the ONNX nodes that compute what the IR kernel computes."""

from __future__ import annotations

from collections.abc import Callable
from math import log

import numpy as np

from edgecaffe.model.network import Layer
from edgecaffe.model.onnx.export import GraphBuilder
from edgecaffe.ops.pool import _geometry

Emitter = Callable[[GraphBuilder, Layer, dict[str, np.ndarray]], None]
EMITTERS: dict[str, Emitter] = {}


def emits(*ops: str):
    def register(function: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = function
        return function

    return register


def _w(b: GraphBuilder, layer: Layer, weights, key: str, array=None) -> str:
    return b.const(f"{layer.name}.{key}", weights[key] if array is None else array)


def _reshape(b: GraphBuilder, blob: str, shape, out: str | None = None) -> str:
    target = b.ints(f"{b.layer.name}/shape", shape)
    return b.node("Reshape", [blob, target], [out] if out else None)[0]


@emits("Conv")
def conv(b, layer, weights):
    a = layer.attrs
    inputs = [layer.inputs[0], _w(b, layer, weights, "weight")]
    if a["bias"]:
        inputs.append(_w(b, layer, weights, "bias"))
    b.node("Conv", inputs, layer.outputs, kernel_shape=list(a["kernel"]),
           strides=list(a["stride"]), pads=[*a["pad"], *a["pad"]],
           dilations=list(a["dilation"]), group=int(a["group"]))


@emits("ConvTranspose")
def conv_transpose(b, layer, weights):
    a = layer.attrs
    inputs = [layer.inputs[0], _w(b, layer, weights, "weight")]
    if a["bias"]:
        inputs.append(_w(b, layer, weights, "bias"))
    b.node("ConvTranspose", inputs, layer.outputs, kernel_shape=list(a["kernel"]),
           strides=list(a["stride"]), pads=list(a["pads"]), dilations=list(a["dilation"]),
           output_padding=list(a["output_padding"]), group=int(a["group"]))


@emits("Pool")
def pool(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    is_max = a["method"] == "max"
    if a["global"]:
        b.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], layer.outputs)
        return
    shape, out = b.shape(x), b.shape(layer.outputs[0])
    kernel, stride, pad, _ = _geometry(shape, a)
    # The IR's output size (Caffe's ceil-and-clip, or ONNX floor/ceil) as explicit end pads
    # under floor rounding: floor((size + begin + end - k) / s) + 1 == out exactly.
    end = [(o - 1) * s + k - size - p
           for o, s, k, size, p in zip(out[2:], stride, kernel, shape[2:], pad, strict=True)]
    # A negative end pad (a window dropped by Caffe's clip rule when stride > kernel): pool
    # without it and crop the extra row/column.
    crop = any(e < 0 for e in end)
    end = [max(0, e) for e in end]
    target = None if crop else layer.outputs
    if is_max:
        y = b.node("MaxPool", [x], target, kernel_shape=list(kernel), strides=list(stride),
                   pads=[*pad, *end])[0]
    elif a.get("count_include_pad", True) and any(pad):
        # Caffe divides by the window clipped to size + pad: zero-pad first, then exclude
        # only what lies beyond that.
        pad_end = a.get("pad_end") or pad
        padded = b.node("Pad", [x, b.ints(f"{layer.name}/pads",
                                          [0, 0, *pad, 0, 0, *pad_end])])[0]
        extra = [max(0, e - p) for e, p in zip(end, pad_end, strict=True)]
        y = b.node("AveragePool", [padded], target, kernel_shape=list(kernel),
                   strides=list(stride), pads=[0, 0, *extra], count_include_pad=0)[0]
    else:
        y = b.node("AveragePool", [x], target, kernel_shape=list(kernel), strides=list(stride),
                   pads=[*pad, *end], count_include_pad=0)[0]
    if crop:
        b.node("Slice", [y, b.ints(f"{layer.name}/starts", [0, 0]),
                         b.ints(f"{layer.name}/ends", out[2:]),
                         b.ints(f"{layer.name}/axes", [2, 3])], layer.outputs)


@emits("Dense")
def dense(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    shape = b.shape(x)
    axis = a["axis"] % len(shape)
    lead, out = shape[:axis], a["out_features"]
    flat = x if len(shape) == 2 and axis == 1 else \
        b.node("Flatten", [x], axis=axis)[0]
    inputs = [flat, _w(b, layer, weights, "weight")]
    if a["bias"]:
        inputs.append(_w(b, layer, weights, "bias"))
    target = layer.outputs if len(lead) == 1 else None
    y = b.node("Gemm", inputs, target, transB=0 if a["transpose"] else 1)[0]
    if len(lead) != 1:
        _reshape(b, y, [*lead, out], layer.outputs[0])


@emits("MatMul")
def matmul(b, layer, weights):
    b.node("MatMul", list(layer.inputs), layer.outputs)


@emits("Softmax", "LogSoftmax")
def softmax(b, layer, weights):
    b.node(layer.op, [layer.inputs[0]], layer.outputs, axis=int(layer.attrs["axis"]))


@emits("LRN")
def lrn(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    if a["region"] == "across":
        b.node("LRN", [x], layer.outputs, size=int(a["size"]), alpha=float(a["alpha"]),
               beta=float(a["beta"]), bias=float(a["k"]))
        return
    # Within a channel: x * (1 + alpha/size^2 * window sum of x^2)^-beta; the window mean of x^2
    # (zeros counted) is an AveragePool with count_include_pad.
    size, half = int(a["size"]), (int(a["size"]) - 1) // 2
    square = b.node("Mul", [x, x])[0]
    mean = b.node("AveragePool", [square], kernel_shape=[size, size], strides=[1, 1],
                  pads=[half] * 4, count_include_pad=1)[0]
    scaled = b.node("Mul", [mean, b.const(f"{layer.name}/alpha", a["alpha"])])[0]
    based = b.node("Add", [scaled, b.const(f"{layer.name}/one", 1.0)])[0]
    factor = b.node("Pow", [based, b.const(f"{layer.name}/beta", -a["beta"])])[0]
    b.node("Mul", [x, factor], layer.outputs)


def _channel(b: GraphBuilder, layer: Layer, name: str, array, axis: int, rank: int) -> str:
    """A per-axis parameter reshaped to broadcast against a blob at `axis`."""
    array = np.asarray(array, np.float32)
    if array.size == 1:
        return b.const(f"{layer.name}.{name}", array.reshape(()))
    return b.const(f"{layer.name}.{name}",
                   array.reshape(array.shape + (1,) * (rank - axis - array.ndim)))


@emits("BatchNorm")
def batch_norm(b, layer, weights):
    x = layer.inputs[0]
    rank = len(b.shape(x))
    std = np.sqrt(weights["var"] + np.float32(layer.attrs["eps"]))
    centred = b.node("Sub", [x, _channel(b, layer, "mean", weights["mean"], 1, rank)])[0]
    b.node("Div", [centred, _channel(b, layer, "std", std, 1, rank)], layer.outputs)


@emits("Scale", "Bias")
def scale_bias(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    rank = len(b.shape(x))
    axis = a.get("axis", 1) % rank
    current = x
    if layer.op == "Scale":
        if len(layer.inputs) > 1:
            other = layer.inputs[1]
            factor = _reshape(b, other, list(b.shape(other)) + [1] * (
                rank - axis - len(b.shape(other))))
        else:
            factor = _channel(b, layer, "scale", weights["scale"], axis, rank)
        last = not a["bias"]
        current = b.node("Mul", [current, factor], layer.outputs if last else None)[0]
        if last:
            return
    if layer.op == "Bias" and len(layer.inputs) > 1:
        other = layer.inputs[1]
        bias = _reshape(b, other, list(b.shape(other)) + [1] * (rank - axis - len(b.shape(other))))
    else:
        bias = _channel(b, layer, "bias", weights["bias"], axis, rank)
    b.node("Add", [current, bias], layer.outputs)


@emits("ReLU")
def relu(b, layer, weights):
    slope = float(layer.attrs.get("negative_slope", 0.0))
    if slope == 0.0:
        b.node("Relu", [layer.inputs[0]], layer.outputs)
    else:
        b.node("LeakyRelu", [layer.inputs[0]], layer.outputs, alpha=slope)


@emits("PReLU")
def prelu(b, layer, weights):
    rank = len(b.shape(layer.inputs[0]))
    slope = _channel(b, layer, "slope", weights["slope"], 1, rank)
    b.node("PRelu", [layer.inputs[0], slope], layer.outputs)


_SIMPLE = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus",
           "HardSwish": "HardSwish", "Dropout": "Identity", "Identity": "Identity"}


@emits(*_SIMPLE)
def simple(b, layer, weights):
    b.node(_SIMPLE[layer.op], [layer.inputs[0]], layer.outputs)


@emits("ELU")
def elu(b, layer, weights):
    b.node("Elu", [layer.inputs[0]], layer.outputs, alpha=float(layer.attrs["alpha"]))


@emits("HardSigmoid")
def hard_sigmoid(b, layer, weights):
    b.node("HardSigmoid", [layer.inputs[0]], layer.outputs, alpha=float(layer.attrs["alpha"]),
           beta=float(layer.attrs["beta"]))


def _affine(b: GraphBuilder, layer: Layer, x: str, scale: float, shift: float) -> str:
    if scale != 1.0:
        x = b.node("Mul", [x, b.const(f"{layer.name}/scale", scale)])[0]
    if shift != 0.0:
        x = b.node("Add", [x, b.const(f"{layer.name}/shift", shift)])[0]
    return x


@emits("Power")
def power(b, layer, weights):
    a = layer.attrs
    y = _affine(b, layer, layer.inputs[0], float(a["scale"]), float(a["shift"]))
    if a["power"] != 1.0:
        b.node("Pow", [y, b.const(f"{layer.name}/power", a["power"])], layer.outputs)
    else:
        b.node("Identity", [y], layer.outputs)


@emits("Exp")
def exp(b, layer, weights):
    a = layer.attrs
    factor = 1.0 if a["base"] == -1 else log(a["base"])
    y = _affine(b, layer, layer.inputs[0], a["scale"] * factor, a["shift"] * factor)
    b.node("Exp", [y], layer.outputs)


@emits("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")
def binary(b, layer, weights):
    constant = layer.attrs.get("constant")
    if constant == "A":
        inputs = [_w(b, layer, weights, "A"), layer.inputs[0]]
    elif constant == "B":
        inputs = [layer.inputs[0], _w(b, layer, weights, "B")]
    else:
        inputs = list(layer.inputs)
    b.node(layer.op, inputs, layer.outputs)


@emits("Constant")
def constant(b, layer, weights):
    b.node("Identity", [_w(b, layer, weights, "value")], layer.outputs)


@emits("Concat")
def concat(b, layer, weights):
    b.node("Concat", list(layer.inputs), layer.outputs, axis=int(layer.attrs["axis"]))


@emits("Slice")
def slice_(b, layer, weights):
    x = layer.inputs[0]
    axis = layer.attrs["axis"] % len(b.shape(x))
    sizes = [b.shape(o)[axis] for o in layer.outputs]
    b.node("Split", [x, b.ints(f"{layer.name}/split", sizes)], list(layer.outputs), axis=axis)


@emits("Eltwise")
def eltwise(b, layer, weights):
    operation, coeffs = layer.attrs["operation"], layer.attrs.get("coeffs") or []
    inputs = list(layer.inputs)
    if coeffs:
        inputs = [x if c == 1.0 else b.node("Mul", [x, b.const(f"{layer.name}/coeff", c)])[0]
                  for x, c in zip(inputs, coeffs, strict=True)]
    op = {"sum": "Sum", "prod": "Mul", "max": "Max"}[operation]
    if op == "Mul":
        current = inputs[0]
        for i, other in enumerate(inputs[1:], 1):
            current = b.node("Mul", [current, other],
                             layer.outputs if i == len(inputs) - 1 else None)[0]
        return
    b.node(op, inputs, layer.outputs)


@emits("Flatten", "Reshape")
def reshape(b, layer, weights):
    _reshape(b, layer.inputs[0], b.shape(layer.outputs[0]), layer.outputs[0])


@emits("StridedSlice")
def strided_slice(b, layer, weights):
    a = layer.attrs
    # An open end (None, going backwards) is "through index 0": any end below -size does it.
    ends = [e if e is not None else -(2 ** 62) for e in a["ends"]]
    inputs = [layer.inputs[0], b.ints(f"{layer.name}/starts", a["starts"]),
              b.ints(f"{layer.name}/ends", ends), b.ints(f"{layer.name}/axes", a["axes"]),
              b.ints(f"{layer.name}/steps", a["steps"])]
    b.node("Slice", inputs, layer.outputs)


@emits("Transpose")
def transpose(b, layer, weights):
    from edgecaffe.ops.transpose import _perm

    perm = _perm(len(b.shape(layer.inputs[0])), layer.attrs)  # Caffe's short perms completed
    b.node("Transpose", [layer.inputs[0]], layer.outputs, perm=[int(p) for p in perm])


@emits("Clip")
def clip(b, layer, weights):
    low, high = layer.attrs.get("min"), layer.attrs.get("max")
    inputs = [layer.inputs[0],
              "" if low is None else b.const(f"{layer.name}/min", low),
              "" if high is None else b.const(f"{layer.name}/max", high)]
    while inputs[-1] == "":
        inputs.pop()
    b.node("Clip", inputs, layer.outputs)


@emits("Pad")
def pad(b, layer, weights):
    a = layer.attrs
    inputs = [layer.inputs[0], b.ints(f"{layer.name}/pads", a["pads"])]
    mode = a.get("mode", "constant")
    if mode == "constant":
        inputs.append(b.const(f"{layer.name}/value", a.get("value", 0.0)))
    b.node("Pad", inputs, layer.outputs, mode=mode)


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin",
           "prod": "ReduceProd", "asum": "ReduceL1", "l2": "ReduceL2",
           "sumsq": "ReduceSumSquare", "logsumexp": "ReduceLogSumExp"}


@emits("Reduce")
def reduce(b, layer, weights):
    from edgecaffe.ops.reduce import _axes

    a, x = layer.attrs, layer.inputs[0]
    axes = list(_axes(len(b.shape(x)), a))  # axes, from_axis (Caffe's Reduction) or all
    coeff = float(a.get("coeff", 1.0))
    op = _REDUCE[a["operation"]]
    keep = int(bool(a.get("keepdims", True)))
    target = layer.outputs if coeff == 1.0 else None
    # Opset 17: ReduceSum takes axes as an input (since 13), the others as an attribute.
    if op == "ReduceSum":
        y = b.node(op, [x, b.ints(f"{layer.name}/axes", axes)], target, keepdims=keep)[0]
    else:
        y = b.node(op, [x], target, axes=axes, keepdims=keep)[0]
    if coeff != 1.0:
        b.node("Mul", [y, b.const(f"{layer.name}/coeff", coeff)], layer.outputs)


@emits("Resize")
def resize(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    out = b.shape(layer.outputs[0])
    inputs = [x, ""]
    if a.get("sizes") is not None or a.get("interp") is not None:
        inputs += ["", b.ints(f"{layer.name}/sizes", out)]
    else:
        inputs.append(b.const(f"{layer.name}/scales", [1.0, 1.0, *a["scales"]]))
    attrs = {"mode": a.get("mode", "nearest"),
             "coordinate_transformation_mode": a.get("coordinate_transformation_mode",
                                                     "half_pixel")}
    if attrs["mode"] == "nearest":
        attrs["nearest_mode"] = a.get("nearest_mode", "round_prefer_floor")
    b.node("Resize", inputs, layer.outputs, **attrs)



@emits("Threshold")
def threshold(b, layer, weights):
    above = b.node("Greater", [layer.inputs[0],
                               b.const(f"{layer.name}/threshold", layer.attrs["threshold"])])[0]
    b.node("Cast", [above], layer.outputs, to=1)  # FLOAT


@emits("Log")
def log_(b, layer, weights):
    a = layer.attrs
    y = _affine(b, layer, layer.inputs[0], float(a["scale"]), float(a["shift"]))
    if a["base"] == -1:
        b.node("Log", [y], layer.outputs)
        return
    natural = b.node("Log", [y])[0]
    b.node("Mul", [natural, b.const(f"{layer.name}/base", 1.0 / log(a["base"]))], layer.outputs)


@emits("Swish")
def swish(b, layer, weights):
    x = layer.inputs[0]
    beta = float(layer.attrs.get("beta", 1.0))
    scaled = x if beta == 1.0 else b.node("Mul", [x, b.const(f"{layer.name}/beta", beta)])[0]
    gate = b.node("Sigmoid", [scaled])[0]
    b.node("Mul", [x, gate], layer.outputs)


@emits("Tile")
def tile(b, layer, weights):
    from edgecaffe.ops.tile import _repeats

    repeats = _repeats(len(b.shape(layer.inputs[0])), layer.attrs)
    b.node("Tile", [layer.inputs[0], b.ints(f"{layer.name}/repeats", repeats)], layer.outputs)


@emits("Crop")
def crop(b, layer, weights):
    from edgecaffe.ops.crop import _offsets

    data, reference = layer.inputs[0], layer.inputs[1]
    offsets = _offsets(b.shape(data), b.shape(reference), layer.attrs)
    out = b.shape(layer.outputs[0])
    axes = list(range(len(out)))
    b.node("Slice", [data, b.ints(f"{layer.name}/starts", offsets),
                     b.ints(f"{layer.name}/ends", [o + s for o, s in zip(offsets, out,
                                                                         strict=True)]),
                     b.ints(f"{layer.name}/axes", axes)], layer.outputs)


@emits("MVN")
def mvn(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    rank = len(b.shape(x))
    axes = list(range(1 if a["across_channels"] else 2, rank))
    mean = b.node("ReduceMean", [x], axes=axes, keepdims=1)[0]
    centred = b.node("Sub", [x, mean], None if a["normalize_variance"] else layer.outputs)[0]
    if not a["normalize_variance"]:
        return
    square = b.node("Mul", [centred, centred])[0]
    std = b.node("Sqrt", [b.node("ReduceMean", [square], axes=axes, keepdims=1)[0]])[0]
    shifted = b.node("Add", [std, b.const(f"{layer.name}/eps", a["eps"])])[0]
    b.node("Div", [centred, shifted], layer.outputs)


@emits("Normalize")
def normalize(b, layer, weights):
    a, x = layer.attrs, layer.inputs[0]
    rank = len(b.shape(x))
    axes = list(range(1, rank)) if a["across_spatial"] else [1]
    square = b.node("Mul", [x, x])[0]
    total = b.node("ReduceSum", [square, b.ints(f"{layer.name}/axes", axes)], keepdims=1)[0]
    shifted = b.node("Add", [total, b.const(f"{layer.name}/eps", a["eps"])])[0]
    normed = b.node("Div", [x, b.node("Sqrt", [shifted])[0]])[0]
    scale = _channel(b, layer, "scale", weights["scale"], 1, rank)
    b.node("Mul", [normed, scale], layer.outputs)


@emits("PriorBox")
def prior_box(b, layer, weights):
    """Prior boxes depend only on shapes, which are fixed: they are written as a constant."""
    import numpy as np

    from edgecaffe.ops import get_op

    zeros = [np.zeros(b.shape(blob), np.float32) for blob in layer.inputs]
    (boxes,) = get_op("PriorBox").run(zeros, {}, layer.attrs)
    b.node("Identity", [b.const(f"{layer.name}.boxes", boxes)], layer.outputs)
