"""The format-neutral network: layers over named blobs, shape inference, bytes, FLOPs, forward.

Importers (Caffe today, ONNX later) build a list of `Layer`s whose `op` and `attrs` use the
operator vocabulary of `edgecaffe.ops`; `Network` infers every blob's shape from the inputs,
checks every layer, and runs them in order. Blobs are single-assignment: an in-place layer of
the source format (Caffe's `relu1: conv1 -> conv1`) is given a fresh output name by the importer,
so a blob name always means one value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cached_property
from math import prod
from typing import Any

import numpy as np

from edgecaffe.model.errors import ModelError
from edgecaffe.ops import OpError, Shape, get_backend, get_op
from edgecaffe.ops.base import Attrs, check_attr_types

DTYPE = np.dtype(np.float32)


class NetworkError(ModelError):
    """A network that cannot be built or run; the message names the layer or blob."""


@dataclass
class Layer:
    """One layer: the unit of loading, executing and freeing."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    #: Weight name -> shape, filled by shape inference.
    params: dict[str, Shape] = field(default_factory=dict)
    flops: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(prod(shape) for shape in self.params.values()) * DTYPE.itemsize


class Network:
    """A directed acyclic graph of layers, in execution order, with optional weights.

    `weights` maps layer name -> weight name -> float32 array. A network without weights still
    knows every shape, byte count and FLOP count (what splitting and planning need).
    """

    def __init__(
        self,
        name: str,
        layers: Sequence[Layer],
        weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.layers = list(layers)
        self.weights: dict[str, dict[str, np.ndarray]] = {
            layer: dict(arrays) for layer, arrays in (weights or {}).items()
        }
        #: Preprocessing and labels: mean (per channel, in the input's channel order), scale,
        #: channel_order ('BGR' | 'RGB'), labels (class names), and whatever an importer adds.
        self.meta: dict[str, Any] = dict(meta or {})
        self.blob_shapes: dict[str, Shape] = {}
        self._infer()

    # -- structure ------------------------------------------------------------------------

    def _infer(self) -> None:
        names: set[str] = set()
        for layer in self.layers:
            if layer.name in names:
                raise NetworkError(f"network {self.name!r}: two layers are named {layer.name!r}")
            names.add(layer.name)
            try:
                op = get_op(layer.op)
                check_attr_types(op, layer.attrs)
            except OpError as error:
                raise NetworkError(f"layer {layer.name!r}: {error}") from None
            missing = [blob for blob in layer.inputs if blob not in self.blob_shapes]
            if missing:
                raise NetworkError(
                    f"layer {layer.name!r} ({layer.op}) reads blob(s) {missing} that no earlier "
                    "layer produces"
                )
            in_shapes = [self.blob_shapes[blob] for blob in layer.inputs]
            try:
                params = op.param_shapes(in_shapes, layer.attrs)
                layer.params = {key: tuple(shape) for key, shape in params.items()}
                out_shapes = op.output_shapes(in_shapes, layer.attrs)
                layer.flops = int(op.flops(in_shapes, out_shapes, layer.attrs))
            except (OpError, KeyError, ZeroDivisionError, IndexError, TypeError, ValueError,
                    OverflowError) as error:  # attrs from a file: any of these is bad input
                detail = f"missing hyperparameter {error}" if isinstance(error, KeyError) else error
                raise NetworkError(
                    f"layer {layer.name!r} ({layer.op}) with input shapes {in_shapes}: {detail}"
                ) from None
            if len(out_shapes) != len(layer.outputs):
                raise NetworkError(
                    f"layer {layer.name!r} ({layer.op}) produces {len(out_shapes)} blob(s) but "
                    f"names {len(layer.outputs)}"
                )
            for blob, shape in zip(layer.outputs, out_shapes, strict=True):
                if blob in self.blob_shapes:
                    raise NetworkError(f"blob {blob!r} is produced twice (layer {layer.name!r})")
                if any(dim <= 0 for dim in shape):
                    raise NetworkError(f"layer {layer.name!r} gives blob {blob!r} shape {shape}")
                self.blob_shapes[blob] = tuple(int(d) for d in shape)
        if not self.inputs:
            raise NetworkError(f"network {self.name!r} has no input layer")

    @cached_property
    def layer_by_name(self) -> dict[str, Layer]:
        return {layer.name: layer for layer in self.layers}

    @cached_property
    def inputs(self) -> list[str]:
        """Names of the input blobs."""
        return [blob for layer in self.layers if layer.op == "Input" for blob in layer.outputs]

    @property
    def input_shape(self) -> Shape:
        """NCHW shape of the (single) input."""
        if len(self.inputs) != 1:
            raise NetworkError(f"network {self.name!r} has inputs {self.inputs}; name one")
        return self.blob_shapes[self.inputs[0]]

    @cached_property
    def outputs(self) -> list[str]:
        """Blobs that no layer reads, in the order they are produced."""
        read = {blob for layer in self.layers for blob in layer.inputs}
        return [b for layer in self.layers for b in layer.outputs if b not in read]

    def blob_bytes(self, blob: str) -> int:
        return prod(self.blob_shapes[blob]) * DTYPE.itemsize

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @cached_property
    def buffer_owner(self) -> dict[str, str]:
        """Blob -> the blob that owns its memory (a view layer's output shares its input's)."""
        root: dict[str, str] = {}
        for layer in self.layers:
            view = get_op(layer.op).view
            for blob in layer.outputs:
                root[blob] = root[layer.inputs[0]] if view else blob
        return root

    def needed_layers(self, outputs: Iterable[str]) -> list[Layer]:
        """The layers that contribute to `outputs`, in execution order."""
        wanted = set(outputs)
        needed: list[Layer] = []
        for layer in reversed(self.layers):
            if wanted.intersection(layer.outputs):
                needed.append(layer)
                wanted.update(layer.inputs)
        return needed[::-1]

    # -- running --------------------------------------------------------------------------

    def check_weights(self) -> None:
        for layer in self.layers:
            have = self.weights.get(layer.name, {})
            for param, shape in layer.params.items():
                if param not in have:
                    raise NetworkError(f"layer {layer.name!r} has no {param!r} weights loaded")
                if tuple(have[param].shape) != shape or have[param].dtype != DTYPE:
                    raise NetworkError(
                        f"layer {layer.name!r} weight {param!r} is {have[param].dtype} "
                        f"{tuple(have[param].shape)}, expected float32 {shape}"
                    )

    def feeds(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the caller's input(s) against the input shapes; returns input name -> array."""
        if isinstance(x, Mapping):
            given = dict(x)
        elif len(self.inputs) == 1:
            given = {self.inputs[0]: x}
        else:
            raise NetworkError(f"network {self.name!r} has inputs {self.inputs}: pass a dict")
        if set(given) != set(self.inputs):
            raise NetworkError(
                f"network {self.name!r} needs inputs {self.inputs}, got {list(given)}"
            )
        feeds = {}
        for name, array in given.items():
            array = np.asarray(array)
            expected = self.blob_shapes[name]
            if array.shape != expected:
                hint = " (add the batch axis: x[None])" if array.shape == expected[1:] else ""
                raise NetworkError(
                    f"input {name!r} of network {self.name!r} must have shape {expected}, "
                    f"got {array.shape}{hint}"
                )
            feeds[name] = np.ascontiguousarray(array, dtype=DTYPE)
        return feeds

    def forward(
        self,
        x: np.ndarray | Mapping[str, np.ndarray],
        outputs: Iterable[str] | None = None,
        backend: str = "numpy",
        weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run every layer on `x` (NCHW float32, or a dict for several inputs).

        Returns output blob name -> array: the network's outputs (blobs no layer reads), or the
        blobs named in `outputs` (only the layers they depend on run). Intermediate blobs are
        dropped after their last reader. `backend`: the kernels ("numpy", the reference, or
        "onnxruntime"; see `BlobRunner`). `weights`: layer -> weights to use instead of
        `self.weights`, e.g. `prepared_weights(backend)`'s.
        """
        self.check_weights()
        runner = BlobRunner(self, x, outputs, backend=backend)
        source = self.weights if weights is None else weights
        for layer in runner.layers:
            runner.run(layer, source.get(layer.name, {}))
        return runner.results()

    def prepared_weights(self, backend: str) -> dict[str, dict[str, np.ndarray]]:
        """Every layer's weights in `backend`'s own layout (`ops.Backend.prepare`; e.g. the
        onnxruntime backend's blocked convolution filters), as a new dict the caller owns: a
        second copy of the weights a backend rearranges (none for numpy). `forward(x,
        backend=b, weights=net.prepared_weights(b))` then skips that work at every call,
        as the engine does by preparing each layer when it loads it."""
        chosen = get_backend(backend)
        layers = self.layer_by_name
        return {name: chosen.prepare(layers[name].op, layers[name].attrs, dict(w))
                for name, w in self.weights.items()}

    def __repr__(self) -> str:
        return (
            f"<Network {self.name!r}: {len(self.layers)} layers, "
            f"input {self.blob_shapes.get(self.inputs[0])}, "
            f"{self.weight_bytes / 1e6:.1f} MB weights, {self.flops / 1e9:.2f} GFLOP>"
        )


class BlobRunner:
    """Executes layers one at a time over the live blobs, freeing each buffer after its last reader.

    The whole-model forward and the per-layer package runner share it: whoever calls `run`
    decides where each layer's weights come from. Buffers are tracked per owner blob, so a view
    (Dropout, Flatten) keeps its source alive and in-place kernels never overwrite a buffer that
    someone still reads, the caller's input, or a requested result.

    `backend` chooses the kernels: "numpy" (every operator's own `run`) or an optional backend
    such as "onnxruntime" (`ops.base.BACKENDS`), which takes over the operators it has kernels
    for; `threads` is that backend's thread count, or a function giving it at each layer
    (default: `blas.BlasHold.current_threads`, the share an engine gives the execution, or
    the process's BLAS count outside an engine: what the numpy kernels get). Raises
    `ops.BackendError` for an unknown or missing backend.
    """

    def __init__(
        self,
        network: Network,
        x: np.ndarray | Mapping[str, np.ndarray],
        outputs: Iterable[str] | None = None,
        backend: str = "numpy",
        threads: int | Callable[[], int] | None = None,
    ) -> None:
        self.network = network
        self.backend = backend
        self._backend = get_backend(backend)
        self._kernels = self._backend.kernels
        if self._kernels and threads is None:
            from edgecaffe.blas import BlasHold

            threads = BlasHold.current_threads  # an engine's share, else the process's count
        self.threads: int | Callable[[], int] = threads or 0
        self.wanted = list(network.outputs if outputs is None else outputs)
        unknown = [blob for blob in self.wanted if blob not in network.blob_shapes]
        if unknown:
            close = {b: get_close_matches(b, network.blob_shapes, n=3) for b in unknown}
            hints = "; ".join(f"{b!r}: did you mean {', '.join(map(repr, c))}?"
                              for b, c in close.items() if c)
            raise NetworkError(
                f"network {network.name!r} has no blob(s) {unknown}"
                + (f" ({hints})" if hints else "")
                + f"; blobs: {', '.join(network.blob_shapes)}"
            )
        self.values: dict[str, np.ndarray] = network.feeds(x)
        storage = network.buffer_owner
        self.protected = {storage[b] for b in self.wanted} | set(self.values)
        self.layers = network.needed_layers(self.wanted)
        self._needed = {layer.name for layer in self.layers}
        # Reads per buffer by computing layers (a view's readers read its owner's buffer).
        self.remaining: Counter[str] = Counter(
            storage[blob]
            for layer in self.layers
            if not get_op(layer.op).view
            for blob in layer.inputs
        )
        self._aliases: dict[str, list[str]] = {}
        #: The needed layers reading each blob (the fusion and layout plans read it).
        self._readers: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for blob in set(layer.inputs):
                self._readers.setdefault(blob, []).append(layer)
        self._fused, self._done_by_producer = self._plan_fusion()
        self.blocked = self._plan_blocked()
        self._folded = self._plan_blocked_fusion()
        self._pending: dict[str, tuple] = {}

    def _plan_fusion(self) -> tuple[dict[str, Attrs], set[str]]:
        """Which ReLU layers the backend's kernel of the layer before them applies (`Backend.
        fuse_into`): a ReLU whose input is the single output of a layer of such an operator,
        read by that ReLU alone and neither a requested result nor an input, i.e. a ReLU that
        would have rectified that buffer in place anyway. Returns producer layer -> its
        activation attrs, and the ReLU layers that then pass their input through."""
        fuse_into = self._backend.fuse_into
        if not fuse_into:
            return {}, set()
        readers = self._readers
        storage = self.network.buffer_owner
        fused: dict[str, Attrs] = {}
        done: set[str] = set()
        for layer in self.layers:
            if layer.op not in fuse_into or len(layer.outputs) != 1:
                continue
            blob = layer.outputs[0]
            after = readers.get(blob, [])
            if (len(after) == 1 and after[0].op == "ReLU" and list(after[0].inputs) == [blob]
                    and storage[blob] == blob and blob not in self.protected):
                relu = after[0]
                fused[layer.name] = {"negative_slope": float(relu.attrs.get("negative_slope",
                                                                            0.0))}
                done.add(relu.name)
        return fused, done

    def _plan_blocked(self) -> set[str]:
        """The blobs kept in the backend's channel-blocked layout (`ops.Backend.blocked_io`):
        written so by a layer that can (an NCHWc Conv or Pool) or kept so by a layout-keeping
        layer (ReLU, BatchNorm, Scale) from a blocked input, and read only by single-input
        layers that take that layout and, for layout-keeping ones, whose own outputs
        qualify too; never a requested result, an input or a view's buffer. Such a blob has
        its NCHW shape and byte count (the ledger's), its bytes in the blocked order."""
        io = self._backend.blocked_io
        if io is None:
            return set()
        shapes, storage = self.network.blob_shapes, self.network.buffer_owner
        caps: dict[str, tuple[bool, bool, bool]] = {}
        readers = self._readers
        for layer in self.layers:
            if len(layer.inputs) == 1 and len(layer.outputs) == 1:
                caps[layer.name] = io(layer.op, layer.attrs, shapes[layer.inputs[0]],
                                      shapes[layer.outputs[0]])
        memo: dict[str, bool] = {}

        def taken(blob: str) -> bool:  # every reader takes `blob` blocked
            if blob not in memo:
                memo[blob] = False  # (a cycle cannot occur in a DAG; this guards anyway)
                after = readers.get(blob, [])
                memo[blob] = bool(after) and blob not in self.protected and \
                    storage[blob] == blob and all(
                        layer.name in caps and (
                            taken(layer.outputs[0]) if caps[layer.name][2] else
                            caps[layer.name][0]) for layer in after)
            return memo[blob]

        blocked: set[str] = set()
        for layer in self.layers:
            if layer.name not in caps:
                continue
            _, gives, keeps = caps[layer.name]
            source = layer.inputs[0] in blocked if keeps else gives
            if source and taken(layer.outputs[0]):
                blocked.add(layer.outputs[0])
        return blocked

    def _plan_blocked_fusion(self) -> dict[str, str]:
        """Among blocked blobs, each read by one layer alone: a layer folded into its reader
        (`ops.Backend.blocked_folds`: BatchNorm into Scale; it passes its input through and
        its reader applies its affine), and a ReLU applied by the blocked kernel before it
        (`blocked_fuse_into`; added to the ReLU fusion plan). Returns folded layer -> the
        layer that applies it."""
        folds, fuse_into = self._backend.blocked_folds, self._backend.blocked_fuse_into
        readers = self._readers
        folded: dict[str, str] = {}
        for layer in self.layers:
            if len(layer.outputs) != 1 or layer.outputs[0] not in self.blocked:
                continue
            after = readers.get(layer.outputs[0], [])
            if len(after) != 1 or list(after[0].inputs) != [layer.outputs[0]]:
                continue
            reader = after[0]
            # A folded layer passes its input's buffer on, which its reader may then write in
            # place: only when nothing else reads that input.
            if ((layer.op, reader.op) in folds and layer.name not in self._done_by_producer
                    and len(layer.inputs) == 1
                    and readers.get(layer.inputs[0], []) == [layer]):
                folded[layer.name] = reader.name
            elif (layer.op in fuse_into and reader.op == "ReLU"
                  and reader.outputs[0] in self.blocked):
                self._fused[layer.name] = {
                    "negative_slope": float(reader.attrs.get("negative_slope", 0.0))}
                self._done_by_producer.add(reader.name)
        return folded

    def prepare(self, layer: Layer, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`layer`'s weights in this runner's backend layout (`ops.Backend.prepare`): what a
        load does once so that `run` need not rearrange them at every execution."""
        return self._backend.prepare(layer.op, layer.attrs, dict(weights))

    def run(self, layer: Layer, weights: Mapping[str, np.ndarray]) -> None:
        """Execute one layer with the given weights (name -> array; plain or `prepare`d)."""
        op = get_op(layer.op)
        if layer.op == "Input" or layer.name not in self._needed:
            return
        storage = self.network.buffer_owner
        owners = [storage[blob] for blob in layer.inputs]
        inplace = (
            op.inplace and self.remaining[owners[0]] == 1 and owners[0] not in self.protected
            and owners.count(owners[0]) == 1
        )
        kernel = self._kernels.get(layer.op)
        try:
            inputs = [self.values[b] for b in layer.inputs]
            blocked_in = bool(layer.inputs) and layer.inputs[0] in self.blocked
            if layer.name in self._done_by_producer:
                results = inputs  # the layer before already rectified this buffer
            elif layer.name in self._folded:  # its reader applies it (a tiny affine)
                reader = self.network.layer_by_name[self._folded[layer.name]]
                fold = self._backend.blocked_folds[(layer.op, reader.op)]
                self._pending[reader.name] = fold(dict(weights), layer.attrs)
                results = inputs
            elif blocked_in and layer.op in self._backend.blocked_kernels:
                attrs = layer.attrs
                if layer.name in self._fused:
                    attrs = {**attrs, "activation": self._fused[layer.name]}
                if layer.name in self._pending:
                    attrs = {**attrs, "pre_affine": self._pending.pop(layer.name)}
                results = self._backend.blocked_kernels[layer.op](inputs, dict(weights),
                                                                  attrs, inplace)
            elif kernel is not None:
                threads = self.threads() if callable(self.threads) else self.threads
                attrs = layer.attrs
                if layer.name in self._fused:
                    attrs = {**attrs, "activation": self._fused[layer.name]}
                if blocked_in or layer.outputs[0] in self.blocked:
                    attrs = {**attrs, "blocked_in": blocked_in,
                             "blocked_out": layer.outputs[0] in self.blocked}
                results = kernel(inputs, dict(weights), attrs, threads)
            else:
                results = op.run(inputs, dict(weights), layer.attrs, inplace)
        except (OpError, ValueError, FloatingPointError) as error:
            raise NetworkError(f"layer {layer.name!r} ({layer.op}) failed: {error}") from error
        for blob, array in zip(layer.outputs, results, strict=True):
            expected = self.network.blob_shapes[blob]
            if op.dynamic_shape and array.ndim == len(expected) and all(
                a <= e for a, e in zip(array.shape, expected, strict=True)
            ):
                expected = array.shape  # a data-dependent size within the declared bound
            if array.shape != expected or array.dtype != DTYPE:
                raise NetworkError(
                    f"layer {layer.name!r} ({layer.op}) produced {array.dtype} {array.shape} for "
                    f"blob {blob!r}, expected float32 {expected}"
                )
            self.values[blob] = array
            self._aliases.setdefault(storage[blob], []).append(blob)
            self._release(storage[blob])
        if not op.view:
            for owner in owners:
                self.remaining[owner] -= 1
                self._release(owner)

    def _release(self, owner: str) -> None:
        if self.remaining[owner] <= 0 and owner not in self.protected:
            for blob in self._aliases.pop(owner, [owner]):
                self.values.pop(blob, None)

    @property
    def live_bytes(self) -> int:
        """Bytes held by live activations (views counted once)."""
        arrays = {id(a.base if a.base is not None else a): a for a in self.values.values()}
        return sum(a.nbytes for a in arrays.values())

    def results(self) -> dict[str, np.ndarray]:
        return {blob: self.values[blob] for blob in self.wanted}
