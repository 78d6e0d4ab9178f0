"""Matrix products split across our own threads, each running numpy's BLAS on one thread.

While an engine runs (`blas.BlasHold` held), OpenBLAS runs on one thread and the heavy kernels
(convolution bands, fully connected layers, MatMul) split their products into blocks of
columns (or rows) that the execution's share of the cores (`BlasHold.split_threads`, read at
every product, so it follows executions starting and ending) take from a shared counter.

Why not OpenBLAS's own threads: they synchronise several times inside every product and spin
while they wait, so on a machine shared with other processes one delayed thread holds up the
product (docs/architecture.md, "BLAS threads on a loaded machine"). Ours share one counter (a
thread that runs slow takes fewer blocks), meet once per product and sleep when idle.
Outside an engine `matmul` is plain `np.matmul`, on the threads the process gave OpenBLAS.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgecaffe.blas import BlasHold

#: Products below this many FLOPs run on the calling thread (a block handed to another
#: thread costs tens of microseconds).
MIN_SPLIT_FLOPS = 4_000_000
#: Blocks per thread (more than one, so that a slow thread takes fewer) and the smallest block
#: (columns or rows): smaller ones do not reach sgemm's speed.
BLOCKS_PER_THREAD = 3
MIN_BLOCK = 128

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The process's helper threads (started on first use; idle ones block, never spin)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="edgecaffe-gemm")
        return _pool


def run_blocks(blocks: list[Callable[[], object]], threads: int) -> None:
    """Run `blocks` on the calling thread and `threads - 1` helpers, each taking the next
    block from a shared counter; returns when all are done (the first error is raised)."""
    counter = itertools.count()  # next() on it is atomic under the GIL

    def take() -> None:
        while (index := next(counter)) < len(blocks):
            blocks[index]()

    helpers = [_helpers().submit(take) for _ in range(min(threads, len(blocks)) - 1)]
    try:
        take()
    finally:
        for helper in helpers:
            helper.result()


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, threads: int | None = None) -> None:
    """out = a @ b, as `np.matmul(a, b, out=out)` (a: [G x] M x K, b: [G x] K x N, out: a
    writable [G x] M x N view), split across `threads` (default: the share an engine gives
    this execution; 1 outside an engine: OpenBLAS's own threads) in blocks of N columns or
    of M rows, whichever side is longer."""
    threads = BlasHold.split_threads() if threads is None else threads
    m, k = a.shape[-2:]
    n = b.shape[-1]
    groups = a.shape[0] if a.ndim == 3 else 1
    if threads <= 1 or 2 * groups * m * k * n < MIN_SPLIT_FLOPS:
        np.matmul(a, b, out=out)
        return
    # Every block reads the whole of the operand it does not split: split the longer side,
    # so that the smaller matrix is the one read again (FaceNet's fc6-conv at 1340 px: a
    # 151 MB weight against a 24 MB column band: rows).
    if n >= 2 * MIN_BLOCK and (n >= m or m < 2 * MIN_BLOCK):
        edges = _edges(n, threads)
        blocks = [lambda s=slice(lo, hi): np.matmul(a, b[..., s], out=out[..., s])
                  for lo, hi in itertools.pairwise(edges)]
    elif m >= 2 * MIN_BLOCK:
        edges = _edges(m, threads)
        blocks = [lambda s=slice(lo, hi): np.matmul(a[..., s, :], b, out=out[..., s, :])
                  for lo, hi in itertools.pairwise(edges)]
    else:
        np.matmul(a, b, out=out)
        return
    run_blocks(blocks, threads)


def matmul_chunks(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int, rows: bool,
                  threads: int | None = None) -> None:
    """out = a @ b (2-d) in fixed chunks of `chunk` rows of `a` (`rows`) or columns of `b`,
    one `np.matmul` each, shared among `threads` (default as `matmul`). Every output element
    comes from the same GEMM call whatever the thread count and whichever block of a blocked
    layer computes it, so the result is the same to the bit (ops.base.output_chunk)."""
    threads = BlasHold.split_threads() if threads is None else threads
    size = a.shape[0] if rows else b.shape[1]
    if rows:
        blocks = [lambda s=slice(lo, lo + chunk): np.matmul(a[s], b, out=out[s])
                  for lo in range(0, size, chunk)]
    else:
        blocks = [lambda s=slice(lo, lo + chunk): np.matmul(a, b[:, s], out=out[:, s])
                  for lo in range(0, size, chunk)]
    if threads <= 1 or len(blocks) == 1:
        for block in blocks:
            block()
    else:
        run_blocks(blocks, threads)


def _edges(size: int, threads: int) -> list[int]:
    """Block boundaries over `size`: up to BLOCKS_PER_THREAD blocks per thread, a multiple of
    `threads` (else on a quiet machine one thread runs a block more than the others: 384
    rows in 3 blocks of 128 on 2 threads took 2/3 of the time of one thread, not 1/2), none
    smaller than MIN_BLOCK unless that leaves fewer blocks than threads, multiples of 16
    (whole SIMD panels)."""
    per_thread = max(1, min(BLOCKS_PER_THREAD, size // (MIN_BLOCK * threads)))
    count = threads * per_thread
    step = -(-size // count)
    step = -(-step // 16) * 16
    return [*range(0, size, step), size]
