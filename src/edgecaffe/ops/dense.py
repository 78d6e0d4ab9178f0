"""Fully connected layer (Caffe's InnerProduct, ONNX's Gemm): one matrix product."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops import gemm
from edgecaffe.ops.base import Op, OpError, normalize_axis, register


@register
class Dense(Op):
    """attrs: out_features, axis (flatten from here), bias (bool), transpose (weight is K x O)."""

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
        lead, features = self._split(x.shape, attrs)
        rows = x.reshape(prod(lead), features)
        matrix = weight if attrs["transpose"] else weight.T
        dtype = np.result_type(rows, matrix)
        if dtype != np.float32:
            raise OpError(f"dense layer would produce {dtype}, expected float32")
        y = np.empty((rows.shape[0], matrix.shape[1]), dtype=np.float32)
        gemm.matmul(rows, matrix, y)
        if "bias" in weights:
            y += weights["bias"]
        return [y.reshape(*lead, attrs["out_features"])]
