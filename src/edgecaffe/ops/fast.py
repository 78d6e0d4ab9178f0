"""The `onnxruntime` backend: Conv, ConvTranspose and Dense run as cached one-operator
onnxruntime sessions.

Each session is a graph of ONE node whose weights are graph *inputs*, not initializers: the
session holds no weights, so loading and freeing them (and the memory ledger) stay ours, and one
session serves every layer of the same signature (operator, attributes, shapes). Sessions are
cached by that signature plus the thread count, in a bounded LRU cache shared by all threads
(`InferenceSession.run` is thread-safe). Inputs and the output are bound to numpy buffers
(`io_binding`): onnxruntime neither copies the inputs nor allocates the result.

onnxruntime is imported when this module is, which happens only when a run chooses the backend
(`ops.base.backend_kernels`). Operators without a kernel here run on numpy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import onnxruntime as ort

from edgecaffe.ops.base import Attrs, OpError, get_op
from edgecaffe.ops.onnx_wire import one_node_model

#: Sessions kept (each ~100 KB plus a thread pool whose threads sleep when idle).
CACHE_SIZE = 64


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


def run_one(op_type: str, onnx_attrs: dict, arrays: list[np.ndarray | None],
            out_shape: tuple[int, ...], threads: int) -> np.ndarray:
    """Run one ONNX node on float32 arrays (None: an omitted optional input) into a fresh
    float32 array of `out_shape`."""
    names = ["X", "W", "B"][: len(arrays)]
    feeds = {n: np.ascontiguousarray(a, dtype=np.float32)
             for n, a in zip(names, arrays, strict=True) if a is not None}
    key = (op_type, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in onnx_attrs.items())),
           tuple((n, a.shape) for n, a in feeds.items()), threads)
    out = np.empty(out_shape, dtype=np.float32)
    try:
        session = SESSIONS.get(
            key,
            lambda: one_node_model(op_type, {n: a.shape for n, a in feeds.items()},
                                   {"Y": out_shape}, onnx_attrs),
            threads,
        )
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_input(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        binding.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)
        session.run_with_iobinding(binding)
    except Exception as error:  # onnxruntime's pybind errors derive from Exception only
        raise OpError(f"onnxruntime {op_type} {onnx_attrs} on "
                      f"{[a.shape for a in feeds.values()]}: {error}") from error
    return out


#: Convolutions whose weight has more floats than this (32 MB) stay on numpy: measured on
#: FaceNet at 1340 px (benchmarks/conv_layers.py, CPU time, 1 thread), onnxruntime's Conv with
#: the weight as an input ran fc6-conv (4096 x 9216) at 1.43x and fc7-conv (4096 x 4096) at
#: 1.32x sgemm's time, numpy at 1.03x and 1.01x; on conv1-conv5 (< 1M floats) onnxruntime ran
#: at 0.85-1.07x, numpy at 1.14-1.57x.
NUMPY_CONV_WEIGHT_FLOATS = 8 * 1024 * 1024


def conv(inputs: list[np.ndarray], weights: dict[str, np.ndarray], attrs: Attrs,
         threads: int) -> list[np.ndarray]:
    """Our Conv (attrs as `ops.conv.Conv`) as ONNX Conv (opset 13: pads begin..., end...);
    very large weights go to the numpy kernel (see `NUMPY_CONV_WEIGHT_FLOATS`)."""
    x = inputs[0]
    if weights["weight"].size > NUMPY_CONV_WEIGHT_FLOATS:
        return get_op("Conv").run(inputs, weights, attrs)
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
    return [run_one("Conv", onnx_attrs, [x, weights["weight"], weights.get("bias")],
                    out_shape, threads)]


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
    on the flattened rows (a view), bias as Gemm's broadcast C."""
    x = inputs[0]
    out_shape = get_op("Dense").output_shapes([x.shape], attrs)[0]
    rows = int(np.prod(out_shape[:-1]))
    flat = x.reshape(rows, -1)
    y = run_one("Gemm", {"transB": 0 if attrs["transpose"] else 1},
                [flat, weights["weight"], weights.get("bias")],
                (rows, attrs["out_features"]), threads)
    return [y.reshape(out_shape)]


#: Operator name -> kernel(inputs, weights, attrs, threads). Operators not listed run on numpy.
KERNELS = {"Conv": conv, "ConvTranspose": conv_transpose, "Dense": dense}
