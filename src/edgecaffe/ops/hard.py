"""Piecewise-linear activations of mobile networks: HardSigmoid and HardSwish (ONNX's
definitions, which PyTorch's Hardsigmoid/Hardswish export to)."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, register


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float, out: np.ndarray | None = None):
    """max(0, min(1, alpha * x + beta)) in float32."""
    y = np.multiply(x, np.float32(alpha), out=out)
    y += np.float32(beta)
    return np.clip(y, np.float32(0), np.float32(1), out=y)


@register
class HardSigmoid(Op):
    """attrs: alpha (ONNX default 0.2), beta (0.5). y = max(0, min(1, alpha * x + beta))."""

    name = "HardSigmoid"
    inplace = True

    def flops(self, inputs, outputs, attrs):
        return 3 * prod(outputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        return [hard_sigmoid(x, attrs["alpha"], attrs["beta"], out=x if inplace else None)]


@register
class HardSwish(Op):
    """y = x * HardSigmoid(x) with alpha 1/6, beta 0.5 (ONNX opset 14)."""

    name = "HardSwish"
    inplace = True

    def flops(self, inputs, outputs, attrs):
        return 4 * prod(outputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        gate = hard_sigmoid(x, 1.0 / 6.0, 0.5)
        return [np.multiply(x, gate, out=x if inplace else gate)]
