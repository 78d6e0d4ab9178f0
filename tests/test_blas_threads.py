"""BLAS threads that fit the schedule (`blas.BlasHold`, "adaptive"): the rule, the counts
OpenBLAS really gets as executions start and end (read back through threadpoolctl, in a fresh
interpreter), and the onnxruntime backend's intra-op threads following the same share. That
the simulator models the same rule is tested with the engine in test_parity.py."""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys

import pytest

from edgecaffe.blas import ADAPTIVE, check_blas_threads, shared_threads
from edgecaffe.engine import Engine


def test_the_rule_shares_the_cores_out_without_oversubscribing():
    assert shared_threads(2, 1) == 2  # a network running alone: every core
    assert shared_threads(2, 2) == 1  # two at once: one each
    assert shared_threads(2, 3) == 1  # never fewer than one
    assert shared_threads(4, 2) == 2
    assert shared_threads(3, 2) == 1  # one count per process: 1 and 1, not 2 and 1
    assert shared_threads(8, 0) == 8


def test_settings_are_checked():
    assert check_blas_threads(None) == ADAPTIVE
    assert check_blas_threads(3) == 3
    for bad in (0, -1, 1.5, True, "auto"):
        with pytest.raises(ValueError, match="blas_threads must be"):
            check_blas_threads(bad)


HOLD_SCRIPT = """
import numpy  # noqa: F401 (loads OpenBLAS)
from threadpoolctl import threadpool_info
from edgecaffe.blas import BlasHold

def counts():
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

before = counts()
seen = []
hold = BlasHold("adaptive", cores=4)
hold.enter()
seen.append((counts(), BlasHold.split_threads()))  # held, nothing running: all cores
seen.append(BlasHold.exec_begin())     # one execution: 4
seen.append(BlasHold.exec_begin())     # two: 2 each
seen.append(BlasHold.split_threads())
seen.append(BlasHold.exec_begin())     # three: 1 each
seen.append(BlasHold.current_threads())
BlasHold.exec_end()
seen.append(BlasHold.split_threads())  # two again
BlasHold.exec_end()
seen.append((counts(), BlasHold.current_threads()))  # one: all four; OpenBLAS on one
BlasHold.exec_end()
hold.leave()
seen.append((counts(), BlasHold.split_threads()))
fixed = BlasHold(3, cores=4)
fixed.enter()
seen.append((BlasHold.exec_begin(), BlasHold.exec_begin(), counts()))
BlasHold.exec_end(); BlasHold.exec_end()
fixed.leave()
print(repr((before, seen, counts())))
"""


