"""Helpers shared by tests: real files that packages on PyPI ship, OpenCV-equivalent networks."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def real_photo() -> Path:
    """A real photograph (Grace Hopper's portrait) from matplotlib's sample data."""
    folder = package_dir("matplotlib")
    assert folder is not None, "matplotlib (a test dependency) is not installed"
    return folder / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def opencv_compatible(prototxt: str) -> str:
    """The same network, written so OpenCV DNN computes what Caffe computes.

    OpenCV's Caffe importer ignores LRN's `k` (it always uses 1). Since
    x * (k + a/n * S)^-b == k^-b * x * (1 + (a/k)/n * S)^-b, an LRN with k != 1 becomes an LRN
    with k = 1 and alpha / k, followed by a Power layer scaling by k^-b: exactly Caffe's result.
    """
    from google.protobuf import text_format

    from edgecaffe.model.caffe import parse_prototxt
    from edgecaffe.model.caffe.importer import caffe_layers

    net = parse_prototxt(prototxt)
    layers = caffe_layers(net)
    del net.layer[:]
    del net.layers[:]
    for layer in layers:
        lrn = layer.lrn_param
        if layer.type != "LRN" or lrn.k == 1.0:
            net.layer.add().CopyFrom(layer)
            continue
        k, beta, top = lrn.k, lrn.beta, layer.top[0]
        rewritten = net.layer.add()
        rewritten.CopyFrom(layer)
        rewritten.lrn_param.alpha = lrn.alpha / k
        rewritten.lrn_param.k = 1.0
        rewritten.top[0] = f"{top}/k1"
        power = net.layer.add(name=f"{layer.name}/k", type="Power")
        power.bottom.append(f"{top}/k1")
        power.top.append(top)
        power.power_param.scale = k ** -beta
    return text_format.MessageToString(net)


def kernel_allocation_bytes(op, inputs: list, weights: dict, attrs: dict) -> int:
    """What `op.run` allocates beyond its (first) output, by tracemalloc's peak: the
    workspace a kernel really uses, to compare with `op.workspace_bytes`."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        (y,) = op.run(inputs, weights, attrs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - y.nbytes
