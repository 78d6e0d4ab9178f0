"""Per-channel layers on NCHWc blobs for the `onnxruntime` backend (`ops.fast`): BatchNorm,
Scale and ReLU on blobs that `model.network.BlobRunner` keeps in onnxruntime's blocked layout
between layers (`fast.blocked_io`), and a BatchNorm folded into the Scale after it.

They are numpy passes, not sessions: each blob is cut into blocks of about 256 kB, every pass
of a layer runs over a block while it is in cache, and the blocks are split across the
execution's threads, as onnxruntime's elementwise kernels split a tensor. The per-channel
parameters are tiled to the blocked order (`fast_nchwc.channel_views`). Each computes what the
numpy kernel computes (`ops.norm`, `ops.activation`) with the same float32 operations, so the
same floats, except the fold, which changes rounding only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import numpy as np

from edgecaffe.ops import fast_nchwc
from edgecaffe.ops.base import Attrs, get_op

#: Floats per block of the elementwise kernels below (256 kB: a block and its scratch stay
#: in a core's L2 between the passes over it).
ELEMENTWISE_BLOCK = 64 * 1024


#: Blobs with fewer floats than this run their blocks on the calling thread (measured: a
#: 64 x 104 x 104 BatchNorm + Scale + ReLU took longer split across 2 threads than on 1).
MIN_SPLIT_FLOATS = 2 * 1024 * 1024

_scratch = threading.local()


def _leaky_relu(block: np.ndarray, slope: np.float32) -> None:
    """Caffe's ReLU with `slope` on `block`, in place, as `ops.activation.ReLU` computes it
    (max(x, 0); max(x, slope * x) for 0 < slope < 1; its numpy kernel otherwise), the
    product in this thread's scratch (a block-sized temporary per call would be an mmap and
    page faults every time: glibc maps allocations over 128 kB)."""
    if slope == 0.0:
        np.maximum(block, 0, out=block)
    elif 0.0 < slope < 1.0:
        scratch = getattr(_scratch, "floats", None)
        if scratch is None or scratch.size < block.size:
            scratch = _scratch.floats = np.empty(max(block.size, ELEMENTWISE_BLOCK),
                                                 np.float32)
        scaled = np.multiply(block, slope, out=scratch[:block.size].reshape(block.shape))
        np.maximum(block, scaled, out=block)
    else:
        get_op("ReLU").run([block], {}, {"negative_slope": float(slope)}, inplace=True)


def _in_blocks(rows: int, row_floats: int, work: Callable[[slice], None]) -> None:
    """`work(rows slice)` over `rows` rows of `row_floats` floats, in blocks of about
    `ELEMENTWISE_BLOCK` floats taken by the execution's threads (`ops.gemm.run_blocks`; the
    count the backend's sessions get, `blas.BlasHold.current_threads`): each pass over a
    block runs while it is in cache, and the blob is split across cores as onnxruntime's
    elementwise kernels split it."""
    from edgecaffe.blas import BlasHold
    from edgecaffe.ops.gemm import run_blocks

    step = max(1, ELEMENTWISE_BLOCK // max(1, row_floats))
    blocks = [functools.partial(work, slice(lo, min(rows, lo + step)))
              for lo in range(0, rows, step)]
    threads = BlasHold.current_threads()
    if threads <= 1 or len(blocks) == 1 or rows * row_floats < MIN_SPLIT_FLOATS:
        for block in blocks:
            block()
    else:
        run_blocks(blocks, threads)


def batch_norm_blocked(inputs: list[np.ndarray], weights: dict[str, np.ndarray],
                       attrs: Attrs, inplace: bool) -> list[np.ndarray]:
    """Caffe's BatchNorm with global statistics on an NCHWc blob: x - mean, then / sqrt(var
    + eps), the two float32 operations of `ops.norm.BatchNorm` (so the same floats), block
    by block (`_in_blocks`)."""
    x = inputs[0]
    std = np.sqrt(weights["var"] + np.float32(attrs["eps"]))
    view, (mean, std) = fast_nchwc.channel_views(x, [weights["mean"], std],
                                                 fast_nchwc.block_size())
    out = view if inplace else np.empty_like(view)

    def work(rows: slice) -> None:
        np.subtract(view[:, :, rows], mean, out=out[:, :, rows])
        np.divide(out[:, :, rows], std, out=out[:, :, rows])

    _in_blocks(view.shape[2], view.shape[0] * view.shape[1] * view.shape[3], work)
    return [out.reshape(x.shape)]


def scale_blocked(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
                  inplace: bool) -> list[np.ndarray]:
    """Caffe's Scale over the channel axis with its own weights on an NCHWc blob: x * scale
    [+ bias], as `ops.norm.Scale` computes it, block by block (`_in_blocks`).

    With `attrs["pre_affine"]` = (mul, add), the per-channel affine of a BatchNorm folded
    into it (`batch_norm_affine`), it computes x * (mul * scale) + (add * scale [+ bias]):
    the two layers in one pass, equal to the two passes to float rounding (tested to 1e-5
    relative). With `attrs["activation"]`, Caffe's ReLU of that slope follows on each block
    while it is in cache (the numpy ReLU kernel, so its floats)."""
    x = inputs[0]
    scale = weights["scale"]
    bias = weights["bias"] if attrs["bias"] else None
    if attrs.get("pre_affine") is not None:
        mul, add = attrs["pre_affine"]
        bias = add * scale + (bias if bias is not None else np.float32(0))
        scale = mul * scale
    params = [scale, *([bias] if bias is not None else [])]
    view, tiled = fast_nchwc.channel_views(x, params, fast_nchwc.block_size())
    out = view if inplace else np.empty_like(view)
    activation = attrs.get("activation")

    def work(rows: slice) -> None:
        np.multiply(view[:, :, rows], tiled[0], out=out[:, :, rows])
        if len(tiled) > 1:
            np.add(out[:, :, rows], tiled[1], out=out[:, :, rows])
        if activation is not None:
            _leaky_relu(out[:, :, rows], np.float32(activation.get("negative_slope", 0.0)))

    _in_blocks(view.shape[2], view.shape[0] * view.shape[1] * view.shape[3], work)
    return [out.reshape(x.shape)]


def batch_norm_affine(weights: dict[str, np.ndarray], attrs: Attrs
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's BatchNorm with global statistics, (x - mean) / sqrt(var + eps), as the
    per-channel affine x * mul + add (float32 (C,) each) that a Scale after it applies
    (`scale_blocked`, planned by `model.network.BlobRunner`)."""
    std = np.sqrt(weights["var"] + np.float32(attrs["eps"]))
    mul = (np.float32(1) / std).astype(np.float32)
    return mul, (-weights["mean"] * mul).astype(np.float32)


def relu_blocked(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
                 inplace: bool) -> list[np.ndarray]:
    """Caffe's leaky ReLU (0 < slope < 1) in place as `ops.activation.ReLU` computes it,
    max(x, slope * x) (the same floats), block by block (`_in_blocks`) instead of two passes
    over the whole blob and a blob-sized temporary (Tiny YOLO's 16 x 416 x 416: 1.3 ms on
    numpy against onnxruntime's 0.4 ms). Other slopes, or not in place: the numpy kernel."""
    x, slope = inputs[0], np.float32(attrs.get("negative_slope", 0.0))
    if not (inplace and 0.0 < slope < 1.0 and x.flags.c_contiguous):
        return get_op("ReLU").run(inputs, weights, attrs, inplace)
    size = x.size
    width = next(w for w in range(min(size, 4096), 0, -1) if size % w == 0)
    rows = x.reshape(-1, width)

    def work(part: slice) -> None:
        _leaky_relu(rows[part], slope)

    _in_blocks(rows.shape[0], width, work)
    return [x]
