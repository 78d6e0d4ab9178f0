"""A one-line progress display on stderr (only when stderr is a terminal, or when forced)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: float, label: str, unit: str = "MB", scale: float = 1e6,
                 enabled: bool | None = None) -> None:
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.done = 0.0
        self.started = time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def advance(self, amount: float, detail: str = "") -> None:
        self.done += amount
        if not self.enabled:
            return
        fraction = self.done / self.total if self.total else 1.0
        bar = "#" * int(fraction * 30)
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] "
            f"{self.done / self.scale:7.1f}/{self.total / self.scale:.1f}"
            f" {self.unit} {detail[:30]:<30}"
        )
        sys.stderr.flush()

    def close(self) -> float:
        elapsed = time.perf_counter() - self.started
        if self.enabled:
            sys.stderr.write("\n")
        return elapsed
