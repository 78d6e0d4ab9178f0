"""What `/v1/models` and the live page's `/v1/status` say, as JSON-ready dicts.

The live figures come from the engine's trace (task spans, the ledger's changes, exact times on
the engine's clock) and the service's samples (RSS, queue depth), over a recent window.
"""

from __future__ import annotations

from typing import Any

from edgecaffe.serve.pipelines import stage_json
from edgecaffe.serve.repository import Entry
from edgecaffe.serve.service import Service

#: Seconds of history the live page shows; points of the ledger line at most.
WINDOW_S = 30.0
MAX_LEDGER_POINTS = 600
MAX_TASKS = 800


def model_json(service: Service, entry: Entry) -> dict[str, Any]:
    """One model: name, kind, source, state (building / ready / failed with its error), and
    once built its input shape, preprocessing, labels, outputs and memory figures (bytes)."""
    state = "ready" if entry.ready else ("failed" if entry.error else "building")
    out: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "source": str(entry.path),
                           "state": state}
    if entry.error:
        out["error"] = entry.error
    if entry.build_s is not None:
        out["build_s"] = round(entry.build_s, 3)
    if entry.pipeline is not None:
        return {**out, **_pipeline_json(service, entry)}
    package = entry.package
    if package is None:
        return out
    meta = package.meta
    network = package.network
    out.update(
        network=network.name,
        input_shape=list(package.input_shape),
        preprocess={key: meta[key] for key in ("mean", "scale", "channel_order", "layout")
                    if key in meta},
        labels=[str(label) for label in meta.get("labels", [])],
        outputs=list(network.outputs),
        layers=len(network.layers),
    )
    engine = service.engine
    if engine is not None and entry.name in engine.infos:
        info = engine.infos[entry.name]
        out["memory"] = {
            "weight_bytes": int(info.weight_bytes),
            "largest_layer_bytes": max((layer.weight_bytes for layer in info.layers),
                                       default=0),
            "peak_activation_bytes": int(info.peak_activation_bytes),
            "network_peak_bytes": int(info.peak_bytes),
            "fits_budget": entry.extra.get("fits_budget"),
        }
        out["mean_exec_ms"] = None if info.mean_exec_ms == float("inf") else info.mean_exec_ms
    return out


def _pipeline_json(service: Service, entry: Entry) -> dict[str, Any]:
    """A built pipeline: its name, description, stages (network, input, condition, the
    engine's networks per batch size with their input shapes, labels) and whether every
    stage fits the budget."""
    served = entry.pipeline
    assert served is not None
    out: dict[str, Any] = {"pipeline": served.pipeline.name,
                           "description": served.pipeline.description,
                           "stages": stage_json(entry.name, served)}
    engine = service.engine
    if engine is not None:
        # Each stage's weights once (its packages at other batch sizes hold the same ones).
        names = [next(iter(stage["engine_networks"])) for stage in out["stages"]]
        out["memory"] = {
            "weight_bytes": sum(int(engine.infos[name].weight_bytes) for name in names),
            "fits_budget": entry.extra.get("fits_budget"),
        }
        if "budget_error" in entry.extra:
            out["memory"]["budget_error"] = entry.extra["budget_error"]
    return out


def _ledger_points(events: list, since_s: float, used_now: int) -> list[list[float]]:
    """(time, bytes in use) after each change since `since_s`, thinned to at most
    `MAX_LEDGER_POINTS` (every k-th change; the last one always kept)."""
    recent = [(e.time, e.used_bytes) for e in events if e.time >= since_s]
    step = max(1, len(recent) // MAX_LEDGER_POINTS)
    points = [[round(t, 4), b] for t, b in recent[::step]]
    if recent and recent[-1] != tuple(points[-1]):
        points.append([round(recent[-1][0], 4), recent[-1][1]])
    return points or [[round(since_s, 4), used_now]]


def _tasks(recorded: list, live: list, since_s: float, now_s: float) -> list[list]:
    """[worker, network, kind, start, end, forced, running] of the tasks that ended after
    `since_s` (the trace's records, and those of networks still in flight) and of those running
    now (end: `now_s`, running: true), the latest `MAX_TASKS` in start order."""
    out = {t.task_id: [t.worker, t.network, t.kind, round(t.start_s, 4), round(t.end_s, 4),
                       t.forced, False]
           for t in recorded if t.start_s is not None and t.end_s is not None
           and t.end_s >= since_s and t.worker is not None}
    for task_id, worker, network, kind, start, end, forced in live:
        if task_id not in out and (end is None or end >= since_s):
            out[task_id] = [worker, network, kind, round(start, 4),
                            round(now_s if end is None else end, 4), forced, end is None]
    return sorted(out.values(), key=lambda t: t[3])[-MAX_TASKS:]


def status_json(service: Service) -> dict[str, Any]:
    """The live page's figures: state, budget, ledger, RSS, queue, counts, and over the last
    `WINDOW_S` seconds the tasks (worker, network, kind, start, end, forced, running; a task
    running now ends now), the ledger's changes and the samples (time, RSS, ledger, queue
    depth)."""
    samples = list(service.samples)
    out: dict[str, Any] = {
        "state": service.state,
        "queue": {"depth": service.admission.in_flight, "capacity": service.admission.capacity},
        "rss_bytes": samples[-1][1] if samples else None,
        "ledger_bytes": service.ledger_bytes(),
        "window_s": WINDOW_S,
        "models": list(service.repository.packages),
    }
    engine = service.engine
    if engine is None:
        return out
    live = engine.open_tasks()  # first: a task ending meanwhile is then in the trace
    tasks = engine.trace.tasks[-MAX_TASKS:]  # a slice: a copy taken at once
    now = engine.now()  # after both: no task starts after it
    since = now - WINDOW_S
    out.update(
        models=list(engine.packages),  # pipelines' stages too (PIPELINE/STAGE)
        now_s=round(now, 4),
        mode=engine.mode.name,
        policy=engine.policy.name,
        workers=engine.workers,
        budget_bytes=engine.budget.capacity_bytes,
        tasks=_tasks(tasks, live, since, now),
        ledger=_ledger_points(engine.trace.ledger[-20000:], since, service.ledger_bytes()),
        samples=[[round(t, 4), rss, ledger, depth] for t, rss, ledger, depth in samples
                 if t >= since],
    )
    return out
