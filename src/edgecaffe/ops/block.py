"""Blocks of a layer too large for the memory budget: `DenseBlock` and `ConvBlock`.

A Dense (InnerProduct) or Conv layer whose weights exceed a block size is split at packaging time
(`model/package/blocks.py`) into layers that each hold a slice of the output dimension (Dense
rows, Conv output channels) and write that slice of the full output. The first block allocates
the output; each later block reads the previous block's output as its first input and fills its
own slice in place (a copy only when the runner says the buffer is still read elsewhere).

attrs: the base operator's (full `out_features` / `out_channels`) plus `block: [begin, end)`,
the output rows or channels this block computes. Inputs: `[x]` for the first block,
`[partial, x]` for the others.

Bit-exactness: a Dense/Conv layer large enough to be split computes its output `CHUNK_ROWS`
rows (channels) per GEMM call (`ops.base.output_chunk`), and block edges fall on chunk edges,
so a block makes exactly the GEMM calls the whole layer makes for those rows: the outputs are
bit-for-bit equal by construction, not by luck. (Without chunks, OpenBLAS 0.3.31 gave other last
bits for some block shapes: measured, see tests/test_blocks.py.)
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import CHUNK_ROWS, Op, OpError, get_op, output_chunk, register
from edgecaffe.ops.conv import conv2d
from edgecaffe.ops.dense import dense_rows

#: Block edges are multiples of this many output rows/channels (see the module docstring).
ALIGN = CHUNK_ROWS


class _Block(Op):
    """Shared by both block operators: the base op's rules on a slice of the output axis."""
    integers = ('group', 'out_channels', 'out_features', 'pad', 'stride', 'dilation', 'kernel')

    base = ""
    count_attr = ""
    inplace = True  # permission to fill the previous block's buffer (its first input)

    def _range(self, attrs) -> tuple[int, int]:
        block = attrs.get("block")
        total = attrs[self.count_attr]
        if not (isinstance(block, list | tuple) and len(block) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in block)
                and 0 <= block[0] < block[1] <= total):
            raise OpError(f"{self.name}: block {block!r} must be [begin, end) within "
                          f"0..{total}")
        return int(block[0]), int(block[1])

    def _x(self, inputs):
        if len(inputs) not in (1, 2):
            raise OpError(f"{self.name}: needs [x] or [partial, x], got {len(inputs)} inputs")
        return inputs[-1]

    def param_shapes(self, inputs, attrs):
        begin, end = self._range(attrs)
        shapes = get_op(self.base).param_shapes([self._x(inputs)], attrs)
        return {name: self._slice_shape(name, shape, attrs, end - begin)
                for name, shape in shapes.items()}

    def _slice_shape(self, name, shape, attrs, rows):
        axis = 1 if name == "weight" and attrs.get("transpose") else 0
        return (*shape[:axis], rows, *shape[axis + 1:])

    def output_shapes(self, inputs, attrs):
        out = get_op(self.base).output_shapes([self._x(inputs)], attrs)
        if len(inputs) == 2 and tuple(inputs[0]) != tuple(out[0]):
            raise OpError(f"{self.name}: the previous block's output is {tuple(inputs[0])}, "
                          f"expected {tuple(out[0])}")
        return out

    def workspace_bytes(self, inputs, outputs, attrs):
        return get_op(self.base).workspace_bytes([self._x(inputs)], outputs, attrs)

    def flops(self, inputs, outputs, attrs):
        begin, end = self._range(attrs)
        whole = get_op(self.base).flops([self._x(inputs)], outputs, attrs)
        return whole * (end - begin) // attrs[self.count_attr]

    def run(self, inputs, weights, attrs, inplace=False):
        begin, end = self._range(attrs)
        x = inputs[-1]
        if len(inputs) == 2:
            out = inputs[0] if inplace else inputs[0].copy()
        else:
            shape = get_op(self.base).output_shapes([x.shape], attrs)[0]
            out = np.empty(shape, dtype=np.float32)
        self._fill(x, weights, attrs, out, begin, end)
        return [out]

    def _fill(self, x, weights, attrs, out, begin, end) -> None:
        """Write output rows/channels [begin, end) of the whole layer into `out`."""
        raise NotImplementedError


@register
class DenseBlock(_Block):
    """Rows [begin, end) of a Dense layer's output (its last axis)."""

    name = "DenseBlock"
    base = "Dense"
    count_attr = "out_features"

    def _fill(self, x, weights, attrs, out, begin, end):
        total = attrs["out_features"]
        lead, features = get_op("Dense")._split(x.shape, attrs)
        rows = prod(lead)
        whole = out.reshape(rows, total)
        dense_rows(x.reshape(rows, features), weights["weight"], weights.get("bias"),
                   attrs["transpose"], whole[:, begin:end], output_chunk(features * total * 4))


@register
class ConvBlock(_Block):
    """Output channels [begin, end) of a Conv layer (group 1 only: a grouped layer's channels
    depend on their group's inputs)."""

    name = "ConvBlock"
    base = "Conv"
    count_attr = "out_channels"

    def workspace_bytes(self, inputs, outputs, attrs):
        begin, end = self._range(attrs)
        return get_op("Conv").workspace_rows_bytes(self._x(inputs), outputs[0], attrs,
                                                   end - begin)

    def _fill(self, x, weights, attrs, out, begin, end):
        total = attrs["out_channels"]
        weight = weights["weight"]
        n = x.shape[0]
        conv2d(x, weight, weights.get("bias"), tuple(attrs["stride"]), tuple(attrs["pad"]),
               tuple(attrs["dilation"]), 1, output_chunk(weight[0].nbytes * total),
               out.reshape(n, total, -1)[:, begin:end])

    def param_shapes(self, inputs, attrs):
        if attrs.get("group", 1) != 1:
            raise OpError(f"ConvBlock: group {attrs.get('group')}: only group 1 is split")
        return super().param_shapes(inputs, attrs)
