"""Pipelines served: each pipeline of the repository runs on the service's one engine (its
stages' packages are networks of that engine, named `PIPELINE/STAGE` and `PIPELINE/STAGE@N`),
and its answer is the pipeline's result tree with the timings of every stage request.

    stages = StageRequests(engine)                      # what the runners submit through
    runner = PipelineRunner(pipeline, engine=stages, packages=packages, prefix="faces/")
    future = runner.submit(image)                       # a PipelineResult
    pipeline_json("image (a.jpg)", future.result(), stages.take(ids), raw=False)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from edgecaffe.serve.results import timings_json

if TYPE_CHECKING:
    from edgecaffe.pipeline import PipelineResult
    from edgecaffe.serve.repository import ServedPipeline


def engine_names(name: str, served: ServedPipeline) -> dict[str, Any]:
    """The engine's networks of a served pipeline: `NAME/KEY` -> package."""
    return {f"{name}/{key}": package for key, package in served.packages.items()}


class StageRequests:
    """The engine as the service's pipeline runners see it: `submit` goes to the one engine,
    and each stage request's status and timings are kept by request id (the latest `keep`)
    until the call that made it answers (`take`)."""

    def __init__(self, engine: Any, keep: int = 4096) -> None:
        self.engine = engine
        self.keep = keep
        self._kept: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, x: Any, networks: Sequence[str], **options: Any) -> Future:
        """`Engine.submit`, remembering the request's timings once it ends."""
        future = self.engine.submit(x, networks, **options)
        future.add_done_callback(self._ended)
        return future

    def _ended(self, future: Future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        result = future.result() if error is None else getattr(error, "result", None)
        if result is None:
            return
        for network in result.networks.values():
            stage = network.network.split("/", 1)[-1]
            entry = {"request_id": result.request_id, "stage": stage.split("@")[0],
                     "network": network.network, "status": network.status,
                     "timings": timings_json(network), "forced": network.forced}
            if network.error:
                entry["error"] = network.error.splitlines()[0]
            with self._lock:
                self._kept[result.request_id] = entry
                while len(self._kept) > self.keep:
                    self._kept.popitem(last=False)

    def take(self, request_ids: Sequence[int]) -> list[dict[str, Any]]:
        """The kept entries of these requests (forgotten here), in the order given."""
        with self._lock:
            found = [self._kept.pop(i, None) for i in request_ids]
        return [entry for entry in found if entry is not None]


def pipeline_json(what: str, result: PipelineResult, requests: list[dict[str, Any]],
                  raw: bool) -> dict[str, Any]:
    """One input's pipeline answer: the result tree as `edgecaffe pipeline run --json` prints
    it (`PipelineResult.to_dict`; with `raw`, every classification's full probabilities too)
    and, per stage request, its status and timings (ms, the engine's clock)."""
    return {"input": what, "status": "completed", **result.to_dict(probabilities=raw),
            "requests": requests}


def stage_json(name: str, served: ServedPipeline) -> list[dict[str, Any]]:
    """A served pipeline's stages for `/v1/models`: network, what it takes and gives, the
    engine's networks it submits to (one per batch size) and their input shapes."""
    from edgecaffe.pipeline.networks import batch_sizes, package_key
    from edgecaffe.pipeline.reading import stage_labels

    stages = []
    for stage in served.pipeline.stages:
        keys = [package_key(stage, batch) for batch in batch_sizes(stage)]
        out: dict[str, Any] = {
            "name": stage.name, "network": stage.network, "output": stage.output,
            "input": "image" if stage.parent is None else {
                "parent": stage.parent, "margin": stage.crop.margin, "shape": stage.crop.shape},
            "engine_networks": {f"{name}/{key}": list(served.packages[key].input_shape)
                                for key in keys},
            "labels": stage_labels(stage, served.packages[keys[0]]),
        }
        condition = stage.condition
        if condition is not None:
            out["when"] = {"min_count": condition.min_count, "min_score": condition.min_score,
                           "classes": None if condition.classes is None
                           else sorted(condition.classes)}
        stages.append(out)
    return stages
