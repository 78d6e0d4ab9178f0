"""A constant tensor as a layer: its value is the layer's weight `value`, loaded and freed like any
other weight. Importers use it where a constant feeds an operator that takes only blobs (a
Concat of an activation with a learned tensor, a MatMul with a constant left operand)."""

from __future__ import annotations

from edgecaffe.ops.base import Op, register


@register
class Constant(Op):
    """attrs: shape. No inputs; output = weights['value'] (a copy, so kernels may overwrite it)."""
    integers = ('shape',)

    name = "Constant"

    def param_shapes(self, inputs, attrs):
        return {"value": tuple(attrs["shape"])}

    def output_shapes(self, inputs, attrs):
        return [tuple(attrs["shape"])]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [weights["value"].copy()]
