"""Matrix product of two computed blobs with numpy's (and ONNX's) batch broadcasting.

A product with a constant right-hand matrix is a `Dense` layer (weights load and free like any
other); this operator is for products of two activations (attention scores, bilinear layers).
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops import gemm
from edgecaffe.ops.base import Op, OpError, register
from edgecaffe.ops.binary import broadcast_shape


def matmul_shape(a, b) -> tuple[int, ...]:
    """numpy.matmul's result shape for operand shapes `a`, `b` (1-d operands promoted)."""
    a, b = tuple(a), tuple(b)
    if not a or not b:
        raise OpError(f"matmul of a scalar: shapes {a} and {b}")
    left, right = (1, *a) if len(a) == 1 else a, (*b, 1) if len(b) == 1 else b
    if left[-1] != right[-2]:
        raise OpError(f"matmul inner dimensions differ: {a} @ {b}")
    batch = broadcast_shape(left[:-2], right[:-2])
    out = (*batch, left[-2], right[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@register
class MatMul(Op):
    """inputs: A, B (both blobs). y = A @ B."""

    name = "MatMul"

    def output_shapes(self, inputs, attrs):
        if len(inputs) != 2:
            raise OpError(f"MatMul takes two inputs, got {len(inputs)}")
        return [matmul_shape(*inputs)]

    def flops(self, inputs, outputs, attrs):
        return 2 * prod(outputs[0]) * tuple(inputs[0])[-1]

    def run(self, inputs, weights, attrs, inplace=False):
        a, b = inputs
        if a.ndim == b.ndim == 2 and a.dtype == b.dtype == np.float32:
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            gemm.matmul(a, b, out)  # split across the execution's threads
            return [out]
        return [np.matmul(a, b)]
