"""Arrivals: which networks a request asks for and when, and the driver that submits them.

Times follow the original's arrival lists: an arrival's `gap_ms` is measured from the previous
submission. Generators are seeded; one seed gives the same sequence to every policy compared
(common random numbers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Arrival:
    index: int
    #: Milliseconds after the previous arrival's submission.
    gap_ms: float
    networks: tuple[str, ...]
    #: Image for this arrival (a path); None means the built-in sample image.
    data: str | None = None


def batches(networks: Sequence[str], count: int) -> list[Arrival]:
    """`count` arrivals of all `networks`, each submitted when the previous one has finished
    (drive them with `closed_loop=True`)."""
    return [Arrival(i, 0.0, tuple(networks)) for i in range(count)]


def poisson(
    networks: Sequence[str], count: int, mean_gap_ms: float, seed: int = 0
) -> list[Arrival]:
    """A Poisson process: exponential gaps with mean `mean_gap_ms`; the first arrives at once."""
    if mean_gap_ms <= 0:
        raise ValueError(f"mean inter-arrival time must be positive, got {mean_gap_ms} ms")
    gaps = np.random.default_rng(seed).exponential(mean_gap_ms, count)
    gaps[0] = 0.0
    return [Arrival(i, float(gap), tuple(networks)) for i, gap in enumerate(gaps)]


def drive(
    submit: Callable[[Any, Sequence[str]], Future],
    arrivals: Sequence[Arrival],
    closed_loop: bool,
    load_input: Callable[[str | None], Any],
    stop: threading.Event | None = None,
    on_submit: Callable[[Arrival, Future], None] | None = None,
) -> list[Future]:
    """Submit `arrivals` in real time: each `gap_ms` after the previous submission, and in a
    closed loop also not before the previous arrival's request has finished."""
    futures: list[Future] = []
    previous = time.perf_counter()
    for arrival in arrivals:
        if stop is not None and stop.is_set():
            break
        if closed_loop and futures:
            wait([futures[-1]])  # completed, failed or cancelled: the loop goes on
        delay = previous + arrival.gap_ms / 1e3 - time.perf_counter()
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
        future = submit(load_input(arrival.data), arrival.networks)
        previous = time.perf_counter()
        futures.append(future)
        if on_submit is not None:
            on_submit(arrival, future)
    return futures
