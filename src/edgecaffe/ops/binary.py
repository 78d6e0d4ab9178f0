"""Broadcasting binary arithmetic: Add, Sub, Mul, Div, Max, Min, Pow (numpy's broadcasting rules,
which are ONNX's multidirectional broadcasting).

Each operand is either a computed blob or a constant weight. A constant operand is a weight named
after the ONNX input it stands for (`A` for the first operand, `B` for the second), so one layer
computes `x + B`, `A - x` or `x / B` without an extra blob; with two inputs both are blobs.
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


def broadcast_shape(*shapes) -> tuple[int, ...]:
    """The broadcast of `shapes` (numpy's rule); OpError naming them when they do not match."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        raise OpError(f"shapes {[tuple(s) for s in shapes]} do not broadcast") from None


class Binary(Op):
    """attrs: constant ('A' | 'B' | None: which operand is a weight), constant_shape."""

    inplace = True
    ufunc: np.ufunc

    def _operand_shapes(self, inputs, attrs):
        constant = attrs.get("constant")
        if constant is None:
            if len(inputs) != 2:
                raise OpError(f"{self.name} needs two inputs or a constant operand")
            return list(inputs)
        if len(inputs) != 1 or constant not in ("A", "B"):
            raise OpError(f"{self.name} with constant {constant!r} needs one input")
        shape = tuple(attrs["constant_shape"])
        return [shape, inputs[0]] if constant == "A" else [inputs[0], shape]

    def param_shapes(self, inputs, attrs):
        constant = attrs.get("constant")
        return {constant: tuple(attrs["constant_shape"])} if constant else {}

    def output_shapes(self, inputs, attrs):
        return [broadcast_shape(*self._operand_shapes(inputs, attrs))]

    def flops(self, inputs, outputs, attrs):
        return prod(outputs[0])

    def run(self, inputs, weights, attrs, inplace=False):
        constant = attrs.get("constant")
        if constant == "A":
            a, b = weights["A"], inputs[0]
        elif constant == "B":
            a, b = inputs[0], weights["B"]
        else:
            a, b = inputs
        x = inputs[0]
        # The runner allows in-place only for the first input; write there only if the result
        # has its shape (a broadcast can make the output larger than the input).
        out = x if inplace and x.shape == np.broadcast_shapes(a.shape, b.shape) else None
        return [self.ufunc(a, b, out=out)]


@register
class Add(Binary):
    name = "Add"
    ufunc = np.add


@register
class Sub(Binary):
    name = "Sub"
    ufunc = np.subtract


@register
class Mul(Binary):
    name = "Mul"
    ufunc = np.multiply


@register
class Div(Binary):
    name = "Div"
    ufunc = np.divide


@register
class Max(Binary):
    name = "Max"
    ufunc = np.maximum


@register
class Min(Binary):
    name = "Min"
    ufunc = np.minimum


@register
class Pow(Binary):
    name = "Pow"
    ufunc = np.power
