"""Transposed convolution (Caffe's Deconvolution, ONNX's ConvTranspose) as GEMM + col2im.

Each input pixel scatters a kernel-sized patch: a GEMM per group gives the patches (C_out/group
* kh * kw rows, H * W columns; built a band of kernel rows at a time to bound the buffer), and
col2im adds them into the output with one strided slice per kernel tap (kh * kw slices, not a
loop over pixels). The padding is then
cropped: ConvTranspose's pads remove output, they do not add input.
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops import gemm
from edgecaffe.ops.base import Op, OpError, register


def conv_transpose_output_size(size: int, kernel: int, stride: int, pad_begin: int,
                               pad_end: int, dilation: int, output_padding: int) -> int:
    """stride * (size - 1) + output_padding + dilation * (kernel - 1) + 1 - pads (ONNX spec;
    Caffe's deconv_layer.cpp is the same with equal pads and no output padding)."""
    out = stride * (size - 1) + output_padding + dilation * (kernel - 1) + 1 - pad_begin - pad_end
    if out < 1:
        raise OpError(f"transposed convolution gives output size {out} for input size {size}")
    return out


def _geometry(attrs) -> tuple[tuple[int, int], ...]:
    kernel, stride, dilation = attrs["kernel"], attrs["stride"], attrs["dilation"]
    pads = attrs["pads"]
    output_padding = attrs.get("output_padding") or (0, 0)
    if len(kernel) != 2 or len(pads) != 4 or len(output_padding) != 2:
        raise OpError(f"transposed convolution is 2-d: kernel {kernel}, pads {pads} "
                      f"(h_begin, w_begin, h_end, w_end), output_padding {output_padding}")
    if min(*stride, *dilation, *kernel) < 1 or min(pads) < 0 or min(output_padding) < 0:
        raise OpError(f"bad transposed convolution geometry: kernel {kernel}, stride {stride}, "
                      f"dilation {dilation}, pads {pads}, output_padding {output_padding}")
    return (tuple(kernel), tuple(stride), tuple(dilation), (pads[0], pads[1]),
            (pads[2], pads[3]), tuple(output_padding))


#: Most floats of the column buffer of one band of kernel rows (4 MB), as in conv.py: a
#: whole-kernel buffer is C_out * kh * kw * H * W (88 MB for FCN-32s' 64 x 64 upscore).
_BAND_FLOATS = 1024 * 1024


def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     attrs: dict) -> np.ndarray:
    """NCHW input, weight (C_in, C_out/group, kh, kw) -> NC'H'W' output (float32).

    The columns are built a band of kernel rows at a time (one GEMM per band and group), so
    the buffer stays near 4 MB whatever the kernel size.
    """
    n, c_in, h, w = x.shape
    group = attrs["group"]
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (pb, pr), (oph, opw) = _geometry(attrs)
    c_out_g = weight.shape[1]
    c_out = c_out_g * group
    # The uncropped output: every tap of every input pixel lands inside it.
    full_h = sh * (h - 1) + dh * (kh - 1) + 1 + oph
    full_w = sw * (w - 1) + dw * (kw - 1) + 1 + opw
    oh, ow = full_h - pt - pb, full_w - pl - pr
    band = max(1, _BAND_FLOATS // (c_out * kw * h * w))
    # (group, C_out/g, kh, kw, C_in/g): a band of kernel rows is then one slice.
    w_t = weight.reshape(group, c_in // group, c_out_g, kh, kw).transpose(0, 2, 3, 4, 1)
    out = np.empty((n, c_out, oh, ow), dtype=np.float32)
    full = np.empty((c_out, full_h, full_w), dtype=np.float32)
    for i in range(n):
        x_groups = x[i].reshape(group, c_in // group, h * w)
        full.fill(0.0)
        for a0 in range(0, kh, band):
            a1 = min(kh, a0 + band)
            taps = w_t[:, :, a0:a1].reshape(group, c_out_g * (a1 - a0) * kw, c_in // group)
            cols = np.empty((group, taps.shape[1], h * w), dtype=np.float32)
            gemm.matmul(taps, x_groups, cols)  # split across the execution's threads
            cols = cols.reshape(group, c_out_g, a1 - a0, kw, h, w)
            cols = cols.reshape(c_out, a1 - a0, kw, h, w)
            for a in range(a0, a1):
                top = a * dh
                for b in range(kw):
                    left = b * dw
                    full[:, top : top + sh * (h - 1) + 1 : sh,
                         left : left + sw * (w - 1) + 1 : sw] += cols[:, a - a0, b]
        out[i] = full[:, pt : pt + oh, pl : pl + ow]
        if bias is not None:
            out[i] += bias[:, None, None]
    return out


@register
class ConvTranspose(Op):
    """attrs: out_channels, kernel (kh, kw), stride, dilation, output_padding (pairs),
    pads (h_begin, w_begin, h_end, w_end, ONNX's order), group, bias (bool).
    weights: weight (C_in, C_out/group, kh, kw), bias (C_out,) when `bias`."""
    integers = ('dilation', 'group', 'kernel', 'out_channels', 'output_padding', 'pads', 'stride')

    name = "ConvTranspose"

    def param_shapes(self, inputs, attrs):
        channels, group, out = inputs[0][1], attrs["group"], attrs["out_channels"]
        if group < 1 or channels % group or out % group:
            raise OpError(f"group {group} must divide input channels {channels} and outputs {out}")
        shapes = {"weight": (channels, out // group, *attrs["kernel"])}
        if attrs["bias"]:
            shapes["bias"] = (out,)
        return shapes

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) != 4:
            raise OpError(f"transposed convolution needs a 4-d NCHW input, got {inputs[0]}")
        n, _, h, w = inputs[0]
        kernel, stride, dilation, begin, end, output_padding = _geometry(attrs)
        size = [conv_transpose_output_size(*args) for args in zip(
            (h, w), kernel, stride, begin, end, dilation, output_padding, strict=True)]
        return [(n, attrs["out_channels"], *size)]

    def flops(self, inputs, outputs, attrs):
        # Every input value meets C_out/group * kh * kw weights.
        per_input = attrs["out_channels"] // attrs["group"] * prod(attrs["kernel"])
        return prod(inputs[0]) * 2 * per_input + (prod(outputs[0]) if attrs["bias"] else 0)

    def run(self, inputs, weights, attrs, inplace=False):
        return [conv_transpose2d(inputs[0], weights["weight"], weights.get("bias"), attrs)]
