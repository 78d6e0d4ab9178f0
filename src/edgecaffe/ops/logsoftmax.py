"""Log of the softmax along one axis, computed as x - max - log(sum(exp(x - max)))."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, normalize_axis, register


@register
class LogSoftmax(Op):
    """attrs: axis."""

    name = "LogSoftmax"
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
        y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
        return [y]
