"""StridedSlice: a box of an array with a step per axis (ONNX's Slice, numpy's x[a:b:s]).

The importer resolves ONNX's clamping and negative indices for the known input shape, so the
attrs are plain Python slice bounds. (Caffe's Slice layer, which cuts an axis into parts, is the
`Slice` operator.)
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


def _index(shape, attrs) -> tuple[slice, ...]:
    starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise OpError("starts, ends, axes and steps must have one entry per sliced axis")
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0:
            raise OpError("slice step 0")
        # None in `end` means "through the first element" for negative steps.
        index[normalize_axis(axis, len(shape))] = slice(start, end, step)
    return tuple(index)


@register
class StridedSlice(Op):
    """attrs: starts, ends (None: to the end), axes, steps (lists, one entry per sliced axis)."""
    integers = ('axes', 'ends', 'starts', 'steps')

    name = "StridedSlice"

    def output_shapes(self, inputs, attrs):
        index = _index(inputs[0], attrs)
        shape = tuple(len(range(*s.indices(d))) for s, d in zip(index, inputs[0], strict=True))
        if any(d == 0 for d in shape):
            raise OpError(f"slice gives an empty blob {shape} from {tuple(inputs[0])}")
        return [shape]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        return [np.ascontiguousarray(inputs[0][_index(inputs[0].shape, attrs)])]
