"""Reduce: sum, mean, asum (L1), sumsq, l2, max, min, prod, logsumexp over some axes.

One operator for ONNX's Reduce* family and Caffe's Reduction layer (which reduces every axis
from `axis` on, without keeping them, and multiplies by `coeff`: reduction_layer.cpp).
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register

OPERATIONS = ("sum", "mean", "asum", "sumsq", "l2", "max", "min", "prod", "logsumexp")


def _axes(rank: int, attrs) -> tuple[int, ...]:
    if attrs.get("from_axis") is not None:  # Caffe's Reduction: this axis and all after it
        return tuple(range(normalize_axis(attrs["from_axis"], rank, "reduction axis"), rank))
    axes = attrs.get("axes")
    if axes is None:
        return tuple(range(rank))
    normalized = tuple(sorted({normalize_axis(a, rank, "reduce axis") for a in axes}))
    if len(normalized) != len(axes):
        raise OpError(f"reduce axes {list(axes)} repeat an axis")
    return normalized


def _reduce(x: np.ndarray, operation: str, axes: tuple[int, ...]) -> np.ndarray:
    # float64 accumulation: Caffe's sums are float BLAS dots and ORT's are float; a wider
    # accumulator keeps us within both at 1e-5 on long reductions.
    if operation in ("max", "min"):
        return (np.max if operation == "max" else np.min)(x, axis=axes, keepdims=True)
    wide = x.astype(np.float64)
    if operation == "sum":
        return wide.sum(axis=axes, keepdims=True)
    if operation == "mean":
        return wide.mean(axis=axes, keepdims=True)
    if operation == "asum":
        return np.abs(wide).sum(axis=axes, keepdims=True)
    if operation == "sumsq":
        return np.square(wide).sum(axis=axes, keepdims=True)
    if operation == "l2":
        return np.sqrt(np.square(wide).sum(axis=axes, keepdims=True))
    if operation == "prod":
        return wide.prod(axis=axes, keepdims=True)
    top = wide.max(axis=axes, keepdims=True)
    return np.log(np.exp(wide - top).sum(axis=axes, keepdims=True)) + top


@register
class Reduce(Op):
    """attrs: operation (one of OPERATIONS), axes (None = all) or from_axis (that axis and
    every later one), keepdims (bool), coeff (a factor applied after reducing; 1 by default)."""
    integers = ('axes', 'from_axis')

    name = "Reduce"

    def output_shapes(self, inputs, attrs):
        if attrs["operation"] not in OPERATIONS:
            raise OpError(f"reduce operation {attrs['operation']!r}; known: {OPERATIONS}")
        shape = tuple(inputs[0])
        axes = _axes(len(shape), attrs)
        if attrs.get("keepdims", True):
            return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
        # A full reduction without kept dims is a 0-d scalar, as in ONNX and Caffe.
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def flops(self, inputs, outputs, attrs):
        return 2 * prod(inputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        y = _reduce(x, attrs["operation"], _axes(x.ndim, attrs))
        coeff = attrs.get("coeff", 1.0)
        if coeff != 1.0:
            y = y * coeff
        shape = self.output_shapes([x.shape], attrs)[0]
        return [y.astype(np.float32).reshape(shape)]