def test_executions_get_the_share_as_they_start_and_end():
    """In a fresh interpreter (other tests change the process's count): the share follows
    the rule; OpenBLAS runs on one thread while held (our kernels split the products) and
    gets the process's own count back afterwards."""
    run = subprocess.run([sys.executable, "-c", HOLD_SCRIPT], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    before, seen, after = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert before != {1}  # else the test could not see OpenBLAS's count change
    assert seen == [({1}, 4), 4, 2, 2, 1, 1, 2, ({1}, 4), (before, 1), (3, 3, {1})]
    assert after == before  # the process's own count once no engine holds


def test_the_onnxruntime_backend_follows_the_share(zoo_packages):
    """A network running alone (one worker) gets every core as intra-op threads, whatever
    the process's BLAS count; a fixed setting gives that count."""
    pytest.importorskip("onnxruntime")
    from edgecaffe.ops import fast

    packages = zoo_packages(["TinyAlex"])
    for setting, cores, expected in ((ADAPTIVE, 3, 3), (1, 3, 1)):
        fast.SESSIONS.clear()
        with Engine(packages, mode="linear", budget="64M", workers=1, blas_threads=setting,
                    cores=cores, backend="onnxruntime") as engine:
            engine.submit(_image(), ["TinyAlex"]).result(timeout=60)
        threads = {key[-1] for key in fast.SESSIONS._sessions}
        assert threads == {expected}, (setting, threads)


def _image():
    import numpy as np

    return np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


# -- products split across our own threads (ops.gemm) -----------------------------------------

@pytest.mark.parametrize(("a_shape", "b_shape"), [
    ((96, 363), (363, 3000)),      # columns split (a convolution band)
    ((3, 32, 64), (3, 64, 900)),   # grouped: columns split in every group
    ((10, 9216), (9216, 1000)),    # a fully connected layer at batch 10: columns
    ((700, 300), (300, 100)),      # narrow: rows split
    ((1024, 900), (900, 300)),     # more rows than columns: rows split (fc6-conv's band)
])
@pytest.mark.parametrize("threads", [2, 3])
def test_split_products_equal_numpy(a_shape, b_shape, threads):
    import numpy as np

    from edgecaffe.ops import gemm

    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    expected = np.matmul(a, b)
    wide = np.zeros((*expected.shape[:-1], expected.shape[-1] + 7), dtype=np.float32)
    out = wide[..., 3:-4]  # a strided view, as a convolution band's output
    gemm.matmul(a, b, out, threads=threads)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert not wide[..., :3].any() and not wide[..., -4:].any()


@pytest.mark.parametrize("size", [169, 256, 384, 512, 1000, 4096, 50176])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_blocks_are_a_multiple_of_the_threads(size, threads):
    """Every thread gets as many blocks (of about the same size) on a quiet machine: 384 rows
    in 3 blocks of 128 on 2 threads ran one thread twice as long as the other."""
    from edgecaffe.ops import gemm

    edges = gemm._edges(size, threads)
    sizes = [hi - lo for lo, hi in itertools.pairwise(edges)]
    assert edges[0] == 0 and edges[-1] == size and all(s > 0 for s in sizes)
    assert all(lo % 16 == 0 for lo in edges[:-1])
    if size >= threads * 16 * 2:
        assert len(sizes) % threads == 0 and len(sizes) <= threads * gemm.BLOCKS_PER_THREAD
        assert max(sizes) - min(sizes) <= 16 * len(sizes)


def test_a_failing_block_raises_after_all_blocks_ended():
    import threading
    import time

    from edgecaffe.ops import gemm

    ran = []

    def ok():
        time.sleep(0.01)
        ran.append(threading.current_thread().name)

    def bad():
        raise MemoryError("block 1")

    with pytest.raises(MemoryError, match="block 1"):
        gemm.run_blocks([ok, bad, ok, ok], threads=2)
    assert len(ran) == 3


def test_kernels_under_an_engine_split_their_products_and_give_the_same_outputs():
    """Convolution (plain and grouped), fully connected, transposed convolution and MatMul
    inside a hold (split on 2 threads) give what they give outside one (plain numpy)."""
    import numpy as np

    from edgecaffe.blas import BlasHold
    from edgecaffe.ops import gemm
    from edgecaffe.ops.conv import conv2d
    from edgecaffe.ops.conv_transpose import conv_transpose2d
    from edgecaffe.ops.dense import Dense
    from edgecaffe.ops.matmul import MatMul

    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 16, 70, 70), dtype=np.float32)
    w = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    wg = rng.standard_normal((32, 4, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(32, dtype=np.float32)
    fc = rng.standard_normal((1000, 16 * 70 * 70), dtype=np.float32)
    attrs = {"out_features": 1000, "axis": 1, "bias": False, "transpose": False}

    deconv = rng.standard_normal((16, 8, 4, 4), dtype=np.float32)
    deconv_attrs = {"kernel": (4, 4), "stride": (2, 2), "dilation": (1, 1),
                    "pads": (1, 1, 1, 1), "group": 2}
    square = x.reshape(16 * 70, 70)[:700]

    def outputs():
        return [conv2d(x, w, bias, (1, 1), (1, 1), (1, 1), 1),
                conv2d(x, wg, None, (1, 1), (0, 0), (1, 1), 4),
                Dense().run([x], {"weight": fc}, attrs)[0],
                conv_transpose2d(x, deconv, None, deconv_attrs),
                MatMul().run([square, square.T.copy()], {}, {})[0]]

    plain = outputs()
    calls = []
    original = gemm.run_blocks

    def counting(blocks, threads):
        calls.append((len(blocks), threads))
        original(blocks, threads)

    hold = BlasHold(2, cores=2)
    hold.enter()
    try:
        gemm.run_blocks = counting
        split = outputs()
    finally:
        gemm.run_blocks = original
        hold.leave()
    assert len(calls) >= 5  # a band each at least (the transposed one has two)
    assert all(threads == 2 and blocks > 1 for blocks, threads in calls)
    for ours, reference in zip(split, plain, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-3)
