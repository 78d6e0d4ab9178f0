"""Softmax along one axis (channels by default), stable against overflow."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, normalize_axis, register


@register
class Softmax(Op):
    """attrs: axis."""

    name = "Softmax"
    inplace = True

    def output_shapes(self, inputs, attrs):
        normalize_axis(attrs["axis"], len(inputs[0]))
        return [tuple(inputs[0])]

    def flops(self, inputs, outputs, attrs):
        return 5 * prod(outputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        axis = normalize_axis(attrs["axis"], x.ndim)
        y = np.subtract(x, x.max(axis=axis, keepdims=True), out=x if inplace else None)
        np.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return [y]
