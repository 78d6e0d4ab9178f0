"""What each task does with real weights and kernels (the simulator replaces this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.network import BlobRunner
from edgecaffe.model.package import ModelPackage
from edgecaffe.model.preprocess import ImageError, load_image, preprocess_for
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


def run_task(task: Task, package: ModelPackage, per_layer: bool, cold: bool = False) -> None:
    """Execute one task; its network instance's `state` carries activations and weights."""
    state = task.instance.state
    if task.kind == Kind.INIT:
        state["runner"] = BlobRunner(package.network, network_input(state["input"], package))
        state["weights"] = {}
        return
    weights: dict[str, dict[str, np.ndarray]] = state["weights"]
    if task.kind == Kind.LOAD:
        for name in task.layers:
            weights[name] = package.read(name, cold=cold)
        return
    runner: BlobRunner = state["runner"]
    layers = package.network.layer_by_name
    for name in task.layers:
        # Per-layer modes free a layer's weights as soon as it has run.
        layer_weights = weights.pop(name, {}) if per_layer else weights.get(name, {})
        runner.run(layers[name], layer_weights)
    if task is task.instance.last:
        state["outputs"] = runner.results()
        state.pop("runner", None)
        state.pop("weights", None)
