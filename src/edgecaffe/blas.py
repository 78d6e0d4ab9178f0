"""The BLAS thread count: set for a stretch of work, read back, and how engines share cores.

threadpoolctl is a dependency; without it (a stripped install) limits are no-ops.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


def limit_blas(threads: int) -> Any:
    """Limit BLAS to `threads` threads until `restore_original_limits()` (or the end of a
    `with` block)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _NoLimit()
    return threadpool_limits(limits=threads, user_api="blas")


class _NoLimit(contextlib.nullcontext):
    def restore_original_limits(self) -> None:
        pass


def blas_thread_count() -> int | str:
    """The BLAS thread count in force ('default' when it cannot be read)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", "default")
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else 1


def default_blas_threads(workers: int) -> int:
    """BLAS threads per worker: the cores shared out, at least one. More would oversubscribe
    the cores whenever several workers execute (OpenBLAS threads spin while they wait)."""
    return max(1, (os.cpu_count() or 1) // workers)
