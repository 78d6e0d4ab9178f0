"""Fully connected layer (Caffe's InnerProduct, ONNX's Gemm): one matrix product."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops import gemm
from edgecaffe.ops.base import Op, OpError, normalize_axis, output_chunk, register


def dense_rows(rows: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, transpose: bool,
               out: np.ndarray, chunk: int | None) -> None:
    """out (M x O) = rows (M x K) @ weight.T (+ bias), in fixed chunks of `chunk` output
    columns (None: one product, split across threads as `gemm.matmul` sees fit); weight is
    O x K, or K x O when `transpose`. `out` may be a strided view (a block's slice of the
    whole output)."""
    matrix = weight if transpose else weight.T
    if chunk:
        gemm.matmul_chunks(rows, matrix, out, chunk, rows=False)
    else:
        gemm.matmul(rows, matrix, out)
    if bias is not None:
        out += bias


@register
class Dense(Op):
    """attrs: out_features, axis (flatten from here), bias (bool), transpose (weight is K x O)."""
    integers = ('axis', 'out_features')

    name = "Dense"

    def _split(self, shape, attrs):
        axis = normalize_axis(attrs["axis"], len(shape))
        return shape[:axis], prod(shape[axis:])

    def param_shapes(self, inputs, attrs):
        _, features = self._split(inputs[0], attrs)
        out = attrs["out_features"]
        shapes = {"weight": (features, out) if attrs["transpose"] else (out, features)}
        if attrs["bias"]:
            shapes["bias"] = (out,)
        return shapes

    def output_shapes(self, inputs, attrs):
        lead, _ = self._split(inputs[0], attrs)
        return [(*lead, attrs["out_features"])]

    def flops(self, inputs, outputs, attrs):
        _, features = self._split(inputs[0], attrs)
        return prod(outputs[0]) * (2 * features + (1 if attrs["bias"] else 0))

    def run(self, inputs, weights, attrs, inplace=False):
        x, weight = inputs[0], weights["weight"]
        if x.dtype != np.float32 or weight.dtype != np.float32:
            raise OpError(f"dense layer needs float32, got {x.dtype} x {weight.dtype}")
        lead, features = self._split(x.shape, attrs)
        out = attrs["out_features"]
        y = np.empty((prod(lead), out), dtype=np.float32)
        dense_rows(x.reshape(prod(lead), features), weight, weights.get("bias"),
                   attrs["transpose"], y, output_chunk(features * out * 4))
        return [y.reshape(*lead, out)]
