"""Converters for elementwise operators: activations and broadcasting arithmetic."""

from __future__ import annotations

import numpy as np

from edgecaffe.model.onnx.context import ImportContext, attributes
from edgecaffe.model.onnx.registry import converts

#: ONNX op type -> (IR op, attrs) for one-input activations without weights.
_UNARY = {
    "Relu": ("ReLU", {}),
    "Sigmoid": ("Sigmoid", {}),
    "Tanh": ("TanH", {}),
    "Abs": ("AbsVal", {}),
    "Softplus": ("BNLL", {}),
    "HardSwish": ("HardSwish", {}),
    "Exp": ("Exp", {"base": -1.0, "scale": 1.0, "shift": 0.0}),
    "Log": ("Log", {"base": -1.0, "scale": 1.0, "shift": 0.0}),
    "Sqrt": ("Power", {"power": 0.5, "scale": 1.0, "shift": 0.0}),
    "Neg": ("Power", {"power": 1.0, "scale": -1.0, "shift": 0.0}),
    "Reciprocal": ("Power", {"power": -1.0, "scale": 1.0, "shift": 0.0}),
}


@converts(*_UNARY)
def unary(ctx: ImportContext) -> None:
    op, attrs = _UNARY[ctx.node.op_type]
    ctx.add_layer(op, [ctx.blob(0)], [ctx.output()], dict(attrs))


@converts("LeakyRelu")
def leaky_relu(ctx: ImportContext) -> None:
    alpha = float(attributes(ctx.node).get("alpha", 0.01))
    ctx.add_layer("ReLU", [ctx.blob(0)], [ctx.output()], {"negative_slope": alpha})


@converts("Elu")
def elu(ctx: ImportContext) -> None:
    alpha = float(attributes(ctx.node).get("alpha", 1.0))
    ctx.add_layer("ELU", [ctx.blob(0)], [ctx.output()], {"alpha": alpha})


@converts("HardSigmoid")
def hard_sigmoid(ctx: ImportContext) -> None:
    attrs = attributes(ctx.node)
    ctx.add_layer("HardSigmoid", [ctx.blob(0)], [ctx.output()], {
        "alpha": float(attrs.get("alpha", 0.2)), "beta": float(attrs.get("beta", 0.5))})


@converts("PRelu")
def prelu(ctx: ImportContext) -> None:
    slope = ctx.weight(1, "slope")
    shape = ctx.shape(0)
    if slope.size == 1:
        ctx.add_layer("PReLU", [ctx.blob(0)], [ctx.output()], {"channel_shared": True},
                      {"slope": slope.reshape(())})
        return
    # One slope per channel: (C, 1, ..., 1) broadcast against (N, C, ...).
    aligned = (1,) * (len(shape) - slope.ndim) + tuple(slope.shape)
    per_channel = len(aligned) == len(shape) >= 2 and aligned[1] == shape[1] == slope.size
    if not per_channel:
        raise ctx.error(f"PRelu slope of shape {slope.shape} on input {shape} is not supported "
                        "(only one slope, or one per channel)")
    ctx.add_layer("PReLU", [ctx.blob(0)], [ctx.output()], {"channel_shared": False},
                  {"slope": slope.reshape(-1)})


_BINARY = {"Add": "Add", "Sub": "Sub", "Mul": "Mul", "Div": "Div", "Pow": "Pow",
           "Max": "Max", "Min": "Min", "Sum": "Add"}


def _fold_bias(ctx: ImportContext) -> bool:
    """x @ W (a bias-free Dense layer read only here) + b: give the Dense layer the bias, as
    the exporters' MatMul + Add pair means (PyTorch's Linear, TensorFlow's Dense)."""
    if ctx.node.op_type != "Add" or len(ctx.node.input) != 2:
        return False
    for data, other in ((0, 1), (1, 0)):
        if ctx.is_const(data) or not ctx.is_const(other):
            continue
        source = ctx.node.input[data]
        blob = ctx.resolve(source)
        layer = ctx.producer.get(blob)
        if layer is None or layer.op != "Dense" or layer.attrs["bias"] \
                or ctx.readers[source] != 1 or ctx.readers[blob] != 1 \
                or blob in ctx.graph_outputs or blob != layer.outputs[0]:
            return False
        out, bias = layer.attrs["out_features"], ctx.const(other)
        if bias.shape not in ((out,), (1, out)) or len(ctx.shapes[blob]) < bias.ndim:
            return False
        layer.attrs["bias"] = True
        ctx.weights[layer.name]["bias"] = np.ascontiguousarray(bias.reshape(out), np.float32)
        layer.outputs[0] = ctx.output()
        ctx.shapes[ctx.output()] = ctx.shapes.pop(blob)
        ctx.producer[ctx.output()] = ctx.producer.pop(blob)
        ctx.aliases[blob] = ctx.output()
        return True
    return False


@converts(*_BINARY, note="Sum/Max/Min of more than two inputs become a chain")
def binary(ctx: ImportContext) -> None:
    if _fold_bias(ctx):
        return
    op = _BINARY[ctx.node.op_type]
    names = [n for n in ctx.node.input]
    if op == "Pow" and ctx.is_const(1) and ctx.const(1).size == 1 and not ctx.is_const(0):
        exponent = float(np.asarray(ctx.const(1)).reshape(-1)[0])
        ctx.add_layer("Power", [ctx.blob(0)], [ctx.output()],
                      {"power": exponent, "scale": 1.0, "shift": 0.0})
        return
    if len(names) == 1:
        ctx.alias(ctx.output(), names[0])
        return
    current, position = None, 0
    for step in range(len(names) - 1):
        last = step == len(names) - 2
        out = ctx.output() if last else f"{ctx.output()}@{step}"
        name = None if last else ctx.layer_name(f"/{step}")
        left = current if current is not None else names[0]
        right = names[step + 1]
        current = _binary_layer(ctx, op, left, right, out, name, position)
        position = step + 1


def _binary_layer(ctx: ImportContext, op: str, left: str, right: str, out: str,
                  name: str | None, position: int) -> str:
    left_const = ctx.resolve(left) in ctx.consts
    right_const = ctx.resolve(right) in ctx.consts
    if left_const and right_const:
        raise ctx.error("both operands are constant but were not folded")
    if left_const or right_const:
        value = ctx.consts[ctx.resolve(left if left_const else right)]
        constant = "A" if left_const else "B"
        data = ctx.resolve(right if left_const else left)
        ctx.add_layer(op, [data], [out], {"constant": constant,
                      "constant_shape": list(value.shape)},
                      {constant: np.asarray(value, np.float32)}, name=name)
    else:
        ctx.add_layer(op, [ctx.resolve(left), ctx.resolve(right)], [out], {}, name=name)
    return out
