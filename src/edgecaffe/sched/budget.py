"""The memory budget: a ledger of reserved bytes that the scheduler keeps within capacity."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecaffe.errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20,
          "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30}


def parse_bytes(value: str | int | float) -> int:
    """'512M', '1G', '1.5GiB', '300MB' or a number of bytes -> bytes (binary units, as the
    original's mem_limit: 512M = 512 MiB)."""
    if isinstance(value, int | float):
        if value <= 0:
            raise ConfigError(f"memory size must be positive, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"memory size {value!r}: expected a number with an optional unit "
                         "(K, M, G), e.g. 512M or 1G")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"memory size must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class LedgerEvent:
    """One change of the ledger: positive reserves, negative releases."""

    time: float
    delta_bytes: int
    used_bytes: int
    task_id: int | None
    network_instance: int | None
    reason: str
    #: Admitted over capacity by the progress rule.
    forced: bool = False
    #: Of `used_bytes`, the weights kept after their free (`keep_weights`; evictable).
    cached_bytes: int = 0


class MemoryBudget:
    """Capacity and the bytes reserved against it; every change is recorded in `events`.

    `used_bytes` is what tasks hold, the figure admission counts; `cached_bytes` are weights
    kept after their free (sched/cache.py: evictable at any time, so admission ignores them
    and they are evicted before the two together would go over capacity). The ledger, its
    events and the peak count both.

    Plain object, no locking: the scheduler that owns it is driven under one lock (real engine)
    or from one thread (simulator).
    """

    def __init__(self, capacity: str | int, record: bool = True) -> None:
        self.capacity_bytes = parse_bytes(capacity)
        #: Keep every change in `events` (long simulations keep only the peak).
        self.record = record
        self.used_bytes = 0
        self.cached_bytes = 0
        self.peak_bytes = 0
        self.events: list[LedgerEvent] = []

    @property
    def ledger_bytes(self) -> int:
        """Everything on the ledger: held by tasks plus kept weights."""
        return self.used_bytes + self.cached_bytes

    @property
    def free_bytes(self) -> int:
        """Capacity less what tasks hold (kept weights are evicted on demand: free)."""
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        """Whether reserving `nbytes` keeps the ledger within capacity (nothing always fits,
        even when a forced reservation has put the ledger over)."""
        return nbytes <= 0 or nbytes <= self.free_bytes

    def reserve(self, nbytes: int, time: float, reason: str, task_id: int | None = None,
                instance: int | None = None, forced: bool = False,
                from_cache: int = 0) -> None:
        """Tasks now hold `nbytes` more; `from_cache` of them were kept weights (a hit: they
        change hands, the ledger does not grow by them)."""
        if nbytes <= 0:
            return
        self.used_bytes += nbytes
        self.cached_bytes -= from_cache
        total = self.used_bytes + self.cached_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
        if self.record:
            self.events.append(LedgerEvent(time, nbytes - from_cache, total, task_id,
                                           instance, reason, forced, self.cached_bytes))

    def release(self, nbytes: int, time: float, reason: str, task_id: int | None = None,
                instance: int | None = None, to_cache: bool = False) -> None:
        """Tasks hold `nbytes` less; with `to_cache` those bytes stay as kept weights."""
        if nbytes <= 0:
            return
        if nbytes > self.used_bytes:
            raise RuntimeError(f"ledger underflow: releasing {nbytes} of {self.used_bytes} bytes "
                               f"({reason})")
        self.used_bytes -= nbytes
        if to_cache:
            self.cached_bytes += nbytes
        if self.record:
            self.events.append(LedgerEvent(time, 0 if to_cache else -nbytes,
                                           self.used_bytes + self.cached_bytes, task_id,
                                           instance, reason, False, self.cached_bytes))

    def cache(self, nbytes: int, time: float, reason: str, task_id: int | None = None,
              instance: int | None = None) -> None:
        """Kept weights change by `nbytes` (positive: kept anew, negative: evicted or taken
        by a task whose reservation covers them already)."""
        if not nbytes:
            return
        if -nbytes > self.cached_bytes:
            raise RuntimeError(f"ledger underflow: dropping {-nbytes} of {self.cached_bytes} "
                               f"kept bytes ({reason})")
        self.cached_bytes += nbytes
        total = self.used_bytes + self.cached_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
        if self.record:
            self.events.append(LedgerEvent(time, nbytes, total, task_id, instance, reason,
                                           False, self.cached_bytes))
