"""Transpose: axes in a new order (ONNX Transpose's `perm`, Caffe SSD's Permute `order`)."""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


def _perm(rank: int, attrs) -> list[int]:
    perm = attrs.get("perm")
    if perm is None:  # ONNX's default: reverse the axes
        return list(range(rank))[::-1]
    perm = [p % rank if -rank <= p < rank else p for p in perm]
    if attrs.get("fill_perm"):  # Caffe SSD's Permute: unlisted axes follow in input order
        perm += [axis for axis in range(rank) if axis not in perm]
    if sorted(perm) != list(range(rank)):
        raise OpError(f"perm {attrs.get('perm')} is not a permutation of {rank} axes")
    return perm


@register
class Transpose(Op):
    """attrs: perm (output axis i is input axis perm[i]; None reverses the axes), fill_perm
    (bool: a short perm is completed with the missing axes in order, Caffe SSD's Permute)."""
    integers = ('perm',)

    name = "Transpose"

    def output_shapes(self, inputs, attrs):
        shape = inputs[0]
        return [tuple(shape[p] for p in _perm(len(shape), attrs))]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        return [np.ascontiguousarray(x.transpose(_perm(x.ndim, attrs)))]
