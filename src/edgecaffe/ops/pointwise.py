"""More elementwise layers: Threshold, Log, Swish (Caffe's threshold_layer.cpp, log_layer.cpp,
swish_layer.cpp)."""

from __future__ import annotations

import math

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


@register
class Threshold(Op):
    """attrs: threshold. y = 1 if x > threshold else 0."""

    name = "Threshold"
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        above = x > np.float32(attrs["threshold"])
        if inplace:
            x[...] = above
            return [x]
        return [above.astype(np.float32)]


@register
class Log(Op):
    """attrs: base (-1 means e), scale, shift. y = log_base(shift + scale * x)."""

    name = "Log"
    inplace = True

    def output_shapes(self, inputs, attrs):
        base = attrs["base"]
        if base != -1 and (base <= 0 or base == 1):
            raise OpError(f"log base must be -1 (e) or positive and not 1, got {base}")
        return [tuple(inputs[0])]

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        y = np.multiply(x, np.float32(attrs["scale"]), out=x if inplace else None)
        y += np.float32(attrs["shift"])
        with np.errstate(divide="ignore", invalid="ignore"):  # log(<=0) is -inf/nan, as in Caffe
            np.log(y, out=y)
        if attrs["base"] != -1:
            y *= np.float32(1.0 / math.log(attrs["base"]))
        return [y]


@register
class Swish(Op):
    """attrs: beta. y = x * sigmoid(beta * x)."""

    name = "Swish"
    inplace = True

    def flops(self, inputs, outputs, attrs):
        return 6 * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        # sigmoid(z) = 0.5 * tanh(0.5 z) + 0.5, without exp overflow.
        gate = np.tanh(x * np.float32(0.5 * attrs["beta"]))
        gate *= np.float32(0.5)
        gate += np.float32(0.5)
        return [np.multiply(x, gate, out=x if inplace else None)]
