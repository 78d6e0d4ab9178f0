"""What every operator provides, and the registry that finds them by name.

An operator is a small stateless object: shape inference, the shapes of its weights, a FLOP count
and a numpy kernel. Importers (Caffe, later ONNX) map their layers onto these names and
hyperparameters (`attrs`), so nothing format-specific reaches the kernels.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from math import prod
from typing import Any, ClassVar

import numpy as np

from edgecaffe.errors import EdgeCaffeError

Shape = tuple[int, ...]
Attrs = dict[str, Any]


class OpError(EdgeCaffeError):
    """Hyperparameters or input shapes an operator cannot accept."""


class BackendError(OpError):
    """A kernel backend that is unknown or not installed."""


class Op:
    """Base class: subclasses set `name` and override what differs from the defaults."""

    name: ClassVar[str] = ""
    #: True when the kernel may overwrite its first input (elementwise ops); the executor only
    #: asks for it when no one else reads that blob afterwards.
    inplace: ClassVar[bool] = False
    #: True when the output is a view of the first input's memory (Dropout, Flatten, Reshape):
    #: the executor then treats both blobs as one buffer when deciding what may be overwritten.
    view: ClassVar[bool] = False
    #: True when the output's size depends on the data (DetectionOutput's number of boxes):
    #: `output_shapes` then gives the largest output (what memory accounting reserves), and
    #: the kernel may return fewer entries along any axis.
    dynamic_shape: ClassVar[bool] = False
    #: Attrs that must be real numbers (not bool, finite) when present: the ones a kernel uses
    #: without shape inference having looked at them (a package's manifest is untrusted input).
    numbers: ClassVar[tuple[str, ...]] = ()
    #: Attrs that must be integers, or lists of integers and None (not bool), when present
    #: and not None: sizes, counts and indices a kernel passes to numpy as they are.
    integers: ClassVar[tuple[str, ...]] = ()

    def param_shapes(self, inputs: Sequence[Shape], attrs: Attrs) -> dict[str, Shape]:
        """Name and shape of each weight array the op needs (empty for parameter-free ops)."""
        return {}

    def output_shapes(self, inputs: Sequence[Shape], attrs: Attrs) -> list[Shape]:
        """Shape inference; the default keeps the first input's shape (elementwise ops)."""
        return [tuple(inputs[0])]

    def flops(self, inputs: Sequence[Shape], outputs: Sequence[Shape], attrs: Attrs) -> int:
        """Floating-point operations of one forward pass (a multiply-add counts as 2)."""
        return sum(prod(shape) for shape in outputs)

    def workspace_bytes(self, inputs: Sequence[Shape], outputs: Sequence[Shape],
                        attrs: Attrs) -> int:
        """Bytes the kernel allocates besides its outputs while it runs (im2col buffers,
        padded copies): what the memory ledger reserves for the exec task. 0 by default."""
        return 0

    def run(
        self,
        inputs: list[np.ndarray],
        weights: dict[str, np.ndarray],
        attrs: Attrs,
        inplace: bool = False,
    ) -> list[np.ndarray]:
        raise NotImplementedError(self.name)


