"""Max and average pooling with Caffe's output-size rule (ceil by default) and its clipping.

Caffe rounds the output size up, then drops the last window if it would start inside the right
or bottom padding; average pooling divides by the window clipped to the padded input, not by
the kernel area. Both rules are reproduced exactly.
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil: bool,
                     pad_end: int | None = None) -> int:
    """Caffe's rule (pooling_layer.cpp), which ONNX's ceil_mode shares; `pad_end` (default
    `pad`) allows ONNX's asymmetric padding."""
    pad_end = pad if pad_end is None else pad_end
    span = size + pad + pad_end - kernel
    if span < 0:
        raise OpError(f"pooling kernel {kernel} is larger than the padded input "
                      f"{size + pad + pad_end}")
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _geometry(shape, attrs):
    h, w = shape[2], shape[3]
    if attrs["global"]:
        return (h, w), (1, 1), (0, 0), (1, 1)
    kernel, stride, pad = attrs["kernel"], attrs["stride"], attrs["pad"]
    pad_end = attrs.get("pad_end") or pad
    out = tuple(
        pool_output_size(size, k, s, p, attrs["ceil"], e)
        for size, k, s, p, e in zip((h, w), kernel, stride, pad, pad_end, strict=True)
    )
    return tuple(kernel), tuple(stride), tuple(pad), out


def _window_sizes(size: int, out: int, kernel: int, stride: int, pad: int,
                  include_pad: bool = True, pad_end: int | None = None) -> np.ndarray:
    """Average-pooling divisor along one axis: Caffe's window clipped to size + pad (ONNX's
    count_include_pad=1: size + the end pad), or with `include_pad` False (ONNX's
    count_include_pad=0) only the window's part inside the input."""
    start = np.arange(out) * stride - pad
    if not include_pad:
        return np.minimum(start + kernel, size) - np.maximum(start, 0)
    return np.minimum(start + kernel, size + (pad if pad_end is None else pad_end)) - start


@register
class Pool(Op):
    """attrs: method ('max' | 'avg'), kernel, stride, pad (pairs), global (bool), ceil (bool),
    count_include_pad (bool, default True: Caffe's divisor counts the padding), pad_end (pair,
    default `pad`: ONNX's asymmetric end padding)."""

    name = "Pool"

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) != 4:
            raise OpError(f"pooling needs a 4-d NCHW input, got shape {inputs[0]}")
        _, _, _, out = _geometry(inputs[0], attrs)
        return [(*inputs[0][:2], *out)]

    def flops(self, inputs, outputs, attrs):
        kernel, _, _, _ = _geometry(inputs[0], attrs)
        return prod(outputs[0]) * prod(kernel)

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _geometry(x.shape, attrs)
        is_max = attrs["method"] == "max"
        if attrs["global"]:
            reduce = np.max if is_max else np.mean
            return [reduce(x, axis=(2, 3), keepdims=True)]
        # Pad to cover every window; max ignores the padding, average counts it as zeros.
        bottom = max(0, (oh - 1) * sh + kh - h - ph)
        right = max(0, (ow - 1) * sw + kw - w - pw)
        if ph or pw or bottom or right:
            padded = np.full((n, c, h + ph + bottom, w + pw + right),
                             -np.inf if is_max else 0.0, dtype=x.dtype)
            padded[:, :, ph : ph + h, pw : pw + w] = x
        else:
            padded = x
        # Separable: reduce the kh rows of each window, then the kw columns (k + k passes
        # instead of k * k; exact for max, a different summation order for average).
        reduce = np.maximum if is_max else np.add
        rows = padded[:, :, 0 : sh * (oh - 1) + 1 : sh, :].copy()
        for i in range(1, kh):
            reduce(rows, padded[:, :, i : i + sh * (oh - 1) + 1 : sh, :], out=rows)
        out = rows[:, :, :, 0 : sw * (ow - 1) + 1 : sw].copy()
        for j in range(1, kw):
            reduce(out, rows[:, :, :, j : j + sw * (ow - 1) + 1 : sw], out=out)
        if not is_max:
            include = attrs.get("count_include_pad", True)
            eh, ew = attrs.get("pad_end") or (ph, pw)
            divisor = np.outer(_window_sizes(h, oh, kh, sh, ph, include, eh),
                               _window_sizes(w, ow, kw, sw, pw, include, ew))
            out /= divisor.astype(x.dtype)
        return [out]
