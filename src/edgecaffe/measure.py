"""Resident memory of this process: now, and the peak since the last reset (Linux /proc)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size."""
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: the best portable figure is the peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kb * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since `reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kb * 1024


def reset_peak_rss() -> bool:
    """Restart peak tracking from the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def return_freed_memory(threshold_bytes: int = 1 << 20) -> bool:
    """Make freed arrays go back to the system (glibc): allocations of `threshold_bytes` or
    more get their own memory map, unmapped when freed, and the heap is trimmed above that.
    By default glibc raises its threshold (up to 32 MiB on 64-bit) each time a large block
    is freed, after which blocks of that size come from the heap and, freed, stay with the
    process: RSS and the cgroup's usage would then not follow the ledger. Returns False
    where there is no glibc. Process-wide; the engine calls it when it accounts real
    memory (`account_runtime`)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's <malloc.h>
    # One arena for every thread: a worker thread's own arena would keep what it freed below
    # the threshold (measured: the runtime grew by 2-3 MiB that only malloc_trim returned).
    return bool(mallopt(m_mmap_threshold, threshold_bytes)) and \
        bool(mallopt(m_trim_threshold, threshold_bytes)) and bool(mallopt(m_arena_max, 1))


_CGROUP_ROOT = Path("/sys/fs/cgroup")


def own_cgroup_usage_bytes(proc_cgroup: Path = Path("/proc/self/cgroup"),
                           root: Path = _CGROUP_ROOT, pid: int | None = None) -> int | None:
    """What this process's memory cgroup is charged now (v1 `memory.usage_in_bytes`, v2
    `memory.current`), when the process is alone in a cgroup of its own (not the root);
    else None. Memory another cgroup was charged for first (shared libraries already in the
    page cache) is in this process's RSS but not in its cgroup's usage: under a cgroup's
    limit the usage is what counts. (`proc_cgroup`, `root`, `pid`: for tests.)"""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":  # v1
            folder, usage = root / "memory" / path.lstrip("/"), "memory.usage_in_bytes"
            break
        if controllers == "" and (root / "cgroup.controllers").exists():  # v2
            folder, usage = root / path.lstrip("/"), "memory.current"
            break
    else:
        return None
    if path in ("", "/"):
        return None
    try:
        processes = (folder / "cgroup.procs").read_text().split()
        if processes != [str(os.getpid() if pid is None else pid)]:
            return None  # others share it: their memory is in its usage too
        return int((folder / usage).read_text())
    except (OSError, ValueError):
        return None
