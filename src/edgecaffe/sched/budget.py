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


class MemoryBudget:
    """Capacity and the bytes reserved against it; every change is recorded in `events`.

    Plain object, no locking: the scheduler that owns it is driven under one lock (real engine)
    or from one thread (simulator).
    """

    def __init__(self, capacity: str | int, record: bool = True) -> None:
        self.capacity_bytes = parse_bytes(capacity)
        #: Keep every change in `events` (long simulations keep only the peak).
        self.record = record
        self.used_bytes = 0
        self.peak_bytes = 0
        self.events: list[LedgerEvent] = []

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        """Whether reserving `nbytes` keeps the ledger within capacity (nothing always fits,
        even when a forced reservation has put the ledger over)."""
        return nbytes <= 0 or nbytes <= self.free_bytes

    def reserve(self, nbytes: int, time: float, reason: str, task_id: int | None = None,
                instance: int | None = None, forced: bool = False) -> None:
        if nbytes <= 0:
            return
        self.used_bytes += nbytes
        if self.used_bytes > self.peak_bytes:
            self.peak_bytes = self.used_bytes
        if self.record:
            self.events.append(LedgerEvent(time, nbytes, self.used_bytes, task_id, instance,
                                           reason, forced))

    def release(self, nbytes: int, time: float, reason: str, task_id: int | None = None,
                instance: int | None = None) -> None:
        if nbytes <= 0:
            return
        if nbytes > self.used_bytes:
            raise RuntimeError(f"ledger underflow: releasing {nbytes} of {self.used_bytes} bytes "
                               f"({reason})")
        self.used_bytes -= nbytes
        if self.record:
            self.events.append(LedgerEvent(time, -nbytes, self.used_bytes, task_id, instance,
                                           reason))
