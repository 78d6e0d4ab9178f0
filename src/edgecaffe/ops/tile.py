"""Tile: repeat the input along axes (Caffe's tile_layer.cpp: `tiles` copies of everything
from `axis` on; ONNX Tile: one repeat count per axis). Both are numpy's tile."""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


def _repeats(rank: int, attrs) -> list[int]:
    if attrs.get("repeats") is not None:
        repeats = list(attrs["repeats"])
        if len(repeats) != rank:
            raise OpError(f"tile needs one repeat count per axis ({rank}), got {repeats}")
    else:
        repeats = [1] * rank
        repeats[normalize_axis(attrs["axis"], rank)] = attrs["tiles"]
    if min(repeats) < 1:
        raise OpError(f"tile repeat counts must be >= 1, got {repeats}")
    return repeats


@register
class Tile(Op):
    """attrs: repeats (one per axis), or axis + tiles (Caffe)."""
    integers = ('axis', 'tiles', 'repeats')

    name = "Tile"

    def output_shapes(self, inputs, attrs):
        shape = tuple(inputs[0])
        return [tuple(d * r for d, r in zip(shape, _repeats(len(shape), attrs), strict=True))]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        return [np.tile(x, _repeats(x.ndim, attrs))]
