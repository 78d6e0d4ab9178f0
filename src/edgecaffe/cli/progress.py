"""A one-line progress display on stderr (only when stderr is a terminal, or when forced)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: float, label: str, unit: str = "MB", scale: float = 1e6,
                 enabled: bool | None = None, detail_width: int = 30) -> None:
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.detail_width = detail_width
        self.done = 0.0
        self.started = time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def advance(self, amount: float, detail: str = "") -> None:
        self.done += amount
        if not self.enabled:
            return
        done = f"{self.done / self.scale:7.1f}"
        if self.total:
            bar = "#" * int(self.done / self.total * 30)
            line = f"{self.label} [{bar:<30}] {done}/{self.total / self.scale:.1f} {self.unit}"
        else:  # total unknown: show what is done so far
            line = f"{self.label} {done} {self.unit}"
        width = self.detail_width
        sys.stderr.write(f"\r{line} {detail[:width]:<{width}}")
        sys.stderr.flush()

    def close(self) -> float:
        elapsed = time.perf_counter() - self.started
        if self.enabled:
            sys.stderr.write("\n")
        return elapsed
