"""The `onnxruntime` backend: Conv, ConvTranspose, Dense and Pool run as cached onnxruntime
sessions of one layer each.

Each session is a small graph for ONE layer whose weights are graph *inputs*, not initializers:
the session holds no weights, so loading and freeing them (and the memory ledger) stay ours,
and one session serves every layer of the same signature (operator, attributes, shapes).
Sessions are cached by that signature plus the thread count, in a bounded LRU cache shared by
all threads (`InferenceSession.run` is thread-safe). Inputs and the output are bound to numpy
buffers (`io_binding`): onnxruntime neither copies the inputs nor allocates the result.

What makes it as fast as onnxruntime running a whole model (measured: benchmarks/forward.py):
convolutions run in onnxruntime's blocked NCHWc layout with filters we reorder (`fast_nchwc`;
`prepare` does it once where a layer is loaded); a ReLU that follows a Conv or Dense runs in
that session (`FUSE_INTO`, planned by `model.network.BlobRunner`); max pooling runs here too.
LRN, softmax, concat and the elementwise layers stay on numpy: measured per layer against
the whole-model session's profile, numpy's were as fast or faster.

onnxruntime is imported when this module is, which happens only when a run chooses the backend
(`ops.base.get_backend`). Operators without a kernel here run on numpy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import onnxruntime as ort

from edgecaffe.ops import fast_nchwc
from edgecaffe.ops.base import Attrs, OpError, get_op
from edgecaffe.ops.fast_blocked import (
    batch_norm_affine,
    batch_norm_blocked,
    relu_blocked,
    scale_blocked,
)
from edgecaffe.ops.onnx_wire import Node, graph_model

#: Sessions kept. Measured: each holds ~224 kB RSS and, with 2 threads, one more OS thread
#: (asleep when idle). SoS_GoogleNet alone needs 61 (one per convolution and pooling shape):
#: a cache smaller than the signatures a run cycles through misses on every layer.
CACHE_SIZE = 128


class SessionCache:
    """Bounded LRU cache of onnxruntime sessions by signature; safe to use from many threads."""

    def __init__(self, capacity: int = CACHE_SIZE) -> None:
        self.capacity = capacity
        self._sessions: OrderedDict[Hashable, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()
        self.created = 0

    def get(self, key: Hashable, model: Callable[[], bytes], threads: int) -> ort.InferenceSession:
        """The session for `key`, built from `model()` (ModelProto bytes) on a miss."""
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
        session = new_session(model(), threads)  # outside the lock: creation takes ~0.5 ms
        with self._lock:
            session = self._sessions.setdefault(key, session)
            self._sessions.move_to_end(key)
            self.created += 1
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return session

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)


def new_session(model: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads that sleep, not spin, when idle (many
    cached sessions each own a pool) and no memory arena (buffers come back at once)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


SESSIONS = SessionCache()


def run_session(key: Hashable, model: Callable[[], bytes], inputs: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray], threads: int, what: str) -> None:
    """Run the cached session `key` (built from `model()` on a miss) with float32 `inputs`
    bound in place and its outputs written straight into the given arrays (`io_binding`: no
    copies either way). Errors become `OpError`s naming `what`."""
    try:
        session = SESSIONS.get(key, model, threads)
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_input(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        for name, array in outputs.items():
            binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        session.run_with_iobinding(binding)
    except Exception as error:  # onnxruntime's pybind errors derive from Exception only
        raise OpError(f"onnxruntime {what} on {[a.shape for a in inputs.values()]}: "
                      f"{error}") from error


def _attrs_key(attrs: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


def _activation_node(activation: Attrs | None, x: str, y: str) -> list[Node]:
    """Caffe's ReLU with `activation`'s negative_slope as an ONNX node (none without one)."""
    if activation is None:
        return []
    slope = activation.get("negative_slope", 0.0)
    if slope == 0.0:
        return [Node("Relu", [x], [y])]
    return [Node("LeakyRelu", [x], [y], {"alpha": float(slope)})]


def run_one(op_type: str, onnx_attrs: dict, arrays: list[np.ndarray | None],
            out_shape: tuple[int, ...], threads: int,
            activation: Attrs | None = None) -> np.ndarray:
    """Run one ONNX node on float32 arrays (None: an omitted optional input) into a fresh
    float32 array of `out_shape`; `activation` (see `ops.base.Kernel`) adds a Relu or
    LeakyRelu node after it, which onnxruntime fuses into a Conv or Gemm."""
    names = ["X", "W", "B"][: len(arrays)]
    feeds = {n: np.ascontiguousarray(a, dtype=np.float32)
             for n, a in zip(names, arrays, strict=True) if a is not None}
    act = _activation_node(activation, "Z", "Y")
    key = (op_type, _attrs_key(onnx_attrs), tuple((n, a.shape) for n, a in feeds.items()),
           _attrs_key(activation or {}), threads)
    out = np.empty(out_shape, dtype=np.float32)

    def model() -> bytes:
        node = Node(op_type, list(feeds), ["Z" if act else "Y"], onnx_attrs)
        return graph_model([node, *act], {n: a.shape for n, a in feeds.items()},
                           {"Y": out_shape})

    run_session(key, model, feeds, {"Y": out}, threads, f"{op_type} {onnx_attrs}")
    return out


def _activate(y: np.ndarray, activation: Attrs | None) -> np.ndarray:
    """Apply a fused ReLU on numpy, in place (for the paths that run numpy kernels)."""
    if activation is not None:
        get_op("ReLU").run([y], {}, activation, inplace=True)
    return y


#: Convolutions that onnxruntime's NCHWc kernels do not take and whose weight has more floats
#: than this (32 MB) stay on numpy: measured on FaceNet at 1340 px (benchmarks/conv_layers.py,
#: CPU time, 1 thread), onnxruntime's plain Conv with the weight as an input ran fc6-conv
#: (4096 x 9216) at 1.43x and fc7-conv (4096 x 4096) at 1.32x sgemm's time, numpy at 1.03x and
#: 1.01x. (In NCHWc, both run on onnxruntime.)
NUMPY_CONV_WEIGHT_FLOATS = 8 * 1024 * 1024

#: The keys of a convolution's prepared weights (`prepare`): filter in NCHWc order, padded bias.
BLOCKED_WEIGHT, PADDED_BIAS = "weight:nchwc", "bias:nchwc"


def prepare(op: str, attrs: Attrs, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A layer's weights in this backend's layout, once, where they are loaded: a Conv that
    runs in NCHWc gets its filter reordered and its bias padded (`fast_nchwc`; the plain
    arrays are dropped, so the bytes held stay the layer's, plus the output channels' padding
    to a block). Other layers' weights are returned as they are."""
    if op != "Conv" or "weight" not in weights or len(attrs["kernel"]) != 2:
        return weights
    nchwc = fast_nchwc.plan(weights["weight"].shape, attrs["group"])
    if nchwc is None:
        return weights
    prepared = {BLOCKED_WEIGHT: fast_nchwc.reorder_filter(weights["weight"], nchwc.layout,
                                                          nchwc.block)}
    if weights.get("bias") is not None:
        prepared[PADDED_BIAS] = fast_nchwc.pad_bias(weights["bias"], nchwc.out_padded)
    return prepared


