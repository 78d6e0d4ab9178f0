"""Arrivals: which networks a request asks for and when, and the driver that submits them.

Times follow the original's arrival lists: an arrival's `gap_ms` is measured from the previous
submission. Generators are seeded; one seed gives the same sequence to every policy compared
(common random numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgecaffe.errors import ConfigError


@dataclass(frozen=True)
class Arrival:
    index: int
    #: Milliseconds after the previous arrival's submission.
    gap_ms: float
    networks: tuple[str, ...]
    #: Image for this arrival (a path); None means the built-in sample image.
    data: str | None = None
    #: Gated networks, (child, parent) pairs (sched/requests.py), and the number of things the
    #: parents "find" in this arrival's image, drawn in advance (`with_detections`): each gated
    #: network runs on that many inputs (0: its condition fails), in the engine and the
    #: simulator alike.
    gated: tuple[tuple[str, str], ...] = ()
    detections: int | None = None

    def condition(self, x: Any) -> Callable[[str, Any], list[Any]]:
        """The drawn outcome as a condition: every gated network gets `x` (the request's
        input) `detections` times, whatever the parent computed (synthetic weights detect
        nothing real)."""
        count = self.detections or 0
        return lambda child, found: [x] * count


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


class ArrivalSchedule:
    """When each arrival is due, on any clock: `gap_ms` after the previous submission and, in a
    closed loop, not before the previous arrival's request has finished. The real-time driver
    (`drive`) and the simulator follow the same schedule; only their clocks differ.

    `due_s()` is the next arrival's time in seconds (inf: none left, or in a closed loop
    waiting for the previous request); `submitted(now_s)` takes it; `finished()` says that the
    previous request has finished."""

    def __init__(self, arrivals: Sequence[Arrival], closed_loop: bool, start_s: float) -> None:
        self.arrivals = arrivals
        self.closed_loop = closed_loop
        self.index = 0
        self._last_submit_s = start_s
        self._waiting = False

    def due_s(self) -> float:
        if self._waiting or self.index >= len(self.arrivals):
            return float("inf")
        return self._last_submit_s + self.arrivals[self.index].gap_ms / 1e3

    @property
    def waiting(self) -> bool:
        """In a closed loop: the next arrival waits for the previous request to finish."""
        return self._waiting

    def submitted(self, now_s: float) -> Arrival:
        arrival = self.arrivals[self.index]
        self.index += 1
        self._last_submit_s = now_s
        self._waiting = self.closed_loop and self.index < len(self.arrivals)
        return arrival

    def finished(self) -> None:
        self._waiting = False


def drive(
    submit: Callable[[Any, Sequence[str]], Future],
    arrivals: Sequence[Arrival],
    closed_loop: bool,
    load_input: Callable[[str | None], Any],
    on_submit: Callable[[Arrival, Future], None] | None = None,
) -> list[Future]:
    """Submit `arrivals` in real time, as `ArrivalSchedule` says: each `gap_ms` after the
    previous submission, and in a closed loop also not before the previous arrival's request
    has finished (completed, failed or cancelled). An arrival with gated networks is
    submitted with them and its drawn outcome as the condition (`Arrival.condition`)."""
    futures: list[Future] = []
    schedule = ArrivalSchedule(arrivals, closed_loop, time.perf_counter())
    while schedule.index < len(arrivals):
        if schedule.waiting:
            wait([futures[-1]])
            schedule.finished()
        delay = schedule.due_s() - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        arrival = arrivals[schedule.index]
        x = load_input(arrival.data)
        if arrival.gated:
            future = submit(x, arrival.networks, gated=dict(arrival.gated),
                            condition=arrival.condition(x))
        else:
            future = submit(x, arrival.networks)
        schedule.submitted(time.perf_counter())
        futures.append(future)
        if on_submit is not None:
            on_submit(arrival, future)
    return futures


#: The original experiments' network sets (percom batch experiments, §7.3).
SETS: dict[str, tuple[str, ...]] = {
    "small-3": ("GenderNet", "FaceNet", "AgeNet"),
    "mixed-3": ("FaceNet", "AgeNet", "EmotionNet"),
    "large-3": ("ObjectNet", "EmotionNet", "MemNet"),
    "lifelogging": ("EmotionNet", "MemNet", "TinyYolo", "SceneNet", "SoS"),
    "all-networks": ("FaceNet", "ObjectNet", "EmotionNet", "MemNet", "AgeNet", "GenderNet",
                     "TinyYolo", "SceneNet", "SoS"),
}


def close_normal_gaps(count: int, mean_ms: float, sigma_ms: float = 500.0, seed: int = 0,
                      tolerance: float = 0.005) -> list[float]:
    """The original generator's gaps: `count` draws from N(mean, sigma), redrawn until their mean
    is within `tolerance` of `mean_ms` (negative draws clipped to 0); the first gap is 0."""
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        gaps = np.clip(rng.normal(mean_ms, sigma_ms, count), 0.0, None)
        if count < 2 or abs(gaps.mean() - mean_ms) <= tolerance * mean_ms:
            break
    gaps[0] = 0.0
    return [float(g) for g in gaps]


def random_composition(pool: Sequence[str], count: int, mean_gap_ms: float, seed: int = 0,
                       sigma_ms: float = 500.0) -> list[Arrival]:
    """The original's random composition: k networks per arrival with P(k) = 1/2, 1/4, ...
    (the remainder on the largest k), drawn without replacement; normal gaps."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5 ** k for k in range(1, len(pool) + 1)])
    weights[-1] += 1.0 - weights.sum()
    arrivals = []
    gaps = close_normal_gaps(count, mean_gap_ms, sigma_ms, seed)
    for index, gap in enumerate(gaps):
        k = int(rng.choice(np.arange(1, len(pool) + 1), p=weights))
        networks = tuple(str(n) for n in rng.choice(list(pool), size=k, replace=False))
        arrivals.append(Arrival(index, gap, networks))
    return arrivals


