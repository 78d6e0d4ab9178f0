"""Helpers shared by tests: real files that packages on PyPI ship, OpenCV-equivalent networks."""

from __future__ import annotations

import functools
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


@functools.cache
def blas_splits_exactly() -> bool:
    """Whether this machine's BLAS gives a product's columns the same bits however the work
    is cut: the whole product against two bands of columns and against one thread. OpenBLAS's
    SkylakeX (AVX-512) sgemm does; its Haswell (AVX2) kernels do not: a column's last bits
    follow where it falls in the kernel's tiles (~1e-7 relative per product). Where it does
    not, a run whose bands or thread counts differ from its reference's (a band cap, the
    engine's per-execution thread counts) can only be compared within float rounding; blocks
    are exact on either, since they make the whole layer's calls (tests/test_blocks.py)."""
    import numpy as np

    from edgecaffe.blas import limit_blas

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 576)).astype(np.float32)
    b = rng.standard_normal((576, 1500)).astype(np.float32)
    with limit_blas(2):
        whole = a @ b
        bands = np.concatenate([a @ b[:, :700], a @ b[:, 700:]], axis=1)
    with limit_blas(1):
        alone = a @ b
    return np.array_equal(whole, bands) and np.array_equal(whole, alone)


def assert_same_or_rounding(ours, reference, what: str = "output", rtol: float = 1e-5) -> None:
    """`ours` bit-for-bit `reference` where the BLAS splits exactly (`blas_splits_exactly`),
    else within `rtol` of the reference's largest magnitude, elementwise."""
    import numpy as np

    ours, reference = np.asarray(ours), np.asarray(reference)
    if blas_splits_exactly():
        assert np.array_equal(ours, reference), what
        return
    assert ours.shape == reference.shape and ours.dtype == reference.dtype, what
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * scale, err_msg=what)


def assert_tree_same_or_rounding(ours, reference, rtol: float = 1e-5, where: str = "") -> None:
    """A result tree (dicts, lists, numbers, strings) equal to `reference`, its floats
    bit-for-bit where the BLAS splits exactly (`blas_splits_exactly`), else each within
    `rtol` relative (or absolute, near zero)."""
    import math

    if isinstance(reference, dict):
        assert isinstance(ours, dict) and ours.keys() == reference.keys(), where
        for key in reference:
            assert_tree_same_or_rounding(ours[key], reference[key], rtol, f"{where}/{key}")
    elif isinstance(reference, list | tuple):
        assert isinstance(ours, list | tuple) and len(ours) == len(reference), where
        for index, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
            assert_tree_same_or_rounding(mine, theirs, rtol, f"{where}[{index}]")
    elif isinstance(reference, float) and not blas_splits_exactly():
        assert isinstance(ours, float) and math.isclose(ours, reference, rel_tol=rtol,
                                                        abs_tol=rtol), (where, ours, reference)
    else:
        assert ours == reference, (where, ours, reference)
