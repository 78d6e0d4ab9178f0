"""Crop: cut the first input down to the second input's shape from `axis` on (Caffe's
crop_layer.cpp, used by FCN heads to align an upsampled score map with the image)."""

from __future__ import annotations

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


def _offsets(data, reference, attrs) -> list[int]:
    """Per-axis start offsets: 0 before `axis`; one offset for all, or one per cropped axis."""
    rank = len(data)
    if len(reference) != rank:
        raise OpError(f"crop needs inputs of one rank, got {tuple(data)} and {tuple(reference)}")
    axis = normalize_axis(attrs["axis"], rank)
    given = list(attrs.get("offsets") or [])
    if len(given) > 1 and len(given) != rank - axis:
        raise OpError(f"{len(given)} crop offsets for the {rank - axis} axes from axis {axis}")
    offsets = []
    for i in range(rank):
        offset = 0 if i < axis else (given[0] if len(given) == 1 else
                                     given[i - axis] if given else 0)
        size = reference[i] if i >= axis else data[i]
        if offset < 0 or offset + size > data[i]:
            raise OpError(f"crop of axis {i} to size {size} at offset {offset} is out of bounds "
                          f"for input size {data[i]}")
        offsets.append(offset)
    return offsets


@register
class Crop(Op):
    """attrs: axis (first cropped axis), offsets (one for all, or one per cropped axis).
    Inputs: the data and a reference whose shape (from `axis` on) the output takes."""
    integers = ('axis', 'offsets')

    name = "Crop"

    def output_shapes(self, inputs, attrs):
        if len(inputs) != 2:
            raise OpError(f"crop needs two inputs (data, reference shape), got {len(inputs)}")
        axis = normalize_axis(attrs["axis"], len(inputs[0]))
        _offsets(inputs[0], inputs[1], attrs)
        return [(*inputs[0][:axis], *inputs[1][axis:])]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        data, reference = inputs
        offsets = _offsets(data.shape, reference.shape, attrs)
        (shape,) = self.output_shapes([data.shape, reference.shape], attrs)
        index = tuple(slice(o, o + s) for o, s in zip(offsets, shape, strict=True))
        return [data[index].copy()]