def conv(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
         threads: int) -> list[np.ndarray]:
    """Our Conv (attrs as `ops.conv.Conv`) as onnxruntime's NCHWc Conv where it takes the
    shape (`fast_nchwc`; weights plain or `prepare`d), else as ONNX Conv (opset 13: pads
    begin..., end...); very large weights outside NCHWc go to the numpy kernel (see
    `NUMPY_CONV_WEIGHT_FLOATS`). A fused ReLU (`attrs["activation"]`) is applied in the
    convolution's output loop; `attrs["blocked_in"]`, `["blocked_out"]` (see `blocked_io`):
    the input is, the output is to be, an NCHWc blob."""
    x, activation = inputs[0], attrs.get("activation")
    if BLOCKED_WEIGHT not in weights:
        weights = prepare("Conv", attrs, weights) if x.ndim == 4 else weights
    if BLOCKED_WEIGHT not in weights and weights["weight"].size > NUMPY_CONV_WEIGHT_FLOATS:
        return [_activate(get_op("Conv").run(inputs, weights, attrs)[0], activation)]
    (ph, pw), (sh, sw), (dh, dw) = attrs["pad"], attrs["stride"], attrs["dilation"]
    (kh, kw) = attrs["kernel"]
    out_shape = get_op("Conv").output_shapes([x.shape], attrs)[0]
    # Caffe gives one output where the kernel overhangs the padded input by less than the
    # stride (ops.conv.conv_output_size); ONNX needs that overhang as explicit end padding.
    extra_h = max(0, (out_shape[2] - 1) * sh + dh * (kh - 1) + 1 - x.shape[2] - 2 * ph)
    extra_w = max(0, (out_shape[3] - 1) * sw + dw * (kw - 1) + 1 - x.shape[3] - 2 * pw)
    onnx_attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw],
                  "pads": [ph, pw, ph + extra_h, pw + extra_w], "dilations": [dh, dw],
                  "group": attrs["group"]}
    if BLOCKED_WEIGHT not in weights:
        if attrs.get("blocked_in") or attrs.get("blocked_out"):
            raise OpError(f"NCHWc blobs asked of a Conv that does not run in NCHWc {attrs}")
        return [run_one("Conv", onnx_attrs, [x, weights["weight"], weights.get("bias")],
                        out_shape, threads, activation)]
    ends = {k: True for k in ("blocked_in", "blocked_out") if attrs.get(k)}
    return [_conv_nchwc(x, weights, attrs["group"], {**onnx_attrs, **ends}, out_shape,
                        threads, activation)]


