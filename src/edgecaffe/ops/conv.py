"""Convolution (2-d, grouped, strided, padded, dilated) as GEMM over im2col buffers.

The column buffer is built a band of output rows at a time (see `conv2d`). 1x1 convolutions with
stride 1 and no padding skip im2col: the input is already the column matrix. Grouped and
depthwise convolutions are one batched `np.matmul` over the groups (one call, not a Python
loop).

Measured and not kept (benchmarks/conv_layers.py and the notes in docs/architecture.md): a
depthwise kernel as k*k shifted multiply-adds over the channel planes ran 1.0-3x slower than the
batched GEMM (numpy has no fused multiply-add: each tap is two passes over the output); a
space-to-depth layout for 11x11/4 (a 3x3 stride-1 convolution over 48 channels) copied as much
as im2col and adds 19% to the GEMM.

3x3 stride-1 layers on maps of at least 24x24 pixels with 16 or more input channels run as
Winograd F(4x4, 3x3) instead (`ops/winograd.py`: 4x fewer multiplies; its transforms are
thin BLAS products). An earlier F(2x2, 3x3) whose transforms were elementwise numpy passes
(commit 192fcd1) saved about what its transforms cost and was removed.
"""

from __future__ import annotations

import itertools
import threading
from math import prod

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgecaffe.blas import available_cores
from edgecaffe.ops import gemm, winograd
from edgecaffe.ops.base import Op, OpError, output_chunk, register


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's conv_layer.cpp compute_output_shape: (size + 2 pad - extent) / stride + 1 in C
    integer division, which truncates toward zero: a kernel that overhangs the padded input by
    less than the stride still gives one output, over implicit zeros (as Caffe's im2col)."""
    extent = dilation * (kernel - 1) + 1
    span = size + 2 * pad - extent
    out = (span // stride if span >= 0 else -(-span // stride)) + 1
    if out < 1:
        raise OpError(f"kernel extent {extent} does not fit input size {size} with pad {pad}")
    return out


#: A band's column buffer is sized so that its GEMM has at least `_MIN_BAND_PIXELS` columns or
#: `_BAND_FLOATS` floats (16 MB), whichever is more, but never more than `_MAX_BAND_FLOATS`
#: (32 MB). Measured on FaceNet at 1340 px (benchmarks/conv_layers.py, 2 BLAS threads): bands of
#: 1024 pixels (the old 4 MB) ran conv1 and conv3 about 2x slower than 4096-pixel bands: every
#: GEMM call synchronises BLAS's threads, and small ones do not reach sgemm's peak.
_BAND_FLOATS = 4 * 1024 * 1024
_MIN_BAND_PIXELS = 4096
_MAX_BAND_FLOATS = 8 * 1024 * 1024
#: The cap in force: the smallest of the one set by hand (`set_max_band_bytes`) and those open
#: engines hold (`hold_band_cap`); lower under a small memory budget.
_max_band_floats = _MAX_BAND_FLOATS
_manual_floats = _MAX_BAND_FLOATS
_held_floats: dict[int, int] = {}
_caps_lock = threading.Lock()
_tokens = itertools.count(1)


def _floats(max_bytes: int | None) -> int:
    return _MAX_BAND_FLOATS if max_bytes is None else \
        max(1, min(_MAX_BAND_FLOATS, int(max_bytes) // 4))


def _refresh() -> None:
    global _max_band_floats
    _max_band_floats = min([_manual_floats, *_held_floats.values()])


def set_max_band_bytes(max_bytes: int | None) -> int:
    """Cap every convolution's column buffer at `max_bytes` (None: the default, 32 MB) for
    the whole process; returns the previous cap set this way, in bytes. Engines under a
    small memory limit hold caps of their own (`hold_band_cap`); the smallest applies.
    Outputs do not depend on the band size (each output pixel's dot products are the same
    whichever band holds its column: tests/test_blocks.py)."""
    global _manual_floats
    with _caps_lock:
        previous = 4 * _manual_floats
        _manual_floats = _floats(max_bytes)
        _refresh()
    return previous


def hold_band_cap(max_bytes: int) -> int:
    """An open engine's cap (its kernels' workspace follows its budget): in force, with any
    other held, as the smallest, until `release_band_cap(token)`. Returns the token.

    What is held is the smaller of `max_bytes` and the cap in force now: the engine's layer
    infos, built next, declare workspaces under that cap, so its kernels must never run with
    a larger one, even once the engine that lowered it has closed."""
    with _caps_lock:
        token = next(_tokens)
        _held_floats[token] = min(_floats(max_bytes), _max_band_floats)
        _refresh()
    return token


def release_band_cap(token: int) -> None:
    """Drop a cap `hold_band_cap` gave (a token already released is ignored)."""
    with _caps_lock:
        _held_floats.pop(token, None)
        _refresh()


def max_band_bytes_in_force() -> int:
    """The band cap the kernels use now, in bytes."""
    return 4 * _max_band_floats


def band_rows(out_height: int, out_width: int, floats_per_row: int) -> int:
    """Output rows per band: enough for an efficient GEMM, bounded in memory (by the cap in
    force, `set_max_band_bytes`), and split into equal bands (no small last band)."""
    cap = min(_max_band_floats, _MAX_BAND_FLOATS)
    rows = max(min(_BAND_FLOATS, cap) // floats_per_row, -(-_MIN_BAND_PIXELS // out_width))
    rows = max(1, min(rows, cap // floats_per_row, out_height))
    bands = -(-out_height // rows)
    return -(-out_height // bands)


def pad_image(image: np.ndarray, pad: tuple[int, int],
              extra: tuple[int, int] = (0, 0)) -> np.ndarray:
    """CHW image with `pad` zeros around its height and width, plus `extra` zeros below and to
    the right (the image itself if no padding)."""
    c, h, w = image.shape
    ph, pw = pad
    if not (ph or pw or extra[0] or extra[1]):
        return image
    padded = np.zeros((c, h + 2 * ph + extra[0], w + 2 * pw + extra[1]), dtype=image.dtype)
    padded[:, ph : ph + h, pw : pw + w] = image
    return padded


def _slab_rows(band: int, stride: int, dilation: int, kernel: int) -> int:
    """Padded input rows that `band` output rows read."""
    return (band - 1) * stride + dilation * (kernel - 1) + 1


def _padded_slab(image: np.ndarray, slab: np.ndarray, rows: range, stride: int,
                 dilation: int, kernel: int, pad: tuple[int, int]) -> np.ndarray:
    """The padded rows output rows `rows` read, written into `slab` (zeros where the padding
    is): the same values as those rows of `pad_image`'s whole padded image."""
    _, h, w = image.shape
    top = rows.start * stride  # in padded coordinates
    height = _slab_rows(len(rows), stride, dilation, kernel)
    part = slab[:, :height]
    part.fill(0.0)
    first, last = max(top, pad[0]), min(top + height, pad[0] + h)  # rows of the image
    if first < last:
        part[:, first - top : last - top, pad[1] : pad[1] + w] = image[:, first - pad[0]:
                                                                      last - pad[0]]
    return part


def im2col_rows(
    padded: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_width: int,
    rows: range,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Columns for output rows `rows` of a padded CHW image: (C*kh*kw, len(rows)*out_width).

    One copy of a strided view (C, kh, kw, rows, ow) of the image (Caffe's im2col order), so a
    large kernel (11x11) costs one numpy call per band, not one per tap."""
    c = padded.shape[0]
    (kh, kw), (sh, sw), (dh, dw), ow = kernel, stride, dilation, out_width
    n_rows = len(rows)
    if out is None:
        out = np.empty(c * kh * kw * n_rows * ow, dtype=padded.dtype)
    cols = out[: c * kh * kw * n_rows * ow].reshape(c, kh, kw, n_rows, ow)
    sc, sy, sx = padded.strides
    window = as_strided(padded[:, rows.start * sh :], shape=(c, kh, kw, n_rows, ow),
                        strides=(sc, sy * dh, sx * dw, sy * sh, sx * sw), writeable=False)
    np.copyto(cols, window)
    return cols.reshape(c * kh * kw, n_rows * ow)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    group: int,
    chunk: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Any convolution as GEMMs over im2col columns, built a band of output rows at a time.

    `chunk`: output channels per GEMM call (group 1; None: all at once; see
    `ops.base.output_chunk`). `out`: where to write the (N, C_out, OH*OW) result (a block's
    slice of the whole layer's output), else a fresh array.

    Banding keeps the column buffer at 16-32 MB (less under a small memory limit:
    `set_max_band_bytes`) however large the image (a whole-image buffer is 9x the input for
    3x3 kernels: 115 MB for a 64-channel 224x224 layer), and that one buffer is reused, so it
    stays cache-warm and is not page-faulted in afresh for every layer. Padding is applied to
    the input rows one band reads (a reused slab), not to a copy of the whole image.
    """
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    oh = conv_output_size(h, kh, stride[0], pad[0], dilation[0])
    ow = conv_output_size(w, kw, stride[1], pad[1], dilation[1])
    if out is None:
        out = np.empty((n, out_channels, oh * ow), dtype=np.float32)
    if winograd.applies(c, (kh, kw), stride, dilation, group, (oh, ow), out_channels,
                        chunk is not None):
        winograd.conv3x3(x, weight, bias, pad, out, chunk)
        return out.reshape(n, out_channels, oh, ow)
    pointwise = kh == kw == 1 and stride == (1, 1) and pad == (0, 0)
    weight_groups = weight.reshape(group, out_channels // group, -1)
    per_row = c * kh * kw * ow
    # Pointwise layers have no buffer to bound, so they keep one whole-image GEMM.
    band = oh if pointwise else band_rows(oh, ow, per_row)
    buffer = None if pointwise else np.empty(band * per_row, dtype=np.float32)
    # Zeros for a last window that overhangs the padded input (see conv_output_size).
    extra = (max(0, (oh - 1) * stride[0] + dilation[0] * (kh - 1) + 1 - h - 2 * pad[0]),
             max(0, (ow - 1) * stride[1] + dilation[1] * (kw - 1) + 1 - w - 2 * pad[1]))
    padding = pad != (0, 0) or extra != (0, 0)
    # A padded slab of the input rows one band reads (not a padded copy of the whole image:
    # 12.5 MiB for VGG's conv1_2), reused band after band.
    slab = None if pointwise or not padding else np.empty(
        (c, _slab_rows(band, stride[0], dilation[0], kh), w + 2 * pad[1] + extra[1]),
        dtype=np.float32)
    for i in range(n):
        for r0 in range(0, oh, band):
            rows = range(r0, min(oh, r0 + band))
            if pointwise:
                cols = x[i].reshape(c, h * w)
            elif slab is None:
                cols = im2col_rows(x[i], (kh, kw), stride, dilation, ow, rows, buffer)
            else:
                part = _padded_slab(x[i], slab, rows, stride[0], dilation[0], kh, pad)
                cols = im2col_rows(part, (kh, kw), stride, dilation, ow,
                                   range(0, len(rows)), buffer)
            target = out[i, :, rows.start * ow : rows.stop * ow]
            if group == 1:
                if chunk:  # fixed chunks: bit-exact against a blocked copy of the layer
                    gemm.matmul_chunks(weight_groups[0], cols, target, chunk, rows=True)
                else:
                    gemm.matmul(weight_groups[0], cols, target)
            else:
                gemm.matmul(weight_groups, cols.reshape(group, -1, cols.shape[1]),
                            target.reshape(group, out_channels // group, -1))
            if bias is not None:  # while the band's output is still in cache
                target += bias[:, None]
    return out.reshape(n, out_channels, oh, ow)


@register
class Conv(Op):
    """attrs: out_channels, kernel (kh, kw), stride, pad, dilation (pairs), group, bias (bool)."""
    integers = ('dilation', 'group', 'kernel', 'out_channels', 'pad', 'stride')

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

    def workspace_bytes(self, inputs, outputs, attrs):
        """What `conv2d` allocates besides the output: the padded slab of input rows a band
        reads (when padded), the band's column buffer and, with several bands, the band's
        product; none for a pointwise layer. Checked against tracemalloc
        (tests/test_memory_truth.py)."""
        return self.workspace_rows_bytes(inputs[0], outputs[0], attrs, attrs["out_channels"])

    def workspace_rows_bytes(self, x_shape, out_shape, attrs, rows: int) -> int:
        """`workspace_bytes` for computing `rows` of the layer's output channels (a block of
        it, `ops/block.py`: its products are that many rows, its path the whole layer's)."""
        _, c, h, w = x_shape
        (kh, kw), stride, pad = attrs["kernel"], tuple(attrs["stride"]), tuple(attrs["pad"])
        dilation = tuple(attrs["dilation"])
        if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
            return 0
        oh, ow = out_shape[2:]
        chunk = output_chunk(4 * attrs["out_channels"] * c * kh * kw)
        if winograd.applies(c, (kh, kw), stride, dilation, attrs["group"], (oh, ow),
                            rows, chunk is not None):  # as conv2d decides, by its rows
            threads = available_cores() if chunk else 1
            return 4 * winograd.workspace_floats(c, rows, (oh, ow), chunk, threads)
        per_row = c * kh * kw * ow
        band = band_rows(oh, ow, per_row)
        extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - size - 2 * p) for o, s, d, k, size, p in
                 zip((oh, ow), stride, dilation, (kh, kw), (h, w), pad, strict=True)]
        padded = c * _slab_rows(band, stride[0], dilation[0], kh) * (w + 2 * pad[1] + extra[1]) \
            if any(pad) or any(extra) else 0
        # Several bands: each band's output is a strided slice, which BLAS's product fills
        # through a temporary of the band's output size.
        product = rows * band * ow if band < oh else 0
        return 4 * (band * per_row + padded + product)

    def flops(self, inputs, outputs, attrs):
        macs_per_output = inputs[0][1] // attrs["group"] * prod(attrs["kernel"])
        return prod(outputs[0]) * (2 * macs_per_output + (1 if attrs["bias"] else 0))

    def run(self, inputs, weights, attrs, inplace=False):
        weight = weights["weight"]
        chunk = output_chunk(weight.nbytes) if attrs["group"] == 1 else None
        return [
            conv2d(
                inputs[0], weight, weights.get("bias"), tuple(attrs["stride"]),
                tuple(attrs["pad"]), tuple(attrs["dilation"]), attrs["group"], chunk,
            )
        ]
