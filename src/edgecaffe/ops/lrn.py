"""Local response normalisation, across channels (AlexNet's) or within each channel."""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


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
        """The squares, their padded copy and the running sum: about three inputs' worth."""
        return 3 * 4 * prod(inputs[0]) + 4 * (attrs.get("size", 5) - 1) * prod(inputs[0][2:]) \
            * inputs[0][0] * (1 if attrs.get("region", "across") == "across" else 2)

    def flops(self, inputs, outputs, attrs):
        window = attrs["size"] if attrs["region"] == "across" else attrs["size"] ** 2
        return prod(outputs[0]) * (window + 4)

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        size, alpha, beta = attrs["size"], attrs["alpha"], attrs["beta"]
        half = (size - 1) // 2
        squares = np.square(x)
        if attrs["region"] == "across":
            n, c = x.shape[:2]
            padded = np.zeros((n, c + size - 1, *x.shape[2:]), dtype=x.dtype)
            padded[:, half : half + c] = squares
            total = padded[:, 0:c].copy()
            for offset in range(1, size):
                total += padded[:, offset : offset + c]
            scale = np.float32(alpha / size) * total
            scale += np.float32(attrs["k"])
        else:
            n, c, h, w = x.shape
            padded = np.zeros((n, c, h + size - 1, w + size - 1), dtype=x.dtype)
            padded[:, :, half : half + h, half : half + w] = squares
            total = np.zeros_like(x)
            for i in range(size):
                for j in range(size):
                    total += padded[:, :, i : i + h, j : j + w]
            scale = np.float32(alpha / (size * size)) * total
            scale += np.float32(1.0)
        factor = _inverse_power(scale, beta)
        return [np.multiply(x, factor, out=x if inplace else factor)]
