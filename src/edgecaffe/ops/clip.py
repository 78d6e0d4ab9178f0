"""Clip: y = min(max(x, min), max) (ONNX Clip, Caffe's clip_layer.cpp).

With min > max every value becomes max, in both ONNX's spec and Caffe's formula.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, register


@register
class Clip(Op):
    """attrs: min, max (None for no bound on that side)."""

    name = "Clip"
    inplace = True

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        y = x if inplace else x.copy()
        if attrs.get("min") is not None:
            np.maximum(y, np.float32(attrs["min"]), out=y)
        if attrs.get("max") is not None:
            np.minimum(y, np.float32(attrs["max"]), out=y)
        return [y]
