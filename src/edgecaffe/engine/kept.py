"""The engine's side of kept weights (sched/cache.py): the arrays the core's cache keeps.

The core decides, under the engine's lock, which freed weights are kept, which load takes them
and which are evicted; `KeptWeights` is its listener and moves the arrays at the same moment,
so that the arrays in memory and the ledger agree: an execution leaves the weights it freed in
its `NetworkRun.spent`, `kept` moves them here, `taken` hands them to a load that is a hit
(it then reads nothing), `evicted` drops them and their file's cached pages. Whatever an
execution freed and the cache did not keep is dropped by `drop_spent` after the task's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgecaffe.model.package import ModelPackage
from edgecaffe.sched import NetworkInstance, Task


def _spent(instance: NetworkInstance | None) -> dict[str, Any] | None:
    """The instance's freed weights (None for a task runner that keeps no `NetworkRun`)."""
    return getattr(getattr(instance, "work", None), "spent", None)


class KeptWeights:
    """(network, ledger key) -> the kept arrays (layer -> arrays for a whole model's "w:*")."""

    def __init__(self, packages: Mapping[str, ModelPackage]) -> None:
        self.packages = packages
        self.arrays: dict[tuple[str, str], Any] = {}

    def kept(self, instance: NetworkInstance, key: str) -> bool:
        """Take the freed arrays; False (not kept) when the execution left none, so that a
        later load is never a hit without arrays to hand over. A task runner without a
        `NetworkRun` (a test's fake kernel) reads nothing anyway: kept as None."""
        spent = _spent(instance)
        if spent is None:
            self.arrays[(instance.name, key)] = None
            return True
        arrays = spent.pop(key[2:], None)
        if arrays is None and instance.dropped:  # a dropped speculative instance's loads
            weights = instance.work.weights
            arrays = (dict(weights) or None) if key == "w:*" else weights.pop(key[2:], None)
            if key == "w:*":
                weights.clear()
        if arrays is None:
            return False
        self.arrays[(instance.name, key)] = arrays
        return True

    def taken(self, instance: NetworkInstance, key: str) -> None:
        arrays = self.arrays.pop((instance.name, key), None)
        weights = getattr(getattr(instance, "work", None), "weights", None)
        if arrays is None or weights is None:
            return
        if key == "w:*":
            weights.update(arrays)
        else:
            weights[key[2:]] = arrays

    def evicted(self, network: str, key: str) -> None:
        arrays = self.arrays.pop((network, key), None)
        layers = list(arrays or ()) if key == "w:*" else [key[2:]]
        del arrays
        self._release(network, layers)

    def take_spent(self, task: Task) -> tuple[str, list[str]] | None:
        """After a task's end (under the lock): what its execution freed and the cache did
        not keep, taken from its instance (drop it with `drop_spent`, outside the lock)."""
        instance = task._instance()
        spent = _spent(instance)
        if not spent:
            return None
        # Only this task's own: another task of the network may have run (outside the lock)
        # and left its arrays for its own end, which the cache has yet to see.
        layers = []
        own = (*task.layers, "*") if task is instance.last else tuple(task.layers)
        for name in own:
            arrays = spent.pop(name, None)
            if arrays is not None:
                layers += list(arrays) if name == "*" else [name]
        return (instance.name, layers) if layers else None

    def drop_spent(self, spent: tuple[str, list[str]] | None) -> None:
        if spent is not None:
            self._release(*spent)

    def _release(self, network: str, layers: list[str]) -> None:
        """Drop the layers' files' cached pages (see `ModelPackage.release`)."""
        package = self.packages.get(network)
        if package is not None:
            for layer in layers:
                package.release(layer)
