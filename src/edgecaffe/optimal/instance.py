"""The scheduling problem the exact solver optimises: the partial mode's tasks with integer
durations, and every memory reservation as an item held from the start of the task that reserves
it to the end of the task that releases it (the layer-granularity ledger of the scheduler).

Kept apart from the solver so that the problem can be inspected, brute-forced in tests, and
validated (clear errors for instances that are too big or can never fit) without OR-Tools.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from edgecaffe.errors import EdgeCaffeError
from edgecaffe.sched.info import NetworkInfo

#: (network instance index, "init" | "load" | "exec", layer name or None for init).
Key = tuple[int, str, str | None]
#: A task's duration in ms: (network, kind, layer name or None).
DurationsMs = Callable[[NetworkInfo, str, str | None], float]
#: (arrival in ms, the networks that request asks for).
Request = tuple[float, Sequence[NetworkInfo]]


class InstanceError(EdgeCaffeError):
    """An instance that cannot be built: too large, times missing, inconsistent networks."""


@dataclass
class OptTask:
    key: Key
    #: Integer time units.
    duration: int
    deps: list[Key]
    #: The request's arrival in units (rounded up): the task may not start earlier.
    release: int
    network: int


@dataclass
class MemoryItem:
    bytes: int
    #: Held from this task's start...
    allocated_by: Key
    #: ...to this task's end.
    released_by: Key
    label: str = ""


class OptNetwork(NamedTuple):
    name: str
    #: The request's arrival, in units.
    release: int
    #: Its last task: the network's response ends when this task ends.
    last: Key


@dataclass
class Instance:
    tasks: list[OptTask]
    items: list[MemoryItem]
    networks: list[OptNetwork]
    capacity_bytes: int
    workers: int
    unit_ms: float
    requests: list[Request] = field(default_factory=list)

    @property
    def durations(self) -> dict[Key, int]:
        return {task.key: task.duration for task in self.tasks}


def profiled_ms(info: NetworkInfo, kind: str, layer: str | None) -> float:
    """The default durations: the profiled init, load and exec times of the NetworkInfo."""
    if kind == "init":
        return info.init_ms
    value = getattr(info.layer(layer), f"{kind}_ms")
    if value is None:
        raise InstanceError(f"network {info.name!r}: layer {layer!r} has no profiled {kind} time; "
                         "pass durations_ms")
    return value


def to_units(ms: float, unit_ms: float) -> int:
    """A duration in integer units: 0 only for 0 ms, otherwise at least one unit."""
    if not math.isfinite(ms) or ms < 0:
        raise InstanceError(f"duration {ms!r} ms: expected a finite number >= 0")
    return 0 if ms == 0 else max(1, round(ms / unit_ms))


def release_units(arrival_ms: float, unit_ms: float) -> int:
    """An arrival in units, rounded up (so no task starts before the real arrival)."""
    return max(0, math.ceil(round(arrival_ms / unit_ms, 9)))


def count_tasks(requests: Sequence[Request]) -> int:
    return sum(1 + sum(1 + layer.weighted for layer in info.layers)
               for _, networks in requests for info in networks)


def build_instance(
    requests: Sequence[Request],
    capacity_bytes: int,
    workers: int,
    durations_ms: DurationsMs = profiled_ms,
    unit_ms: float = 1.0,
    max_tasks: int = 60,
) -> Instance:
    """The partial mode's task graph of `requests` (one init, a load per weighted layer, an exec
    per layer) with the layer-granularity memory items. Raises ValueError for instances too big
    for the exact solver and, naming the network and layer, for a budget no schedule can meet
    (so the solver only sees feasible instances)."""
    if workers < 1:
        raise InstanceError(f"workers must be >= 1, got {workers}")
    if capacity_bytes <= 0:
        raise InstanceError(f"capacity_bytes must be positive, got {capacity_bytes}")
    if not unit_ms > 0:
        raise InstanceError(f"unit_ms must be positive, got {unit_ms}")
    count = count_tasks(requests)
    if not any(networks for _, networks in requests):
        raise InstanceError("no networks to schedule")
    if count > max_tasks:
        raise InstanceError(f"the instance has {count} tasks, more than max_tasks={max_tasks}: the "
                         "exact solver is meant for small instances (about 3 networks, 40 tasks)")
    instance = Instance([], [], [], int(capacity_bytes), workers, unit_ms, list(requests))
    index = 0
    for arrival_ms, networks in requests:
        release = release_units(arrival_ms, unit_ms)
        for info in networks:
            _add_network(instance, index, info, release, durations_ms)
            index += 1
    _check_fits(instance)
    return instance


def _add_network(instance: Instance, index: int, info: NetworkInfo, release: int,
                 durations_ms: DurationsMs) -> None:
    _validate(info)

    def task(kind: str, layer: str | None, deps: list[Key]) -> Key:
        key = (index, kind, layer)
        duration = to_units(durations_ms(info, kind, layer), instance.unit_ms)
        instance.tasks.append(OptTask(key, duration, deps, release, index))
        return key

    init = task("init", None, [])
    previous = init
    # Owner buffer -> the task that reserves it; the layer that reads it last.
    reserved_by = {blob: init for blob in info.inputs}
    last_reader: dict[str, str] = {}
    weights: list[tuple[str, Key]] = []
    for layer in info.layers:
        load = task("load", layer.name, [init]) if layer.weighted else None
        previous = task("exec", layer.name, [previous] if load is None else [previous, load])
        if load is not None:
            weights.append((layer.name, load))
        for owner in layer.writes:  # reserved by the exec that writes it (as the ledger)
            reserved_by[owner] = previous
        for owner in layer.reads:
            last_reader[owner] = layer.name
    instance.networks.append(OptNetwork(info.name, release, previous))
    for name, load in weights:
        nbytes = info.layer(name).weight_bytes
        if nbytes:
            instance.items.append(MemoryItem(nbytes, load, (index, "exec", name),
                                             f"weights of {name}"))
    for owner, allocated_by in reserved_by.items():
        nbytes = info.buffer_bytes.get(owner, 0)
        reader = last_reader.get(owner)
        released_by = previous if reader is None or owner in info.outputs else \
            (index, "exec", reader)
        if nbytes:
            instance.items.append(MemoryItem(nbytes, allocated_by, released_by,
                                             f"buffer {owner}"))


def _validate(info: NetworkInfo) -> None:
    """Refuse what the scheduler's ledger would mis-account (it reserves the layer's figures but
    releases per buffer), so that the items are exactly what the scheduler holds."""
    names = [layer.name for layer in info.layers]
    if len(set(names)) != len(names):
        raise InstanceError(f"network {info.name!r}: duplicate layer names")
    written = list(info.inputs) + [owner for layer in info.layers for owner in layer.writes]
    if len(set(written)) != len(written):
        raise InstanceError(f"network {info.name!r}: a buffer is written twice")
    inputs = sum(info.buffer_bytes.get(blob, 0) for blob in info.inputs)
    if inputs != info.input_bytes:
        raise InstanceError(f"network {info.name!r}: input_bytes {info.input_bytes} != {inputs}, "
                         "the bytes of its input buffers")
    for layer in info.layers:
        outputs = sum(info.buffer_bytes.get(owner, 0) for owner in layer.writes)
        if outputs != layer.output_bytes:
            raise InstanceError(f"network {info.name!r}: layer {layer.name!r} has output_bytes "
                             f"{layer.output_bytes} but writes buffers of {outputs} bytes")


def _check_fits(instance: Instance) -> None:
    """Every item is held from its reserving task's start to its releasing task's end, so the
    items whose reserving task precedes a task T and whose releasing task follows it are all
    held while T runs: if they exceed the budget no schedule exists; name the culprit. The test
    is exact: the networks run one at a time, each in layer order (load, exec, load, ...), never
    hold more than the largest of these sets, so if they all fit a schedule exists."""
    ancestors: dict[Key, set[Key]] = {}
    for task in instance.tasks:  # in topological order within each network
        ancestors[task.key] = {task.key}.union(*(ancestors[dep] for dep in task.deps))
    for item in instance.items:
        if item.allocated_by not in ancestors[item.released_by]:
            raise AssertionError(f"{item.label}: {item.released_by} does not follow "
                                 f"{item.allocated_by}")
    for task in instance.tasks:
        held = [item for item in instance.items if item.allocated_by in ancestors[task.key]
                and task.key in ancestors[item.released_by]]
        need = sum(item.bytes for item in held)
        if need > instance.capacity_bytes:
            network, kind, layer = task.key
            name = instance.networks[network].name
            what = "init" if layer is None else f"{kind} of layer {layer!r}"
            parts = ", ".join(f"{item.label} {item.bytes}"
                              for item in sorted(held, key=lambda item: -item.bytes)[:4])
            raise InstanceError(
                f"network {name!r} (instance {network}) cannot run within the budget: its "
                f"{what} needs at least {need} bytes held at once ({parts}), more than the "
                f"{instance.capacity_bytes}-byte budget")
