"""An independent feasibility check of a schedule of the partial mode's tasks.

Independent of `instance.py` on purpose: it re-derives the task graph from the NetworkInfo
objects and replays the scheduler's layer-granularity ledger (reserve when a task starts,
release a layer's weights and every buffer whose last reader ran when an exec ends, everything
else when the network's last task ends), so a mistake in the solver's memory items cannot hide
itself. Works for any schedule, e.g. one a simulated policy produced.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from edgecaffe.sched.info import NetworkInfo

Key = tuple[int, str, str | None]
#: key -> (start, end, worker), times in units.
Table = Mapping[Key, tuple[float, float, int]]

MAX_MEMORY_MESSAGES = 20


def check_schedule(
    requests: Sequence[tuple[float, Sequence[NetworkInfo]]],
    capacity_bytes: int,
    workers: int,
    durations_units: Mapping[Key, float],
    schedule: Table,
    unit_ms: float = 1.0,
) -> list[str]:
    """Every violation of `schedule` as a readable message; an empty list means feasible.
    Times are in units of `unit_ms`; arrivals (ms) are compared in ms."""
    graph: dict[Key, list[Key]] = {}
    networks: list[tuple[NetworkInfo, Key, float]] = []
    for arrival_ms, infos in requests:
        for info in infos:
            networks.append((info, _derive(len(networks), info, graph), arrival_ms))
    problems = [f"missing task {key}" for key in graph if key not in schedule]
    problems += [f"unknown task {key}" for key in schedule if key not in graph]
    placed = {key: schedule[key] for key in graph if key in schedule}
    for key, (start, end, worker) in placed.items():
        want = durations_units.get(key)
        if want is None:
            problems.append(f"task {key}: no duration given")
        elif not math.isclose(end - start, want, abs_tol=1e-9):
            problems.append(f"task {key}: lasts {end - start} units, its duration is {want}")
        arrival_ms = networks[key[0]][2]
        if start * unit_ms < arrival_ms - 1e-9:
            problems.append(f"task {key} starts at {start} ({start * unit_ms:g} ms), before its "
                            f"request arrives at {arrival_ms:g} ms")
        if not (isinstance(worker, numbers.Integral) and 0 <= worker < workers):
            problems.append(f"task {key}: worker {worker!r} is not one of 0..{workers - 1}")
        for dep in graph[key]:
            if dep in placed and placed[dep][1] > start + 1e-9:
                problems.append(f"task {key} starts at {start} before its dependency {dep} "
                                f"ends at {placed[dep][1]}")
    problems += _worker_overlaps(placed)
    held = [piece for index, (info, last, _) in enumerate(networks)
            for piece in _replay(index, info, last, placed)]
    problems += _memory_over(held, capacity_bytes, unit_ms)
    return problems


def _derive(index: int, info: NetworkInfo, graph: dict[Key, list[Key]]) -> Key:
    """The partial mode's graph of one network: init; a load per weighted layer after init; each
    exec after its load and the previous exec. Returns the last task."""
    init = (index, "init", None)
    graph[init] = []
    previous = init
    for layer in info.layers:
        deps = [previous]
        if layer.weighted:
            graph[(index, "load", layer.name)] = [init]
            deps.append((index, "load", layer.name))
        previous = (index, "exec", layer.name)
        graph[previous] = deps
    return previous


def _worker_overlaps(placed: Table) -> list[str]:
    problems = []
    by_worker: dict[int, list[tuple[float, float, Key]]] = {}
    for key, (start, end, worker) in placed.items():
        if end > start:  # zero-length tasks take no worker time
            by_worker.setdefault(worker, []).append((start, end, key))
    for worker, spans in by_worker.items():
        spans.sort(key=lambda span: (span[0], span[1]))
        busy_until, busy_with = -math.inf, None
        for start, end, key in spans:
            if start < busy_until - 1e-9:
                problems.append(f"worker {worker}: task {key} starts at {start} while "
                                f"{busy_with} runs until {busy_until}")
            if end > busy_until:
                busy_until, busy_with = end, key
    return problems


def _replay(index: int, info: NetworkInfo, last: Key,
            placed: Table) -> list[tuple[int, float, float, str]]:
    """The scheduler's ledger for one network instance: (bytes, from, to, what) per reservation,
    held from the reserving task's start to the releasing task's end (inf: never released)."""
    events = []  # (time, phase, order, key, is_start); phase: ends, starts, zero-length ends
    for order, (key, (start, end, _)) in enumerate(
            (key, span) for key, span in placed.items() if key[0] == index):
        events.append((start, 1, order, key, True))
        events.append((end, 0 if end > start else 2, order, key, False))
    events.sort(key=lambda event: event[:3])
    held: dict[str, list[tuple[int, float, str]]] = {}
    pieces: list[tuple[int, float, float, str]] = []
    readers: dict[str, int] = {}
    for layer in info.layers:
        for owner in layer.reads:
            readers[owner] = readers.get(owner, 0) + 1
    name = f"{info.name}#{index}"

    def hold(slot: str, nbytes: int, now: float, what: str) -> None:
        held.setdefault(slot, []).append((nbytes, now, what))  # a slot held twice adds up

    def release(slot: str, now: float) -> None:
        pieces.extend((nbytes, since, now, what) for nbytes, since, what in held.pop(slot, []))

    for now, _, _, (_, kind, layer_name), is_start in events:
        layer = info.layer(layer_name) if layer_name is not None else None
        if is_start:
            if kind == "init":
                for blob in info.inputs:
                    hold(f"a:{blob}", info.buffer_bytes.get(blob, 0), now, f"{name} input {blob}")
                continue
            if kind == "load":
                hold(f"w:{layer.name}", layer.weight_bytes, now, f"{name} weights of {layer.name}")
            if kind == "exec":  # outputs are reserved by the exec that writes them
                for owner in layer.writes:
                    hold(f"a:{owner}", info.buffer_bytes.get(owner, 0), now,
                         f"{name} buffer {owner}")
            continue
        if kind == "exec":
            release(f"w:{layer.name}", now)
            for owner in layer.reads:
                readers[owner] -= 1
                if readers[owner] == 0 and owner not in info.outputs:
                    release(f"a:{owner}", now)
        if (index, kind, layer_name) == last:
            for slot in list(held):
                release(slot, now)
    pieces += [(nbytes, since, math.inf, what) for slot in held.values()
               for nbytes, since, what in slot]
    return [piece for piece in pieces if piece[0] > 0]


def _memory_over(pieces: list[tuple[int, float, float, str]], capacity: int,
                 unit_ms: float) -> list[str]:
    """Sweep the event times: at time t the ledger holds every piece with from <= t < to, and a
    zero-length piece at its instant (releases at t come before reservations at t)."""
    deltas = []  # (time, phase, bytes): phase 0 releases, 1 reservations, 2 zero-length releases
    for nbytes, since, until, _ in pieces:
        deltas.append((since, 1, nbytes))
        if until < math.inf:
            deltas.append((until, 0 if until > since else 2, -nbytes))
    deltas.sort(key=lambda delta: delta[:2])
    problems: list[str] = []
    total = 0
    for position, (now, phase, nbytes) in enumerate(deltas):
        total += nbytes
        following = deltas[position + 1] if position + 1 < len(deltas) else None
        if phase != 1 or (following and following[:2] == (now, 1)) or total <= capacity:
            continue  # check once per time, after its releases and reservations
        if len(problems) == MAX_MEMORY_MESSAGES:
            problems.append("... more memory violations left out")
            break
        live = sorted((piece for piece in pieces
                       if piece[1] <= now < piece[2] or piece[1] == piece[2] == now),
                      key=lambda piece: -piece[0])
        parts = ", ".join(f"{what} {size}" for size, _, _, what in live[:4])
        problems.append(f"memory over budget at t={now} ({now * unit_ms:g} ms): {total} bytes "
                        f"held > {capacity} ({parts}{', ...' if len(live) > 4 else ''})")
    return problems