def all_random(pool: Sequence[str], count: int, per_arrival: int, mean_gap_ms: float,
               seed: int = 0, sigma_ms: float = 500.0) -> list[Arrival]:
    """The original's all-random arrivals: `per_arrival` networks drawn uniformly with
    replacement; normal gaps."""
    rng = np.random.default_rng(seed)
    gaps = close_normal_gaps(count, mean_gap_ms, sigma_ms, seed)
    return [Arrival(index, gap, tuple(str(n) for n in rng.choice(list(pool), per_arrival)))
            for index, gap in enumerate(gaps)]


def draw_detections(count: int, share: float, distribution: int | Mapping[int, float],
                    seed: int = 0) -> list[int]:
    """For `count` requests, how many things (faces) each image holds: none with probability
    1 - `share`; else k >= 1 drawn from `distribution` (a fixed k, or {k: weight}).

    Common random numbers: one uniform draw per request decides whether it has any, against
    `share`, so with one seed the requests with faces at share 0.25 are among those at 0.5;
    the counts come from a second stream, the same for every share. Raises ConfigError (a
    ValueError) for a share outside [0, 1], counts below 1 or weights all 0."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"context share must be within [0, 1], got {share}")
    weights = {distribution: 1.0} if isinstance(distribution, int) else dict(distribution)
    if not weights or any(not isinstance(k, int) or isinstance(k, bool) or k < 1
                          for k in weights) or any(w < 0 for w in weights.values()) \
            or sum(weights.values()) <= 0:
        raise ConfigError(f"detections: counts must be whole numbers >= 1 with weights >= 0 "
                         f"(not all 0), got {distribution!r}")
    rng = np.random.default_rng([seed, 0xFACE])
    found = rng.random(count) < share
    ks = sorted(weights)
    p = np.array([weights[k] for k in ks], dtype=float)
    counts = np.random.default_rng([seed, 0xC0DE]).choice(ks, size=count, p=p / p.sum())
    return [int(k) if f else 0 for f, k in zip(found, counts, strict=True)]


def with_detections(arrivals: Sequence[Arrival], gated: Mapping[str, str], share: float,
                    distribution: int | Mapping[int, float] = 1, seed: int = 0
                    ) -> list[Arrival]:
    """`arrivals` with gated networks ({child: parent}) and a drawn detection count each
    (`draw_detections`); the gated networks leave each arrival's own networks."""
    counts = draw_detections(len(arrivals), share, distribution, seed)
    pairs = tuple(gated.items())
    return [replace(a, networks=tuple(n for n in a.networks if n not in gated), gated=pairs,
                    detections=k) for a, k in zip(arrivals, counts, strict=True)]
