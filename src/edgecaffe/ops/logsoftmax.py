"""Log of the softmax along one axis, computed as x - max - log(sum(exp(x - max)))."""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import normalize_axis, register
from edgecaffe.ops.softmax import Softmax


@register
class LogSoftmax(Softmax):
    """attrs: axis. Shapes and FLOPs as Softmax's."""

    name = "LogSoftmax"

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        axis = normalize_axis(attrs["axis"], x.ndim)
        y = np.subtract(x, x.max(axis=axis, keepdims=True), out=x if inplace else None)
        y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
        return [y]
