"""MVN: mean-variance normalization per channel or per example (Caffe's mvn_layer.cpp).

y = (x - mean) / (std + eps) with std = sqrt(mean((x - mean)^2)): Caffe adds eps to the
standard deviation, not to the variance.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


@register
class MVN(Op):
    """attrs: normalize_variance (bool), across_channels (bool), eps."""

    name = "MVN"

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) < 2:
            raise OpError(f"MVN needs an input with a channel axis, got shape {inputs[0]}")
        return [tuple(inputs[0])]

    def flops(self, inputs, outputs, attrs):
        return (6 if attrs["normalize_variance"] else 2) * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        groups = x.shape[0] if attrs["across_channels"] else x.shape[0] * x.shape[1]
        flat = x.reshape(groups, -1).astype(np.float64)
        centered = flat - flat.mean(axis=1, keepdims=True)
        if attrs["normalize_variance"]:
            std = np.sqrt(np.mean(np.square(centered), axis=1, keepdims=True))
            centered /= std + attrs["eps"]
        return [centered.astype(np.float32).reshape(x.shape)]
