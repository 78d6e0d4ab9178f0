"""Max and average pooling with Caffe's output-size rule and window clipping.

Rules from Caffe's pooling_layer.cpp (BVLC master; checked against pycaffe 1.0.0):
* size = ceil((in + 2 pad - kernel) / stride) + 1 (floor with round_mode FLOOR), computed in float
  so a kernel a little larger than the input still gives one window, clipped to the input;
* when *any* pad (height or width) is non-zero, a last window that would start in the bottom or
  right padding is dropped, on both axes alike;
* a max window that covers no input value gives -FLT_MAX (Caffe's initial value), not -inf;
* average pooling divides by the window clipped to the padded input (in + pad), not by the
  kernel area, and by nothing smaller than that even where the window leaves the input.

ONNX's MaxPool/AveragePool (attr `convention: onnx`, set by the ONNX importer) differ: pads may
be asymmetric (`pad_end`), the size is integer arithmetic, the ceil-mode window that starts in
the end padding is dropped per axis (onnxruntime's pool_attributes.h), and `count_include_pad`
False divides by the window's part inside the input.
"""

from __future__ import annotations

from math import ceil, floor, prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register

#: Caffe's value for a max-pooling window with no input in it.
FLT_MAX = float(np.finfo(np.float32).max)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool,
                     any_pad: bool | None = None) -> int:
    """Output length along one axis, as Caffe's PoolingLayer::Reshape computes it.

    `any_pad` says whether any axis of the layer is padded (default: this one's pad), which is
    what enables Caffe's rule of dropping a last window that starts in the padding.
    Raises OpError when Caffe would produce an empty or negative size.
    """
    if pad >= kernel:
        raise OpError(f"pooling pad {pad} must be smaller than the kernel {kernel} "
                      "(Caffe's CHECK_LT(pad, kernel))")
    ratio = np.float32(size + 2 * pad - kernel) / np.float32(stride)  # Caffe divides in float
    out = int(ceil(ratio) if ceil_mode else floor(ratio)) + 1
    if (pad if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1
    if out < 1:
        raise OpError(f"pooling kernel {kernel} (stride {stride}, pad {pad}) leaves no window "
                      f"over an input of size {size}")
    return out


def onnx_pool_output_size(size: int, kernel: int, stride: int, pad: int, pad_end: int,
                          ceil_mode: bool) -> int:
    """ONNX's rule (onnxruntime's pool_attributes.h): floor or ceil of (size + pads - kernel) /
    stride, plus one; in ceil mode a last window starting in the end padding is dropped."""
    span = size + pad + pad_end - kernel
    if span < 0:
        raise OpError(f"pooling kernel {kernel} is larger than the padded input "
                      f"{size + pad + pad_end}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _geometry(shape, attrs):
    h, w = shape[2], shape[3]
    if attrs["global"]:
        return (h, w), (1, 1), (0, 0), (1, 1)
    kernel, stride, pad = attrs["kernel"], attrs["stride"], attrs["pad"]
    if attrs.get("convention") == "onnx":
        pad_end = attrs.get("pad_end") or pad
        out = tuple(
            onnx_pool_output_size(size, k, s, p, e, attrs["ceil"])
            for size, k, s, p, e in zip((h, w), kernel, stride, pad, pad_end, strict=True)
        )
        return tuple(kernel), tuple(stride), tuple(pad), out
    any_pad = bool(pad[0] or pad[1])
    out = tuple(
        pool_output_size(size, k, s, p, attrs["ceil"], any_pad)
        for size, k, s, p in zip((h, w), kernel, stride, pad, strict=True)
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
    """attrs: method ('max' | 'avg'), kernel, stride, pad (pairs), global (bool), ceil (bool);
    ONNX's (with convention 'onnx'): pad_end (pair), count_include_pad (bool)."""
    integers = ('kernel', 'pad', 'pad_end', 'stride')

    name = "Pool"

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) != 4:
            raise OpError(f"pooling needs a 4-d NCHW input, got shape {inputs[0]}")
        _, _, _, out = _geometry(inputs[0], attrs)
        return [(*inputs[0][:2], *out)]

    def flops(self, inputs, outputs, attrs):
        kernel, _, _, _ = _geometry(inputs[0], attrs)
        return prod(outputs[0]) * prod(kernel)

    def workspace_bytes(self, inputs, outputs, attrs):
        """What `run` allocates besides the output: the padded input (when padded) and the
        rows reduced over the window's height (tests/test_memory_truth.py)."""
        if attrs["global"]:
            return 0
        n, c, h, w = inputs[0]
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _geometry(inputs[0], attrs)
        bottom = max(0, (oh - 1) * sh + kh - h - ph)
        right = max(0, (ow - 1) * sw + kw - w - pw)
        width = w + pw + right
        padded = n * c * (h + ph + bottom) * width if ph or pw or bottom or right else 0
        return 4 * (padded + n * c * oh * width)

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _geometry(x.shape, attrs)
        is_max = attrs["method"] == "max"
        if attrs["global"]:
            reduce = np.max if is_max else np.mean
            return [reduce(x, axis=(2, 3), keepdims=True)]
        # Pad to cover every window; max ignores the padding (-FLT_MAX, as Caffe starts from),
        # average counts it as zeros.
        bottom = max(0, (oh - 1) * sh + kh - h - ph)
        right = max(0, (ow - 1) * sw + kw - w - pw)
        if ph or pw or bottom or right:
            padded = np.full((n, c, h + ph + bottom, w + pw + right),
                             -FLT_MAX if is_max else 0.0, dtype=x.dtype)
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
            with np.errstate(invalid="ignore", divide="ignore"):  # empty window: 0/0 as Caffe
                out /= divisor.astype(x.dtype)
        return [out]