def _conv_nchwc(x: np.ndarray, weights: dict[str, np.ndarray], group: int, onnx_attrs: dict,
                out_shape: tuple[int, ...], threads: int,
                activation: Attrs | None) -> np.ndarray:
    blocked, bias = weights[BLOCKED_WEIGHT], weights.get(PADDED_BIAS)
    nchwc = fast_nchwc.plan(blocked.shape, group)
    if nchwc is None or blocked.shape[1] * group != x.shape[1]:
        raise OpError(f"NCHWc filter {blocked.shape} (group {group}) does not fit input "
                      f"{x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    feeds = {"X": x, "W": blocked}
    if bias is not None:
        feeds["B"] = bias
    fused = fast_nchwc.fused_activation(activation)
    ends = bool(onnx_attrs.pop("blocked_in", False)), bool(onnx_attrs.pop("blocked_out", False))
    key = ("nchwc", nchwc, _attrs_key(onnx_attrs), x.shape, blocked.shape, out_shape,
           bias is not None, _attrs_key(fused), ends, threads)
    out = np.empty(out_shape, dtype=np.float32)
    run_session(key, lambda: fast_nchwc.conv_model(nchwc, x.shape, blocked.shape,
                                                   bias is not None, out_shape,
                                                   {**onnx_attrs, **fused}, *ends),
                feeds, {"Y": out}, threads, f"NCHWc Conv {onnx_attrs}")
    return out


def conv_transpose(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
                   threads: int) -> list[np.ndarray]:
    """Our ConvTranspose (pads in ONNX's order already) as ONNX ConvTranspose."""
    x = inputs[0]
    onnx_attrs = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["stride"]),
                  "pads": list(attrs["pads"]), "dilations": list(attrs["dilation"]),
                  "output_padding": list(attrs.get("output_padding") or (0, 0)),
                  "group": attrs["group"]}
    out_shape = get_op("ConvTranspose").output_shapes([x.shape], attrs)[0]
    return [run_one("ConvTranspose", onnx_attrs, [x, weights["weight"], weights.get("bias")],
                    out_shape, threads)]


def dense(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
          threads: int) -> list[np.ndarray]:
    """Our Dense (flatten from `axis`, weight O x K, or K x O when `transpose`) as ONNX Gemm
    on the flattened rows (a view), bias as Gemm's broadcast C, a fused ReLU after it."""
    x = inputs[0]
    out_shape = get_op("Dense").output_shapes([x.shape], attrs)[0]
    rows = int(np.prod(out_shape[:-1]))
    flat = x.reshape(rows, -1)
    y = run_one("Gemm", {"transB": 0 if attrs["transpose"] else 1},
                [flat, weights["weight"], weights.get("bias")],
                (rows, attrs["out_features"]), threads, attrs.get("activation"))
    return [y.reshape(out_shape)]


def _pool_onnx(x_shape: tuple[int, ...], attrs: Attrs) -> tuple[str, dict] | None:
    """Our Pool (attrs as `ops.pool.Pool`) as an ONNX pooling node (op type, attrs), or None
    where it stays on numpy (see `pool`)."""
    if len(x_shape) != 4:
        return None
    is_max = attrs["method"] == "max"
    if attrs["global"]:
        return ("GlobalMaxPool" if is_max else "GlobalAveragePool"), {}
    out_shape = get_op("Pool").output_shapes([x_shape], attrs)[0]
    kernel, stride, pad = attrs["kernel"], attrs["stride"], attrs["pad"]
    end = [(o - 1) * s + k - size - p for o, s, k, size, p
           in zip(out_shape[2:], stride, kernel, x_shape[2:], pad, strict=True)]
    fits = all(0 <= e < k and p < k for e, p, k in zip(end, pad, kernel, strict=True))
    if not fits or not (is_max or (not any(pad) and not any(end))):
        return None
    return ("MaxPool" if is_max else "AveragePool"), {
        "kernel_shape": list(kernel), "strides": list(stride), "pads": [*pad, *end]}


