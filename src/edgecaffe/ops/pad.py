"""Pad: constant, reflect, edge or wrap padding with per-side amounts (ONNX Pad).

Negative amounts crop, as in ONNX.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register

MODES = ("constant", "reflect", "edge", "wrap")


def _pads(rank: int, attrs) -> list[tuple[int, int]]:
    pads = list(attrs["pads"])
    if len(pads) != 2 * rank:
        raise OpError(f"pad needs 2 x {rank} amounts (all begins, then all ends), got {pads}")
    return list(zip(pads[:rank], pads[rank:], strict=True))


@register
class Pad(Op):
    """attrs: pads (x1_begin, x2_begin, ..., x1_end, x2_end: ONNX's order), mode (MODES),
    value (for constant)."""
    integers = ('pads',)

    name = "Pad"

    def output_shapes(self, inputs, attrs):
        shape = tuple(inputs[0])
        if attrs.get("mode", "constant") not in MODES:
            raise OpError(f"pad mode {attrs['mode']!r}; known: {MODES}")
        out = tuple(d + a + b for d, (a, b) in zip(shape, _pads(len(shape), attrs), strict=True))
        if attrs.get("mode", "constant") == "reflect" and any(
            max(a, b) >= d for d, (a, b) in zip(shape, _pads(len(shape), attrs), strict=True)
        ):
            raise OpError(f"reflect padding {attrs['pads']} needs each pad smaller than its axis "
                          f"{shape}")
        return [out]

    def flops(self, inputs, outputs, attrs):
        return 0

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        pads = _pads(x.ndim, attrs)
        # Negative pads crop first; the rest is np.pad's, whose modes are ONNX's.
        crop = tuple(slice(max(0, -a), d - max(0, -b)) for d, (a, b) in zip(x.shape, pads,
                                                                           strict=True))
        x = x[crop]
        widths = [(max(0, a), max(0, b)) for a, b in pads]
        mode = attrs.get("mode", "constant")
        if mode == "constant":
            y = np.pad(x, widths, mode="constant", constant_values=np.float32(attrs.get("value",
                                                                                         0.0)))
        else:
            y = np.pad(x, widths, mode=mode)
        return [np.ascontiguousarray(y, dtype=np.float32)]
