"""Convolution (2-d, grouped, strided, padded, dilated) as GEMM over an im2col buffer.

1x1 convolutions with stride 1 and no padding skip im2col: the input is already the column matrix.
"""

from __future__ import annotations

from math import prod

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    extent = dilation * (kernel - 1) + 1
    out = (size + 2 * pad - extent) // stride + 1
    if out < 1:
        raise OpError(f"kernel extent {extent} does not fit input size {size} with pad {pad}")
    return out


def im2col(
    image: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> np.ndarray:
    """Columns of one CHW image: shape (C*kh*kw, oh*ow), in the weight's (C, kh, kw) order."""
    c, h, w = image.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, pad, dilation, out_size
    if ph or pw:
        padded = np.zeros((c, h + 2 * ph, w + 2 * pw), dtype=image.dtype)
        padded[:, ph : ph + h, pw : pw + w] = image
    else:
        padded = image
    cols = np.empty((c, kh, kw, oh, ow), dtype=image.dtype)
    for i in range(kh):
        top = i * dh
        for j in range(kw):
            left = j * dw
            cols[:, i, j] = padded[:, top : top + sh * (oh - 1) + 1 : sh,
                                   left : left + sw * (ow - 1) + 1 : sw]
    return cols.reshape(c * kh * kw, oh * ow)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    group: int,
) -> np.ndarray:
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    oh = conv_output_size(h, kh, stride[0], pad[0], dilation[0])
    ow = conv_output_size(w, kw, stride[1], pad[1], dilation[1])
    pointwise = kh == kw == 1 and stride == (1, 1) and pad == (0, 0)
    weight_groups = weight.reshape(group, out_channels // group, -1)
    out = np.empty((n, out_channels, oh * ow), dtype=np.float32)
    for i in range(n):
        if pointwise:
            cols = x[i].reshape(c, h * w)
        else:
            cols = im2col(x[i], (kh, kw), stride, pad, dilation, (oh, ow))
        if group == 1:
            np.matmul(weight_groups[0], cols, out=out[i])
        else:
            np.matmul(weight_groups, cols.reshape(group, -1, oh * ow),
                      out=out[i].reshape(group, out_channels // group, oh * ow))
        if bias is not None:
            out[i] += bias[:, None]
    return out.reshape(n, out_channels, oh, ow)


@register
class Conv(Op):
    """attrs: out_channels, kernel (kh, kw), stride, pad, dilation (pairs), group, bias (bool)."""

    name = "Conv"

    def param_shapes(self, inputs, attrs):
        channels, group, out = inputs[0][1], attrs["group"], attrs["out_channels"]
        if channels % group or out % group:
            raise OpError(f"group {group} must divide input channels {channels} and outputs {out}")
        shapes = {"weight": (out, channels // group, *attrs["kernel"])}
        if attrs["bias"]:
            shapes["bias"] = (out,)
        return shapes

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) != 4:
            raise OpError(f"convolution needs a 4-d NCHW input, got shape {inputs[0]}")
        n, _, h, w = inputs[0]
        size = [
            conv_output_size(dim, k, s, p, d)
            for dim, k, s, p, d in zip(
                (h, w), attrs["kernel"], attrs["stride"], attrs["pad"], attrs["dilation"],
                strict=True,
            )
        ]
        return [(n, attrs["out_channels"], *size)]

    def flops(self, inputs, outputs, attrs):
        macs_per_output = inputs[0][1] // attrs["group"] * prod(attrs["kernel"])
        return prod(outputs[0]) * (2 * macs_per_output + (1 if attrs["bias"] else 0))

    def run(self, inputs, weights, attrs, inplace=False):
        return [
            conv2d(
                inputs[0], weights["weight"], weights.get("bias"), tuple(attrs["stride"]),
                tuple(attrs["pad"]), tuple(attrs["dilation"]), attrs["group"],
            )
        ]
