"""What each task does with real weights and kernels (the simulator replaces this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.blas import BlasHold
from edgecaffe.model.network import BlobRunner
from edgecaffe.model.package import ModelPackage
from edgecaffe.model.preprocess import ImageError, load_image, preprocess_for
from edgecaffe.ops import get_backend
from edgecaffe.sched.graph import Kind, Task


def network_input(source: Any, package: ModelPackage) -> np.ndarray:
    """A request's input for one network: an image (path or H x W x 3 uint8 BGR array) is
    preprocessed with the package's settings; an NCHW array of the right shape passes as is."""
    if isinstance(source, str | Path):
        source = load_image(source)
    array = np.asarray(source)
    shape = package.input_shape
    if array.shape == tuple(shape):
        return array
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return preprocess_for(array, shape, package.meta)
    raise ImageError(f"input of shape {array.shape} fits neither network {package.name!r}'s "
                     f"input {tuple(shape)} nor an H x W x 3 uint8 image")


class NetworkRun:
    """What one network instance's tasks keep between them: its blob runner (activations) and
    the weights loaded and not yet dropped; its outputs once the last task ran. With kept
    weights on, `spent`: weights an execution has freed, layer ("*": a whole model) ->
    arrays, until the engine keeps or drops them (`engine.kept.KeptWeights`)."""

    __slots__ = ("outputs", "runner", "spent", "weights")

    def __init__(self, runner: BlobRunner | None) -> None:
        self.runner: BlobRunner | None = runner
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.outputs: dict[str, np.ndarray] | None = None
        self.spent: dict[str, Any] = {}


def run_task(task: Task, package: ModelPackage, per_layer: bool, cold: bool = False,
             backend: str = "numpy", keep: bool = False) -> None:
    """Execute one task of a network instance; `instance.work` (a `NetworkRun`) carries its
    activations and weights from task to task. `backend`: the kernels (see `BlobRunner`);
    an optional backend's thread count follows the engine's BLAS share at every layer.
    `keep`: kept weights on (sched/cache.py): a load that is a hit (`task.cached`) reads
    nothing (the engine handed it the kept arrays), and freed weights go to `work.spent`."""
    instance = task.instance
    if task.kind == Kind.INIT:
        # A speculative gated instance (context-oblivious) has no input yet: its first
        # exec, which waits for the condition, prepares it.
        instance.work = NetworkRun(None if instance.gated else _runner(instance, package,
                                                                       backend))
        return
    work: NetworkRun = instance.work
    if task.kind == Kind.LOAD:
        if task.cached and all(name in work.weights for name in task.layers):
            return  # handed over by the engine (engine/kept.py)
        chosen = get_backend(backend)
        layers = package.network.layer_by_name
        for name in task.layers:
            weights = package.read(name, cold=cold)
            prepared = chosen.prepare(layers[name].op, layers[name].attrs, weights)
            if prepared is not weights:  # a backend's own layout: the file's pages can go now
                del weights
                package.release(name)
            work.weights[name] = prepared
        return
    if work.runner is None:
        work.runner = _runner(instance, package, backend)
    layers = package.network.layer_by_name
    for name in task.layers:
        # Per-layer modes free a layer's weights as soon as it has run (and their pages).
        layer_weights = work.weights.pop(name, {}) if per_layer else work.weights.get(name, {})
        work.runner.run(layers[name], layer_weights)
        if per_layer and layer_weights:
            if keep:
                work.spent[name] = layer_weights
                continue
            del layer_weights
            package.release(name)
    if task is instance.last:
        work.outputs = work.runner.results()
        work.runner = None
        if keep and not per_layer:  # a bulk network's whole model
            work.spent["*"], work.weights = work.weights, {}
        held = [name for name in work.weights if work.weights[name]]
        work.weights.clear()
        for name in held:
            package.release(name)


def _runner(instance: Any, package: ModelPackage, backend: str) -> BlobRunner:
    return BlobRunner(package.network, network_input(instance.input, package), backend=backend,
                      threads=BlasHold.current_threads)