OPS: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make an operator findable by its `name`."""
    if not cls.name or cls.name in OPS:
        raise RuntimeError(f"operator name missing or registered twice: {cls.name!r}")
    OPS[cls.name] = cls()
    return cls


def _is_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_attr_types(op: Op, attrs: Attrs) -> None:
    """Raise OpError when one of `op.numbers` in `attrs` is not a finite real number, or one
    of `op.integers` is neither an integer nor a list of integers (a package's manifest is
    untrusted input: a kernel must never meet a float where numpy wants a size)."""
    for key in op.integers:
        value = attrs.get(key)
        if value is None or _is_integer(value):
            continue
        if not (isinstance(value, list | tuple)
                and all(v is None or _is_integer(v) for v in value)):  # None: open-ended
            raise OpError(f"{op.name}: attr {key!r} = {value!r} must be an integer or a list "
                          "of integers")
    for key in op.numbers:
        if key not in attrs:
            continue
        value = attrs[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
                or abs(value) == float("inf"):
            raise OpError(f"{op.name}: attr {key!r} = {value!r} must be a finite number")


#: Dense and Conv layers whose weight (bias aside) exceeds `CHUNK_MIN_BYTES` compute their
#: output `CHUNK_ROWS` rows (output channels) per GEMM call, so that a block of such a layer
#: (`ops/block.py`), whose edges fall on chunk edges, makes exactly the same GEMM calls as the
#: whole layer: bit-for-bit the same outputs whatever shortcuts BLAS takes for some shapes.
#: Measured: without chunks, OpenBLAS 0.3.31 gave different last bits for some block shapes
#: (a (2, 2000) x (2000, 1000) product against 64-row blocks; sgemv_n for K x O weights).
CHUNK_ROWS = 128
CHUNK_MIN_BYTES = 8 << 20


def output_chunk(weight_bytes: int) -> int | None:
    """Rows per GEMM call for a Dense/Conv layer of `weight_bytes` (its whole weight, bias
    aside): `CHUNK_ROWS` above `CHUNK_MIN_BYTES`, else None (one call)."""
    return CHUNK_ROWS if weight_bytes > CHUNK_MIN_BYTES else None


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except KeyError:
        raise OpError(f"unknown operator {name!r}; known: {', '.join(sorted(OPS))}") from None


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """`axis` in 0..rank-1 (a negative one counts from the end); OpError if it is not an
    integer or out of range."""
    if not _is_integer(axis):
        raise OpError(f"{what} {axis!r} must be an integer")
    if not -rank <= axis < rank:
        raise OpError(f"{what} {axis} is out of range for a {rank}-d blob")
    return axis % rank


#: A backend's kernel: (inputs, weights, attrs, threads) -> outputs, like `Op.run`. The attrs
#: may carry "activation" ({"negative_slope": s}, see `Backend.fuse_into`): the kernel then
#: applies Caffe's ReLU with that slope to its output.
Kernel = Callable[[list[np.ndarray], dict[str, np.ndarray], Attrs, int], list[np.ndarray]]

#: Kernel backends: "numpy" (the default and the reference: every `Op.run`) and optional ones,
#: each a module imported only when a run chooses it (see `Backend`); operators it has no
#: kernel for run on numpy.
BACKENDS = {"numpy": None, "onnxruntime": "edgecaffe.ops.fast"}


class Backend:
    """What an optional backend module provides, read from its attributes:

    * `KERNELS`: operator name -> `Kernel`;
    * `FUSE_INTO` (optional): operators whose kernel can apply a following ReLU itself (the
      runner then skips that ReLU layer; `model.network.BlobRunner`);
    * `prepare(op, attrs, weights)` (optional): a layer's weights in the backend's own layout,
      done once where they are loaded instead of at every execution; its kernels take both
      the prepared and the plain weights.
    * `blocked_io(op, attrs, in_shape, out_shape)` and `BLOCKED_KERNELS` (optional): which
      layers take, write or keep blobs in the backend's own channel-blocked layout, and the
      kernels (inputs, weights, attrs, inplace) of layout-keeping operators for such blobs
      (the runner keeps a blob blocked between layers that all take it;
      `model.network.BlobRunner`). Kernels told so by `attrs["blocked_in"]` /
      `["blocked_out"]` read or write that layout. `BLOCKED_FOLDS` ((operator, reader's
      operator) -> fn(weights, attrs) giving a per-channel affine that the reader's blocked
      kernel applies first, `attrs["pre_affine"]`) and `BLOCKED_FUSE_INTO` (blocked kernels
      that apply a following ReLU) fuse chains of such layers.
    """

    def __init__(self, name: str, module: Any | None) -> None:
        self.name = name
        self.kernels: dict[str, Kernel] = getattr(module, "KERNELS", {})
        self.fuse_into: frozenset[str] = frozenset(getattr(module, "FUSE_INTO", ()))
        self._prepare = getattr(module, "prepare", None)
        self.blocked_io: Callable[..., tuple[bool, bool, bool]] | None = getattr(
            module, "blocked_io", None)
        self.blocked_kernels: dict[str, Callable[..., list[np.ndarray]]] = getattr(
            module, "BLOCKED_KERNELS", {})
        self.blocked_folds: dict[tuple[str, str], Callable[..., tuple]] = getattr(
            module, "BLOCKED_FOLDS", {})
        self.blocked_fuse_into: frozenset[str] = frozenset(
            getattr(module, "BLOCKED_FUSE_INTO", ()))

    def prepare(self, op: str, attrs: Attrs, weights: dict[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        """`weights` in this backend's layout (the same dict when it has none for `op`)."""
        if self._prepare is None or not weights:
            return weights
        return self._prepare(op, attrs, weights)


def get_backend(backend: str) -> Backend:
    """The backend named `backend`. Raises `BackendError` for an unknown backend or one whose
    package is not installed."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module = BACKENDS[backend]
    if module is None:
        return Backend(backend, None)
    try:
        return Backend(backend, importlib.import_module(module))
    except ImportError as error:
        raise BackendError(f"backend {backend!r} cannot be loaded ({error}): "
                           "pip install 'edgecaffe[fast]'") from error


def backend_kernels(backend: str) -> dict[str, Kernel]:
    """Operator name -> kernel for `backend` (empty for numpy). Raises `BackendError` for an
    unknown backend or one whose package is not installed."""
    return get_backend(backend).kernels
