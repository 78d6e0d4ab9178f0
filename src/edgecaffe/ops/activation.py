"""Elementwise activations: ReLU (leaky), PReLU, Sigmoid, TanH, AbsVal, BNLL, ELU, Power, Exp."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


def _target(x: np.ndarray, inplace: bool) -> np.ndarray | None:
    return x if inplace else None


@register
class ReLU(Op):
    """attrs: negative_slope. y = max(x, 0) + negative_slope * min(x, 0)."""

    name = "ReLU"
    numbers = ('negative_slope',)
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x, slope = inputs[0], attrs.get("negative_slope", 0.0)
        if slope == 0.0:
            return [np.maximum(x, 0, out=_target(x, inplace))]
        scaled = np.multiply(x, np.float32(slope))
        if 0.0 < slope < 1.0:
            # max(x, slope * x) is bit-identical to max(x, 0) + slope * min(x, 0) here, in
            # two passes instead of four.
            return [np.maximum(x, scaled, out=x if inplace else scaled)]
        negative = np.minimum(scaled, 0) if slope > 0 else np.maximum(scaled, 0)
        return [np.add(np.maximum(x, 0, out=_target(x, inplace)), negative,
                       out=_target(x, inplace))]


@register
class PReLU(Op):
    """attrs: channel_shared. One learned slope per channel (axis 1), or one for all."""

    name = "PReLU"
    inplace = True

    def param_shapes(self, inputs, attrs):
        if len(inputs[0]) < 2 and not attrs["channel_shared"]:
            raise OpError("PReLU needs an input with a channel axis")
        # Caffe's shared slope is a 0-d blob (prelu_layer.cpp: Blob(vector<int>(0))).
        return {"slope": () if attrs["channel_shared"] else (inputs[0][1],)}

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        slope = weights["slope"].reshape((1, -1) + (1,) * (x.ndim - 2))
        negative = np.minimum(x, 0) * slope
        return [np.add(np.maximum(x, 0, out=_target(x, inplace)), negative,
                       out=_target(x, inplace))]


@register
class Sigmoid(Op):
    name = "Sigmoid"
    inplace = True

    def flops(self, inputs, outputs, attrs):
        return 4 * prod(outputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        # 0.5 * tanh(0.5 x) + 0.5 is the logistic function without exp overflow.
        y = np.multiply(inputs[0], np.float32(0.5), out=_target(inputs[0], inplace))
        np.tanh(y, out=y)
        y *= np.float32(0.5)
        y += np.float32(0.5)
        return [y]


@register
class TanH(Op):
    name = "TanH"
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        return [np.tanh(inputs[0], out=_target(inputs[0], inplace))]


@register
class AbsVal(Op):
    name = "AbsVal"
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        return [np.abs(inputs[0], out=_target(inputs[0], inplace))]


@register
class BNLL(Op):
    """y = log(1 + exp(x)), computed without overflow."""

    name = "BNLL"
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        return [np.add(np.maximum(x, 0), np.log1p(np.exp(-np.abs(x))), out=_target(x, inplace))]


@register
class ELU(Op):
    """attrs: alpha. y = x if x > 0 else alpha * (exp(x) - 1)."""

    name = "ELU"
    numbers = ('alpha',)

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        negative = np.expm1(np.minimum(x, 0)) * np.float32(attrs["alpha"])
        return [np.where(x > 0, x, negative).astype(np.float32, copy=False)]


@register
class Power(Op):
    """attrs: power, scale, shift. y = (shift + scale * x) ^ power."""

    name = "Power"
    numbers = ('power', 'scale', 'shift')
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        y = np.multiply(x, np.float32(attrs["scale"]), out=_target(x, inplace))
        y += np.float32(attrs["shift"])
        if attrs["power"] != 1.0:
            np.power(y, np.float32(attrs["power"]), out=y)
        return [y]


@register
class Exp(Op):
    """attrs: base (-1 means e), scale, shift. y = base ^ (shift + scale * x)."""

    name = "Exp"
    numbers = ('base', 'scale', 'shift')
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        log_base = 1.0 if attrs["base"] == -1 else float(np.log(attrs["base"]))
        y = np.multiply(x, np.float32(attrs["scale"] * log_base), out=_target(x, inplace))
        y += np.float32(attrs["shift"] * log_base)
        return [np.exp(y, out=y)]
