"""Kept weights (`keep_weights`): a layer's weights stay in memory after their free, as long
as the budget has room, so that the next load of the same package layer is a hit (no read).

The original (and the paper) load every layer from storage for every request and free it after
its execution; a pipeline that runs the same small detector on every photo then reads the same
2.6 MB again and again while most of a 512 MB budget stands idle. With the option on:

* an execution's end that frees a layer's weights (a per-layer mode; a bulk network's end
  for all of them) *keeps* them instead: their bytes stay on the ledger as `cached_bytes`,
  newest last (least recently used first), one entry per (network, ledger key), e.g.
  ("face", "w:conv1_1") or ("face", "w:*") for a bulk network's whole model. Weights a
  failed network held are freed as before, but those a dropped speculative instance loaded
  (its condition failed; `keep_dropped`, layer granularity) are kept. A second copy of an
  entry already kept is freed;
* a load of a kept entry is a *hit*: the entry's bytes change hands (kept -> held by the
  load's network, `MemoryBudget.reserve(..., from_cache=)`), the task is marked `cached`, the
  engine hands it the arrays it kept (no read) and the simulator gives it no duration;
* kept bytes are invisible to admission (`MemoryBudget.used_bytes` excludes them, so a
  memory manager answers now / later / never exactly as without the option: the schedule
  only changes through shorter loads) and are evicted, least recently used first, whenever
  held plus kept bytes would be over capacity: kept weights never take budget a task needs
  and never cause a forced admission. `clear` evicts them all (the engine at close, the
  simulator at the end of a run), so the ledger returns to 0.

At the network granularity loads reserve nothing (the init's peak figure covers the
weights): a kept entry is then reserved anew on the ledger when its execution ends (only if
it fits, after evicting older ones), and released when a load takes it.

The driver learns of the cache's decisions through a `listener` (the engine's store of the
kept arrays): `kept(instance, key)`, `taken(instance, key)`, `evicted(network, key)`, called
when the ledger changes (under the engine's lock), so that the arrays and the ledger agree.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.graph import NetworkInstance


class CacheListener(Protocol):
    """What a driver does with the arrays when the cache decides (see the module)."""

    def kept(self, instance: NetworkInstance, key: str) -> bool: ...
    def taken(self, instance: NetworkInstance, key: str) -> None: ...
    def evicted(self, network: str, key: str) -> None: ...


class WeightCache:
    """Kept weights on one budget: (network, ledger key) -> bytes, least recently kept first.
    `hits`, `misses` (loads of cachable weights that read them), `evictions` count events."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.listener: CacheListener | Any = None
        self.hits = self.misses = self.evictions = 0

    def __contains__(self, entry: tuple[str, str]) -> bool:
        return entry in self.entries

    def take(self, instance: NetworkInstance, key: str) -> int | None:
        """A load of `key` by `instance` starts: the entry's bytes if kept (a hit; the entry
        leaves the cache and the listener hands over its arrays), else None (a miss)."""
        nbytes = self.entries.pop((instance.name, key), None)
        if nbytes is None:
            self.misses += 1
            return None
        self.hits += 1
        if self.listener is not None:
            self.listener.taken(instance, key)
        return nbytes

    def keep(self, instance: NetworkInstance, key: str, nbytes: int) -> bool:
        """Whether `instance`'s weights under `key` are kept (not if an entry is already kept,
        or the listener has no arrays for it). The caller moves the bytes on the ledger."""
        entry = (instance.name, key)
        if entry in self.entries or nbytes <= 0:
            return False
        if self.listener is not None and not self.listener.kept(instance, key):
            return False
        self.entries[entry] = nbytes
        return True

    def make_room(self, now: float, nbytes: int = 0) -> bool:
        """Evict least recently kept entries until `nbytes` more fit with everything held and
        kept within capacity; returns whether they do."""
        budget = self.budget
        while self.entries and \
                budget.used_bytes + budget.cached_bytes + nbytes > budget.capacity_bytes:
            self._evict_oldest(now)
        return budget.used_bytes + budget.cached_bytes + nbytes <= budget.capacity_bytes

    def clear(self, now: float) -> None:
        """Evict everything (the ledger returns to what tasks hold)."""
        while self.entries:
            self._evict_oldest(now)

    def _evict_oldest(self, now: float) -> None:
        (network, key), nbytes = self.entries.popitem(last=False)
        self.evictions += 1
        budget = self.budget
        budget.cache(-nbytes, now, f"evict {key[2:]} of {network}" if budget.record else "")
        if self.listener is not None:
            self.listener.evicted(network, key)


def keep_dropped(cache: WeightCache, instance: NetworkInstance, now: float) -> None:
    """A speculative instance was dropped (its condition failed, sched/requests.py): the
    weights its loads hold are kept as an execution's would be, so that a speculative load
    that was a hit does not cost the next request its kept copy. Called as the instance ends,
    before the rest of what it holds is freed; layer granularity ("w:" ledger keys)."""
    budget = cache.budget
    held = instance.held
    for key in [k for k in held if k.startswith("w:")]:
        nbytes = held[key]
        if nbytes and cache.keep(instance, key, nbytes):
            del held[key]
            budget.release(nbytes, now, f"keep {key[2:]} of {instance.name} (dropped)"
                           if budget.record else "", None, instance.id, to_cache=True)
