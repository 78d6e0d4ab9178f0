"""Local response normalisation, across channels (AlexNet's) or within each channel."""

from __future__ import annotations

from functools import partial
from math import prod

import numpy as np

from edgecaffe.blas import BlasHold, available_cores
from edgecaffe.ops.base import Op, OpError, register
from edgecaffe.ops.gemm import run_blocks


def _inverse_power(base: np.ndarray, beta: float) -> np.ndarray:
    """base ** -beta in place; beta 0.75 (every AlexNet-family net) avoids the slow pow."""
    if beta == 0.75:
        root = np.sqrt(base, out=base)
        root *= np.sqrt(root)
        return np.reciprocal(root, out=root)
    return np.power(base, -beta, out=base)


@register
class LRN(Op):
    """attrs: size, alpha, beta, k, region ('across' | 'within').

    across: y = x * (k + alpha/size * sum of x^2 over `size` neighbouring channels) ^ -beta
    within: y = x * (1 + alpha/size^2 * sum of x^2 over a size x size window) ^ -beta
    """
    integers = ('size',)

    name = "LRN"
    numbers = ('alpha', 'beta', 'k')

    def output_shapes(self, inputs, attrs):
        if attrs["size"] % 2 == 0:
            raise OpError(f"LRN local_size must be odd, got {attrs['size']}")
        return [tuple(inputs[0])]

    def workspace_bytes(self, inputs, outputs, attrs):
        """across: the squares (and a neighbour's halo) and their sum, about two inputs'
        worth (split in channel slices across threads, the same total); within: the padded
        squares and the sum, about three."""
        n, c = inputs[0][:2]
        plane = prod(inputs[0][2:]) * n
        if attrs.get("region", "across") == "across":
            return 4 * plane * (2 * c + (attrs.get("size", 5) - 1) * available_cores())
        return 3 * 4 * prod(inputs[0]) + 8 * (attrs.get("size", 5) - 1) * plane

    def flops(self, inputs, outputs, attrs):
        window = attrs["size"] if attrs["region"] == "across" else attrs["size"] ** 2
        return prod(outputs[0]) * (window + 4)

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        size, alpha, beta = attrs["size"], attrs["alpha"], attrs["beta"]
        if attrs["region"] == "across":
            out = x if inplace else np.empty_like(x)
            # Channel slices on the execution's threads: each reads its neighbours' squares.
            work = partial(_across, x, out, size, alpha, beta, attrs["k"])
            threads = min(BlasHold.split_threads(), available_cores())  # as declared
            c = x.shape[1]
            if threads <= 1 or inplace or c < 4 * threads:
                work(slice(0, c))
            else:
                step = -(-c // threads)
                run_blocks([partial(work, slice(lo, min(c, lo + step)))
                            for lo in range(0, c, step)], threads)
            return [out]
        half = (size - 1) // 2
        n, c, h, w = x.shape
        padded = np.zeros((n, c, h + size - 1, w + size - 1), dtype=x.dtype)
        padded[:, :, half : half + h, half : half + w] = np.square(x)
        total = np.zeros_like(x)
        for i in range(size):
            for j in range(size):
                total += padded[:, :, i : i + h, j : j + w]
        scale = np.float32(alpha / (size * size)) * total
        scale += np.float32(1.0)
        factor = _inverse_power(scale, beta)
        return [np.multiply(x, factor, out=x if inplace else factor)]


def _across(x: np.ndarray, out: np.ndarray, size: int, alpha: float, beta: float, k: float,
            channels: slice) -> None:
    """out[:, channels] = x * (k + alpha/size * sum of x^2 over `size` neighbouring
    channels)^-beta, missing neighbours counting 0 (Caffe's lrn_layer.cpp CrossChannel).
    The squares are those of the slice and `size // 2` channels either side; each
    neighbour's term is one add of shifted channel blocks (no padded copy)."""
    c, half = x.shape[1], (size - 1) // 2
    a0, a1 = channels.start, channels.stop
    lo, hi = max(0, a0 - half), min(c, a1 + half)
    squares = np.square(x[:, lo:hi])
    total = squares[:, a0 - lo : a1 - lo].copy()
    for offset in range(1, half + 1):
        top = min(a1, c - offset)  # channel j reads j + offset while that exists
        if top > a0:
            total[:, : top - a0] += squares[:, a0 + offset - lo : top + offset - lo]
        bottom = max(a0, offset)  # and j - offset from channel `offset` on
        if a1 > bottom:
            total[:, bottom - a0 :] += squares[:, bottom - offset - lo : a1 - offset - lo]
    total *= np.float32(alpha / size)
    total += np.float32(k)
    factor = _inverse_power(total, beta)
    np.multiply(x[:, a0:a1], factor, out=out[:, a0:a1])
