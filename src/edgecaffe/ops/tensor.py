"""Layers that move data rather than compute: Input, Dropout, Concat, Slice, Eltwise, Flatten,
Reshape."""

from __future__ import annotations

from itertools import pairwise
from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


@register
class Input(Op):
    """attrs: shape. The network's input; the executor fills it, it never runs."""

    name = "Input"

    def output_shapes(self, inputs, attrs):
        return [tuple(attrs["shape"])]

    def flops(self, inputs, outputs, attrs):
        return 0


@register
class Dropout(Op):
    """attrs: ratio. The identity at inference (Caffe scales during training only)."""

    name = "Dropout"
    view = True

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [inputs[0]]


@register
class Concat(Op):
    """attrs: axis."""
    integers = ('axis',)

    name = "Concat"

    def output_shapes(self, inputs, attrs):
        first = inputs[0]
        axis = normalize_axis(attrs["axis"], len(first))
        for shape in inputs[1:]:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != axis
            ):
                raise OpError(f"cannot concatenate shapes {list(inputs)} along axis {axis}")
        return [(*first[:axis], sum(s[axis] for s in inputs), *first[axis + 1 :])]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [np.concatenate(inputs, axis=attrs["axis"])]


@register
class Slice(Op):
    """attrs: axis, points (split positions; empty means equal parts), num_outputs."""
    integers = ('axis', 'points', 'num_outputs')

    name = "Slice"

    def _bounds(self, shape, attrs):
        axis = normalize_axis(attrs["axis"], len(shape))
        count, points = attrs["num_outputs"], list(attrs["points"])
        if not points:
            if shape[axis] % count:
                raise OpError(f"axis size {shape[axis]} does not split into {count} equal parts")
            points = [shape[axis] // count * i for i in range(1, count)]
        if len(points) != count - 1 or points != sorted(points) or points[-1:] > [shape[axis]]:
            raise OpError(f"slice points {points} do not give {count} parts of axis {axis}")
        return axis, [0, *points, shape[axis]]

    def output_shapes(self, inputs, attrs):
        axis, bounds = self._bounds(inputs[0], attrs)
        shape = inputs[0]
        return [(*shape[:axis], end - start, *shape[axis + 1 :])
                for start, end in pairwise(bounds)]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        axis, bounds = self._bounds(inputs[0].shape, attrs)
        index = [slice(None)] * inputs[0].ndim
        parts = []
        for start, end in pairwise(bounds):
            index[axis] = slice(start, end)
            parts.append(np.ascontiguousarray(inputs[0][tuple(index)]))
        return parts


@register
class Eltwise(Op):
    """attrs: operation ('sum' | 'prod' | 'max'), coeffs (for sum; empty means all ones)."""

    name = "Eltwise"

    def output_shapes(self, inputs, attrs):
        if len(inputs) < 2 or any(tuple(s) != tuple(inputs[0]) for s in inputs):
            raise OpError(f"eltwise needs two or more inputs of one shape, got {list(inputs)}")
        # Caffe's eltwise_layer.cpp: one coefficient per input or none; PROD refuses them and
        # MAX accepts and ignores them.
        coeffs = attrs.get("coeffs") or []
        if coeffs and (attrs["operation"] == "prod" or len(coeffs) != len(inputs)):
            raise OpError(f"{len(coeffs)} coefficients for {len(inputs)} inputs of "
                          f"{attrs['operation']!r}: sum and max take one per input, prod none")
        return [tuple(inputs[0])]

    def flops(self, inputs, outputs, attrs):
        scaled = attrs.get("coeffs") and attrs["operation"] == "sum"
        return prod(outputs[0]) * (len(inputs) - 1) * (2 if scaled else 1)

    def run(self, inputs, weights, attrs, inplace=False):
        operation = attrs["operation"]
        coeffs = (attrs.get("coeffs") or []) if operation == "sum" else []
        first = inputs[0]
        if coeffs:
            out = np.multiply(first, np.float32(coeffs[0]), out=first if inplace else None)
        else:
            out = first if inplace else first.copy()
        for index, other in enumerate(inputs[1:], start=1):
            if operation == "sum":
                if coeffs:
                    out += np.float32(coeffs[index]) * other
                else:
                    out += other
            elif operation == "prod":
                out *= other
            else:
                np.maximum(out, other, out=out)
        return [out]


@register
class Flatten(Op):
    """attrs: axis, end_axis (inclusive)."""
    integers = ('axis', 'end_axis')

    name = "Flatten"
    view = True

    def output_shapes(self, inputs, attrs):
        shape = inputs[0]
        start = normalize_axis(attrs["axis"], len(shape))
        end = normalize_axis(attrs["end_axis"], len(shape), "end_axis")
        if end < start:
            raise OpError(f"flatten end_axis {end} comes before axis {start}")
        return [(*shape[:start], prod(shape[start : end + 1]), *shape[end + 1 :])]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [inputs[0].reshape(self.output_shapes([inputs[0].shape], attrs)[0])]


@register
class Reshape(Op):
    """attrs: shape (0 copies the input dim, -1 is inferred), axis, num_axes (Caffe's rules)."""
    integers = ('shape', 'axis', 'num_axes')

    name = "Reshape"
    view = True

    def output_shapes(self, inputs, attrs):
        shape = tuple(inputs[0])
        rank = len(shape)
        axis = attrs["axis"]
        start = axis + rank + 1 if axis < 0 else axis
        if not 0 <= start <= rank:
            raise OpError(f"reshape axis {axis} is out of range for a {rank}-d blob")
        end = rank if attrs["num_axes"] == -1 else start + attrs["num_axes"]
        if end > rank:
            raise OpError(f"reshape axis {axis} + num_axes {attrs['num_axes']} exceed {rank} axes")
        dims = []
        for i, dim in enumerate(attrs["shape"]):
            if dim == 0:
                if start + i >= rank:
                    raise OpError(f"reshape dim {i} is 0 but the input has no axis {start + i}")
                dims.append(shape[start + i])
            else:
                dims.append(dim)
        new = [*shape[:start], *dims, *shape[end:]]
        if new.count(-1) > 1:
            raise OpError("reshape may infer (-1) at most one dimension")
        if -1 in new:
            known = prod(d for d in new if d != -1)
            if known == 0 or prod(shape) % known:
                raise OpError(f"cannot reshape {shape} into {tuple(new)}")
            new[new.index(-1)] = prod(shape) // known
        if prod(new) != prod(shape):
            raise OpError(f"cannot reshape {shape} ({prod(shape)} values) into {tuple(new)}")
        return [tuple(new)]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [inputs[0].reshape(self.output_shapes([inputs[0].shape], attrs)[0])]
