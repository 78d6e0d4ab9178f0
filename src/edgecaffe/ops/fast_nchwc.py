"""Convolutions in onnxruntime's blocked channel layout (NCHWc), with the weights as inputs.

onnxruntime runs a whole model's convolutions fastest in its NCHWc layout: channels in blocks of
`block_size()` (8 with AVX2, 16 with AVX-512), filters reordered to match, bias and activation
applied in the convolution's own output loop (domain `com.microsoft.nchwc`: ReorderInput, Conv,
ReorderOutput; onnxruntime/contrib_ops/cpu/nchwc_ops.cc). Its graph optimizer makes that
rewrite only for filters stored in the model (initializers), so a session whose weights are
inputs gets the plain im2col Conv instead. Here we build the NCHWc graph ourselves and reorder
the filter with numpy (`reorder_filter`), keeping the weights session inputs: the session holds
no weights, and the memory ledger stays ours.

Which convolutions qualify follows onnxruntime's own rewrite (core/optimizer/nchwc_transformer.cc):
2-D; group 1 with fewer input channels than a block (the input stays NCHW, filter OIHWBo) or a
multiple of the block; depthwise (one input channel per group) or grouped with input and output
channels per group multiples of the block, output channels then a multiple of the block too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edgecaffe.ops.onnx_wire import Node, graph_model

DOMAIN = "com.microsoft.nchwc"


@functools.cache
def block_size() -> int | None:
    """onnxruntime's NCHWc channel block on this CPU, or None when its build has no NCHWc
    kernels. Found by running ReorderInput on 4 channels: it pads them up to one block."""
    from edgecaffe.ops.fast import new_session

    model = graph_model([Node("ReorderInput", ["X"], ["Y"], domain=DOMAIN)],
                        {"X": (1, 4, 1, 1)}, {"Y": (1, 4, 1, 1)}, {"": 13, DOMAIN: 1})
    try:
        session = new_session(model, 1)
        (y,) = session.run(None, {"X": np.zeros((1, 4, 1, 1), np.float32)})
    except Exception:  # no NCHWc schema or kernel in this build
        return None
    block = int(y.shape[1])
    return block if block >= 4 and block & (block - 1) == 0 else None


@dataclass(frozen=True)
class Plan:
    """How one convolution runs in NCHWc: `block`, whether the input is reordered (False: NCHW
    input, fewer channels than a block), the filter layout ("BiBo" or "Bo") and the padded
    output channel count."""

    block: int
    reorder_input: bool
    layout: str
    out_padded: int


def plan(w_shape: tuple[int, ...], group: int) -> Plan | None:
    """The NCHWc plan for a 2-D convolution of filter `w_shape` (O, C / group, kh, kw) (a
    prepared filter's padded O gives the same plan), or None when onnxruntime's NCHWc kernels
    do not take it."""
    block = block_size()
    if block is None or len(w_shape) != 4:
        return None
    out, per_group = w_shape[0], w_shape[1]
    padded = -(-out // block) * block
    if group == 1:
        if per_group < block:
            return Plan(block, False, "Bo", padded)
        return Plan(block, True, "BiBo", padded) if per_group % block == 0 else None
    if out % block:
        return None
    if per_group == 1 and out == group:
        return Plan(block, True, "Bo", out)  # depthwise
    if per_group % block == 0 and (out // group) % block == 0:
        return Plan(block, True, "BiBo", out)
    return None


def reorder_filter(weight: np.ndarray, layout: str, block: int) -> np.ndarray:
    """OIHW float32 -> onnxruntime's blocked filter, output channels zero-padded to the block.

    "BiBo" (MlasReorderFilterOIHWBiBo): [O/B][I/B][kh][kw][Bi][Bo]; "Bo"
    (MlasReorderFilterOIHWBo): [O/B][I][kh][kw][Bo]. Returned with the 4-D shape onnxruntime
    expects (O padded, I, kh, kw); the bytes are in the blocked order."""
    out, inp, kh, kw = weight.shape
    padded = -(-out // block) * block
    if padded != out:
        weight = np.concatenate([weight, np.zeros((padded - out, inp, kh, kw), np.float32)])
    if layout == "Bo":
        blocked = weight.reshape(padded // block, block, inp, kh, kw).transpose(0, 2, 3, 4, 1)
    else:
        blocked = weight.reshape(padded // block, block, inp // block, block, kh, kw) \
            .transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(blocked, dtype=np.float32).reshape(padded, inp, kh, kw)


def pad_bias(bias: np.ndarray | None, padded: int) -> np.ndarray | None:
    """The bias zero-padded to `padded` output channels (None stays None)."""
    if bias is None or bias.shape[0] == padded:
        return bias
    return np.concatenate([bias, np.zeros(padded - bias.shape[0], np.float32)])


def fused_activation(activation: dict | None) -> dict:
    """Caffe's ReLU (`{"negative_slope": s}`) as the NCHWc Conv's activation attrs
    (onnxruntime's fused_activation.h: `activation`, `activation_params`)."""
    if activation is None:
        return {}
    slope = float(activation.get("negative_slope", 0.0))
    if slope == 0.0:
        return {"activation": "Relu"}
    return {"activation": "LeakyRelu", "activation_params": [slope]}


def conv_model(plan_: Plan, x_shape, w_shape, has_bias: bool, out_shape, attrs: dict,
               blocked_in: bool = False, blocked_out: bool = False) -> bytes:
    """The session's graph: [ReorderInput] -> NCHWc Conv (`attrs`, a fused activation among
    them) -> [ReorderOutput], from graph inputs X (NCHW, or NCHWc already when `blocked_in`),
    W (blocked, `w_shape` padded), B (padded) to Y (NCHW `out_shape`, or NCHWc when
    `blocked_out`: then the output channels are a multiple of the block, so the blocked
    tensor has the same shape and bytes)."""
    x = "X"
    nodes = []
    if plan_.reorder_input and not blocked_in:
        nodes.append(Node("ReorderInput", ["X"], ["Xc"], domain=DOMAIN))
        x = "Xc"
    nodes.append(Node("Conv", [x, "W", "B"] if has_bias else [x, "W"],
                      ["Y" if blocked_out else "Yc"], attrs, domain=DOMAIN))
    if not blocked_out:
        nodes.append(Node("ReorderOutput", ["Yc"], ["Y"], {"channels": out_shape[1]},
                          domain=DOMAIN))
    inputs = {"X": x_shape, "W": w_shape}
    if has_bias:
        inputs["B"] = (plan_.out_padded,)
    return graph_model(nodes, inputs, {"Y": out_shape}, {"": 13, DOMAIN: 1})


def pools(channels: int) -> bool:
    """Whether a pooling over `channels` runs in NCHWc: when they fill whole blocks.
    (onnxruntime's ReorderInput takes any multiple of 4, nchwc_ops.cc, padding it to a
    block; but the padded copies inside the session are memory the ledger does not hold:
    20 channels at 416 px took 16 MiB more than numpy's pooling, found in review.)"""
    block = block_size()
    return block is not None and channels % block == 0


def pool_model(op_type: str, x_shape, out_shape, attrs: dict, blocked_in: bool = False,
               blocked_out: bool = False) -> bytes:
    """A pooling session's graph: [ReorderInput] -> NCHWc `op_type` (MaxPool, AveragePool,
    GlobalMaxPool or GlobalAveragePool with ONNX's `attrs`) -> [ReorderOutput], X to Y, each
    NCHW or (`blocked_in`, `blocked_out`) NCHWc. onnxruntime's NCHWc pooling kernels are
    parallel over channel blocks and vectorised over a block; its NCHW MaxPool is not."""
    nodes = []
    x, y = ("X" if blocked_in else "Xc"), ("Y" if blocked_out else "Yc")
    if not blocked_in:
        nodes.append(Node("ReorderInput", ["X"], ["Xc"], domain=DOMAIN))
    nodes.append(Node(op_type, [x], [y], attrs, domain=DOMAIN))
    if not blocked_out:
        nodes.append(Node("ReorderOutput", ["Yc"], ["Y"], {"channels": out_shape[1]},
                          domain=DOMAIN))
    return graph_model(nodes, {"X": x_shape}, {"Y": out_shape}, {"": 13, DOMAIN: 1})


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """NCHW -> NCHWc with the same shape (channels a multiple of `block`): the bytes in
    onnxruntime's blocked order [N][C/B][H][W][B] (what ReorderInput writes)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)
                                ).reshape(n, c, h, w)


def from_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """The inverse of `to_blocked`."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, h, w, block).transpose(0, 1, 4, 2, 3)
                                ).reshape(n, c, h, w)


#: The most floats of one tiled per-channel parameter (`channel_views`).
TILE_FLOATS = 4096


def channel_views(x: np.ndarray, params: list[np.ndarray], block: int
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """An NCHWc tensor `x` (NCHW shape) viewed as (N, C/B, H*W/R, R*B) and per-channel
    parameters (C,) tiled to broadcast over it as (C/B, 1, R*B): R is the largest divisor of
    H*W up to 256 whose tiles hold at most `TILE_FLOATS` floats, so numpy's inner loops run
    over R*B floats, not over one block (measured: a 16 x 416 x 416 BatchNorm took 2.8 ms
    with inner loops of 16, 0.8 ms in NCHW), and tiling costs little next to the pass
    (measured, BatchNorm folded into Scale + leaky ReLU on Tiny YOLO's shapes: with tiles as
    large as the blob 0.67 ms on 1024 x 12 x 12 and 3.4 ms on 16 x 416 x 416; with tiles of
    at most 4096 floats 0.27 and 2.4 ms)."""
    n, c, h, w = x.shape
    pixels = h * w
    most = max(1, min(pixels, 256, TILE_FLOATS // c))
    rows = next(r for r in range(most, 0, -1) if pixels % r == 0)
    view = x.reshape(n, c // block, pixels // rows, rows * block)
    tiled = [np.tile(p.reshape(c // block, 1, block), (1, 1, rows)) for p in params]
    return view, tiled
