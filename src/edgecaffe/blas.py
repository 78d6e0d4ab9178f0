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


#: `blas_threads="adaptive"`: each execution gets the cores the other executions leave free.
ADAPTIVE = "adaptive"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; `os.cpu_count()` where that
    cannot be read)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_blas_threads(workers: int) -> int:
    """BLAS threads per worker for a fixed count: the cores shared out, at least one. More
    would oversubscribe the cores whenever several workers execute (OpenBLAS threads spin
    while they wait)."""
    return max(1, available_cores() // workers)


def shared_threads(cores: int, running: int) -> int:
    """The adaptive rule: BLAS threads of each of `running` executions on `cores` cores,
    `cores // running`, at least 1 (one alone gets every core; two on two cores one each).
    OpenBLAS keeps one count per process, so every execution gets the same share: on 3
    cores two get 1 each rather than 2 and 1, which would oversubscribe."""
    return max(1, cores // max(1, running))


def check_blas_threads(value: int | str | None) -> int | str:
    """A `blas_threads` setting: a positive int (a fixed count per execution) or "adaptive";
    None is "adaptive". Raises ValueError otherwise."""
    if value is None or value == ADAPTIVE:
        return ADAPTIVE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"blas_threads must be a positive integer or {ADAPTIVE!r}, "
                         f"got {value!r}")
    return value


class BlasHold:
    """BLAS threads while at least one holder (an engine with requests in flight, a profile)
    is inside (`enter` / `leave`, from any thread); when the last holder in the process
    leaves, the process gets back the count it had before the first one entered.

    The setting is each execution's share of the cores: a fixed count, or "adaptive"
    (`shared_threads`): every execution that starts or ends (`exec_begin` / `exec_end`, around
    an exec task) shares the `cores` out again among the executions running in the process,
    so two concurrent executions get one thread each and one running alone all of them. The
    share is spent by our kernels (`ops.gemm` splits each product across that many threads,
    `split_threads`; the onnxruntime backend sets its intra-op threads to it,
    `current_threads`), read at every product: a running execution follows a new share from
    its next one on. OpenBLAS itself runs on one thread while held: its count is one per
    process (pthreads, as numpy's wheels ship it; 0.3.31 there exports no per-thread setter),
    so it cannot give two executions different counts, and its threads, which synchronise
    many times per product and spin while waiting, collapse on a shared machine (measured:
    GenderNet at batch 10 ran 2.4-2.9 s on 2 OpenBLAS threads, 0.4-0.6 s split across 2 of
    ours, load average 8 on 2 cores).

    The first holder's setting rules; a later holder asking for another one gets the one in
    force (`enter` returns it) and a warning. The count is set through OpenBLAS's own
    `openblas_set_num_threads`, which acts from any thread (threadpoolctl's limits act only
    from the thread that first set one); other BLAS libraries go through threadpoolctl."""

    _lock = threading.Lock()
    _holders = 0
    _saved: list[Any] = []
    _held: int | str | None = None
    _cores = 1
    _running = 0  # executions running in the process (adaptive rule)
    _count: int | None = None  # the count last set while held
    _libraries: list[tuple[Any, Any]] | None = None

    def __init__(self, threads: int | str, cores: int | None = None) -> None:
        self.threads = check_blas_threads(threads)
        self.cores = cores or available_cores()

    def enter(self) -> int | str:
        """Hold the setting; returns the one in force (`threads`, or an earlier holder's)."""
        cls = BlasHold
        with cls._lock:
            if cls._holders == 0:
                libraries = cls._blas_libraries()
                cls._saved = [get() for get, _ in libraries]
                cls._held, cls._cores = self.threads, self.cores
                cls._set(cls._share())
            elif (cls._held, cls._cores) != (self.threads, self.cores):
                import warnings

                warnings.warn(f"BLAS threads: {self.threads} asked for while another engine "
                              f"holds {cls._held} ({cls._cores} cores); OpenBLAS has one "
                              f"count per process, so {cls._held} it is", stacklevel=2)
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
                cls._saved, cls._held, cls._count = [], None, None

    @staticmethod
    def exec_begin() -> int:
        """An execution starts: returns the threads it gets now (adaptive: the cores shared
        out again, which the other running executions follow too)."""
        cls = BlasHold
        with cls._lock:
            cls._running += 1
            return cls._set(cls._share())

    @staticmethod
    def exec_end() -> None:
        """An execution ended: the others get its cores (adaptive)."""
        cls = BlasHold
        with cls._lock:
            cls._running -= 1
            cls._set(cls._share())

    @staticmethod
    def split_threads() -> int:
        """The threads an execution splits its products across now (`ops.gemm`): its share
        while an engine holds BLAS (OpenBLAS itself then runs on one), else 1 (OpenBLAS's
        own threads)."""
        share = BlasHold._share()
        return 1 if share is None else share

    @staticmethod
    def current_threads() -> int:
        """The BLAS threads an execution gets now (the fixed count, the adaptive share, or,
        with no holder, the process's own count)."""
        cls = BlasHold
        share = cls._share()
        if share is not None:
            return share
        counts = [get() for get, _ in cls._blas_libraries()]
        return max((c for c in counts if isinstance(c, int)), default=1)

    @classmethod
    def _share(cls) -> int | None:
        if cls._held is None:
            return None
        if cls._held == ADAPTIVE:
            return shared_threads(cls._cores, cls._running)
        return int(cls._held)

    @classmethod
    def _set(cls, share: int | None) -> int:
        """While held, BLAS libraries run on one thread: an execution's `share` is spent by
        `ops.gemm` splitting its products (called under the lock). Returns the share."""
        if share is None:
            return cls.current_threads()
        if cls._count != 1:
            for _, set_ in cls._blas_libraries():
                set_(1)
            cls._count = 1
        return share

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
