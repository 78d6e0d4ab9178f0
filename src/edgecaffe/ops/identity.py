"""Identity: the output is the input (a view, no copy). Importers use it where a graph output is
another name for an existing blob."""

from __future__ import annotations

from edgecaffe.ops.base import Op, register


@register
class Identity(Op):
    name = "Identity"
    view = True

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [inputs[0]]
