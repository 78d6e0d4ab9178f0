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
    """BLAS at `threads` threads while at least one holder is inside (`enter` / `leave`, from
    any thread); when the last holder in the process leaves, the process gets back the count
    it had before the first one entered.

    OpenBLAS (pthreads, as numpy's wheels ship it) keeps one thread count for the whole
    process, so this is as narrow as a scope can be: an engine holds it only while it has
    requests in flight, and code elsewhere in the process sees its own setting whenever no
    engine is busy. The first holder sets the count; a later holder asking for another count
    while it is held gets the one in force (`enter` returns it) and a warning. The count is
    set through OpenBLAS's own `openblas_set_num_threads`, which acts from any thread
    (threadpoolctl's limits act only from the thread that first set one); other BLAS
    libraries go through threadpoolctl."""

    _lock = threading.Lock()
    _holders = 0
    _saved: list[Any] = []
    _held: int | None = None
    _libraries: list[tuple[Any, Any]] | None = None

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def enter(self) -> int:
        """Hold the count; returns the count in force (`threads`, or an earlier holder's)."""
        cls = BlasHold
        with cls._lock:
            if cls._holders == 0:
                libraries = cls._blas_libraries()
                cls._saved = [get() for get, _ in libraries]
                for _, set_ in libraries:
                    set_(self.threads)
                cls._held = self.threads
            elif cls._held != self.threads:
                import warnings

                warnings.warn(f"BLAS threads: {self.threads} asked for while another engine "
                              f"holds {cls._held}; OpenBLAS has one count per process, so "
                              f"{cls._held} it is", stacklevel=2)
            cls._holders += 1
            return cls._held

    def leave(self) -> None:
        cls = BlasHold
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0:
                for (_, set_), threads in zip(cls._blas_libraries(), cls._saved, strict=True):
                    if threads is not None:
                        set_(threads)
                cls._saved, cls._held = [], None

    @classmethod
    def _blas_libraries(cls) -> list[tuple[Any, Any]]:
        """(get, set) of the thread count of every BLAS library loaded (numpy's, OpenCV's...)."""
        if cls._libraries is None:
            cls._libraries = _count_calls()
        return cls._libraries


def _count_calls() -> list[tuple[Any, Any]]:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    calls = []
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas":
            continue
        setter = lib._get_symbol("openblas_set_num_threads") \
            if lib.internal_api == "openblas" else None
        if setter is None:  # another library: threadpoolctl's own setter
            calls.append((lib.get_num_threads, lib.set_num_threads))
        else:
            calls.append((lib.get_num_threads, lambda threads, set_=setter: set_(int(threads))))
    return calls