def pool(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
         threads: int) -> list[np.ndarray]:
    """Our Pool (attrs as `ops.pool.Pool`) as ONNX MaxPool / GlobalMaxPool /
    GlobalAveragePool, and AveragePool where every window lies inside the input (no padding,
    no partial window: Caffe's and ONNX's divisors agree); the rest runs on numpy. In NCHWc
    where the channel count allows (`fast_nchwc.pools`), its input and output NCHWc blobs
    already where `attrs` say so (`blocked_in`, `blocked_out`; see `blocked_io`).

    The IR's output size (Caffe's ceil-and-clip rule or ONNX's) becomes explicit end padding
    under floor rounding, as `edgecaffe export` writes it; a max window over padding only
    is -FLT_MAX in both (onnxruntime starts from the lowest float, as Caffe does)."""
    x = inputs[0]
    node = _pool_onnx(x.shape, attrs)
    if node is None:
        return get_op("Pool").run(inputs, weights, attrs)
    op_type, onnx_attrs = node
    out_shape = get_op("Pool").output_shapes([x.shape], attrs)[0]
    if not fast_nchwc.pools(x.shape[1]):
        return [run_one(op_type, onnx_attrs, [x], out_shape, threads)]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(out_shape, dtype=np.float32)
    ends = bool(attrs.get("blocked_in")), bool(attrs.get("blocked_out"))
    key = ("nchwc pool", op_type, _attrs_key(onnx_attrs), x.shape, out_shape, ends, threads)
    run_session(key, lambda: fast_nchwc.pool_model(op_type, x.shape, out_shape, onnx_attrs,
                                                   *ends),
                {"X": x}, {"Y": out}, threads, f"NCHWc {op_type} {onnx_attrs}")
    return [out]


#: Operators that keep their input's layout and run on NCHWc blobs: operator -> kernel
#: (inputs, weights, attrs, inplace), for a blocked input only (`blocked_io`).
BLOCKED_KERNELS = {"BatchNorm": batch_norm_blocked, "Scale": scale_blocked,
                   "ReLU": relu_blocked}

#: On NCHWc blobs, a layer of the first operator read only by one of the second: the first
#: passes its input through and hands its per-channel affine (mul, add) to the second's
#: kernel (`attrs["pre_affine"]`). Tiny YOLO's in-place BatchNorm + Scale become one pass.
BLOCKED_FOLDS = {("BatchNorm", "Scale"): batch_norm_affine}

#: Blocked kernels that apply a following ReLU themselves (`attrs["activation"]`), as
#: `FUSE_INTO`'s do.
BLOCKED_FUSE_INTO = ("Scale",)


def blocked_io(op: str, attrs: Attrs, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
               ) -> tuple[bool, bool, bool]:
    """What one single-input, single-output layer can do with blobs in onnxruntime's NCHWc
    layout (kept by `model.network.BlobRunner` between layers whose kernels all take it,
    which saves the reorders and the intermediate buffers of each session): (takes an
    NCHWc input, can write an NCHWc output, keeps its input's layout whichever it is).
    An NCHWc blob here has a channel count that is a multiple of the block, so its shape
    and bytes are those of the NCHW blob (what the ledger counts)."""
    block = fast_nchwc.block_size()
    if block is None or len(in_shape) != 4 or len(out_shape) != 4:
        return False, False, False
    if op == "Conv" and len(attrs["kernel"]) == 2:
        group = attrs["group"]
        nchwc = fast_nchwc.plan((attrs["out_channels"], in_shape[1] // group,
                                 *attrs["kernel"]), group)
        if nchwc is None:
            return False, False, False
        return nchwc.reorder_input, nchwc.out_padded == out_shape[1], False
    if op == "Pool":
        takes = _pool_onnx(in_shape, attrs) is not None and in_shape[1] % block == 0
        return takes, takes, False
    preserving = (op == "ReLU" or (op == "BatchNorm" and attrs.get("use_global_stats", True))
                  or (op == "Scale" and attrs.get("num_axes", 1) == 1
                      and attrs.get("axis", 1) in (1, -3)))
    return False, False, preserving and in_shape == out_shape


#: Operator name -> kernel(inputs, weights, attrs, threads). Operators not listed run on numpy.
KERNELS = {"Conv": conv, "ConvTranspose": conv_transpose, "Dense": dense, "Pool": pool}

#: Operators whose kernels apply a following ReLU themselves (`ops.base.Backend`).
FUSE_INTO = ("Conv", "Dense")
