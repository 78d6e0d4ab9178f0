"""The BLAS thread count: set for a stretch of work, read back, and how engines share cores.

threadpoolctl is a dependency; without it (a stripped install) limits are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import threading
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


def blas_kernel() -> str:
    """Which BLAS does the work: library, version and the CPU kernel it chose (e.g.
    'openblas 0.3.27 Haswell'); 'unknown' when it cannot be read."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not pools:
        return "unknown"
    pool = pools[0]
    return " ".join(str(part) for part in (pool.get("internal_api"), pool.get("version"),
                                           pool.get("architecture")) if part)


def default_blas_threads(workers: int) -> int:
    """BLAS threads per worker: the cores shared out, at least one. More would oversubscribe
    the cores whenever several workers execute (OpenBLAS threads spin while they wait)."""
    return max(1, (os.cpu_count() or 1) // workers)


class BlasHold:
    """BLAS at `threads` threads while at least one holder is inside (`with hold:`); when the
    last holder in the process leaves, the process gets back the count it had before.

    OpenBLAS's thread count is global to the process, so this is as narrow as a scope can be:
    an engine holds it only while it has requests in flight, and code elsewhere in the process
    sees its own setting whenever no engine is busy. Holders share one count at a time (the
    latest `enter` sets it). Setting it costs about 10 us (threadpoolctl's controller)."""

    _lock = threading.Lock()
    _holders = 0
    _saved: Any = None
    _controller: Any = None

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> BlasHold:
        cls = BlasHold
        with cls._lock:
            controller = cls._get_controller()
            if controller is not None:
                limit = controller.limit(limits=self.threads, user_api="blas")
                if cls._holders == 0:
                    cls._saved = limit  # remembers what the process had
            cls._holders += 1
        return self

    def __exit__(self, *exc: object) -> None:
        cls = BlasHold
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0 and cls._saved is not None:
                cls._saved.restore_original_limits()
                cls._saved = None

    @classmethod
    def _get_controller(cls) -> Any:
        if cls._controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                return None
            cls._controller = ThreadpoolController()
        return cls._controller
