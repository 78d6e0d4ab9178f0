"""Running a pipeline on an `Engine`, stage by stage.

An image's stages without a parent go in as one request each; when a detector's request ends
(a done-callback, outside the engine's lock) its detections are read, and each child stage
whose condition passes submits its crops: one request per chunk of at most `stage.batch`
crops, padded to the next batch size the stage has a package for (`networks.batch_sizes`), so
a network's weights are loaded once per image (per chunk), not once per face. A child whose
condition fails submits nothing: no init, no load, no exec of its network for that image.

A later stage's requests take their image's place in the engine's queue (`order`: the id of
the image's first request to end): an image that has started finishes before the images that
arrived after it start theirs, as a sequential peer would; without it, every face's age and
gender queued behind all detector work submitted meanwhile, and all images finished near the
end.

With an engine whose context speculates ("aware-idle", "oblivious"), a root detector's
children go in with it as the engine's gated networks instead (pipeline/gates.py), so that the
engine can load them while the detector runs.

Everything this module asks of the engine goes through `submit_stage`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.engine import Engine
from edgecaffe.errors import ConfigError
from edgecaffe.model.package import ModelPackage
from edgecaffe.model.preprocess import load_image
from edgecaffe.pipeline.gates import StageGates, gated_children
from edgecaffe.pipeline.networks import batch_sizes, package_key, pipeline_packages
from edgecaffe.pipeline.reading import (
    Region,
    aligned_chips,
    crop_image,
    crop_region,
    read_classes,
    read_detections,
    stage_input,
    stage_labels,
)
from edgecaffe.pipeline.result import Detection, PipelineResult
from edgecaffe.pipeline.spec import Pipeline, Stage


def submit_stage(engine: Engine, network: str, x: np.ndarray, order: int | None = None,
                 gates: StageGates | None = None) -> Future:
    """The one place the runner uses the engine: one request running `network` on the NCHW
    batch `x`, in the queue's place of request `order` (None: its own), with `gates`' child
    networks gated on it (pipeline/gates.py); the future's result is the engine's
    `RequestResult`."""
    if gates is not None:
        return engine.submit(x, [network], gated=gates.gated(network),
                             condition=gates.condition, order=order)
    return engine.submit(x, [network], order=order)


class _Job:
    """One image in flight: its result tree, the requests still open, its future."""

    def __init__(self, pipeline: Pipeline, image: np.ndarray) -> None:
        self.image = image
        height, width = image.shape[:2]
        self.result = PipelineResult(pipeline.name, (width, height))
        self.future: Future = Future()
        #: The engine futures of its stages' requests: cancelled with the job's future.
        self.requests: set[Future] = set()
        self.open = 0
        #: Its place in the engine's queue: its first request's id, once that has ended.
        self.order: int | None = None
        self.lock = threading.Lock()
        self.started = time.perf_counter()


class PipelineRunner:
    """Runs a pipeline's images on one engine: built here from the stages' packages, with
    `engine_options` such as mode, budget, granularity, workers, backend (`keep_weights`
    defaults to True here: every image runs the same detector, whose weights then stay in
    memory while the budget has room, see `Engine`); or an `engine` given, shared with other
    work (the HTTP service's), whose networks include the stages' `packages`
    (`pipeline_packages`' keys) under the names `prefix + key`. A given engine is the
    caller's to close.

        with PipelineRunner(pipeline, budget="512M") as runner:
            result = runner.run("photo.jpg")          # a PipelineResult
            futures = [runner.submit(p) for p in photos]   # several images in flight

    Cancelling an image's future cancels its stages' requests in flight, and no later stage
    is submitted for it. With an engine `context` that speculates ("aware-idle",
    "oblivious"), a root detector's children are the engine's gated networks (pipeline/
    gates.py: one instance per detection, loaded while the detector runs); `gated_requests`
    True / False forces that layout on / off whatever the context (a benchmark's control:
    the same requests without speculation under "aware"). Raises
    PipelineError when a stage's network cannot be found or reshaped; ConfigError for engine
    options given with an engine."""

    def __init__(self, pipeline: Pipeline, engine: Engine | None = None,
                 packages: Mapping[str, ModelPackage] | None = None, prefix: str = "",
                 gated_requests: bool | None = None, **engine_options: Any) -> None:
        if engine is not None and engine_options:
            raise ConfigError(f"PipelineRunner: {', '.join(engine_options)} given with an "
                              "engine: set them on the engine")
        self.pipeline = pipeline
        self.packages = dict(packages) if packages is not None else pipeline_packages(pipeline)
        self.prefix = prefix
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else Engine(
            {prefix + key: package for key, package in self.packages.items()},
            **{"keep_weights": True, **engine_options})
        self._labels = {stage.name: stage_labels(stage, self.packages[stage.name])
                        for stage in pipeline.stages}
        #: Root detectors' children run as the engine's gated networks (see pipeline/gates.py).
        # (An engine-like object without a core, such as the HTTP service's, counts as aware.)
        context = getattr(getattr(self.engine, "core", None), "context", "aware")
        self.speculative = context != "aware" if gated_requests is None else gated_requests
        #: Futures of the images in flight: `close` lets them finish (their gated stages are
        #: submitted from done-callbacks, after the image's first requests).
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()

    # -- public -------------------------------------------------------------------------------

    def submit(self, image: str | Path | np.ndarray) -> Future:
        """Start one image (a path, or an H x W x 3 BGR uint8 array); a future of its
        PipelineResult. A stage's failure fails the future with the engine's RequestError.
        Raises ImageError for an image that cannot be read or used, EngineClosedError after
        `close`."""
        array = load_image(image) if isinstance(image, str | Path) else np.asarray(image)
        job = _Job(self.pipeline, array)
        with self._pending_lock:
            self._pending.add(job.future)
        job.future.add_done_callback(self._forget)
        job.future.add_done_callback(partial(self._cancel_requests, job))
        height, width = array.shape[:2]
        with job.lock:
            job.open += 1  # held until every root is submitted, so the job cannot end early
        try:
            for stage in self.pipeline.roots:
                self._submit(job, stage, [array], [(0.0, 0.0, float(width), float(height))],
                             None)
        except BaseException as error:  # a bad image, a closed engine: the caller hears it
            self._fail(job, error)
            raise
        finally:
            self._close_one(job)
        return job.future

    def run(self, image: str | Path | np.ndarray) -> PipelineResult:
        """`submit(image).result()`."""
        return self.submit(image).result()

    def close(self, cancel: bool = False) -> None:
        """Let every image in flight finish (all its stages), then close the engine if it is
        the runner's own; `cancel=True` cancels what has not finished instead."""
        with self._pending_lock:
            pending = list(self._pending)
        if cancel:
            for future in pending:
                future.cancel()
        else:
            wait(pending)
        if self._owns_engine:
            self.engine.close(cancel=cancel)

    def _forget(self, future: Future) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    @staticmethod
    def _cancel_requests(job: _Job, future: Future) -> None:
        """The image's future was cancelled: so are its stages' requests in flight."""
        if future.cancelled():
            with job.lock:
                requests = list(job.requests)
            for request in requests:
                request.cancel()

    def __enter__(self) -> PipelineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages -------------------------------------------------------------------------------

    def _submit(self, job: _Job, stage: Stage, crops: list[np.ndarray], regions: list[Region],
                parents: list[Detection] | None) -> None:
        """Submit `crops` (images, one per region) to `stage` in chunks of at most its batch."""
        children = gated_children(self.pipeline, stage) if self.speculative else ()
        if children and parents is None:
            self._submit_gated(job, stage, children, crops[0], regions)
            return
        sizes = batch_sizes(stage)
        for start in range(0, len(crops), sizes[-1]):
            if job.future.cancelled():  # nothing more for an image cancelled meanwhile
                return
            chunk = crops[start:start + sizes[-1]]
            batch = next(size for size in sizes if size >= len(chunk))
            key = package_key(stage, batch)
            x = stage_input(chunk, stage, self.packages[key])
            end = start + len(chunk)
            owners = None if parents is None else parents[start:end]
            self._submit_request(job, stage, key, x, regions[start:end], owners)

    def _submit_request(self, job: _Job, stage: Stage, key: str, x: np.ndarray,
                        regions: list[Region], parents: list[Detection] | None,
                        gates: StageGates | None = None) -> None:
        """One request of `stage` (package `key`) on the batch `x`, counted in the image's
        job; `_finished` takes its result."""
        with job.lock:
            job.open += 1
            job.result.ran[stage.name] = job.result.ran.get(stage.name, 0) + 1
        future = submit_stage(self.engine, self.prefix + key, x, job.order, gates)
        with job.lock:
            job.requests.add(future)
        if job.future.cancelled():  # cancelled meanwhile: `_cancel_requests` missed it
            future.cancel()
        future.add_done_callback(partial(self._finished, job, stage, key, regions=regions,
                                         parents=parents, gates=gates))

    def _submit_gated(self, job: _Job, stage: Stage, children: tuple[Stage, ...],
                      image: np.ndarray, regions: list[Region]) -> None:
        """A root detector's request with its `children` gated on it (pipeline/gates.py)."""
        key = package_key(stage, 1)
        labels = self._labels[stage.name]

        def read(outputs: dict[str, np.ndarray]) -> list[Detection]:
            return read_detections(stage, outputs, regions, job.result.image_size, labels)[0]

        def inputs(child: Stage, chosen: list[Detection]) -> list[np.ndarray]:
            package = self.packages[package_key(child, 1)]
            return [stage_input([crop], child, package)
                    for crop in self._crops(job, child, chosen)[0]]

        gates = StageGates(stage, children, self.prefix, read, inputs)
        x = stage_input([image], stage, self.packages[key])
        self._submit_request(job, stage, key, x, regions, None, gates)

    def _gated_outputs(self, job: _Job, gates: StageGates, result: Any) -> None:
        """Attach each gated child's outputs to the detections it ran on."""
        for network, child in gates.by_network.items():
            chosen = gates.chosen.get(child.name, [])
            with job.lock:
                if not chosen:
                    if child.name in gates.failed:
                        job.result.skipped[child.name] = \
                            job.result.skipped.get(child.name, 0) + 1
                    continue
                job.result.ran[child.name] = job.result.ran.get(child.name, 0) + len(chosen)
            labels = self._labels[child.name]
            for number, detection in enumerate(chosen):
                outputs = result[f"{network}[{number}]"]
                detection.children[child.name] = read_classes(child, outputs, 1, labels)[0]

    def _finished(self, job: _Job, stage: Stage, key: str, future: Future, *,
                  regions: list[Region], parents: list[Detection] | None,
                  gates: StageGates | None = None) -> None:
        """A stage's request ended: attach its outputs to the tree, start the children."""
        try:
            if job.future.done():
                return
            result = future.result()
            with job.lock:
                job.result.request_ids.append(result.request_id)
                if job.order is None:
                    job.order = result.request_id
            outputs = result[self.prefix + key]
            labels = self._labels[stage.name]
            if gates is not None and gates.detections is not None:  # the conditions read them
                values: list[Any] = [gates.detections]
            elif stage.output == "detector":
                values = read_detections(stage, outputs, regions, job.result.image_size,
                                         labels)
            else:
                values = read_classes(stage, outputs, len(regions), labels)
            if parents is None:
                job.result.outputs[stage.name] = values[0]
            else:
                for parent, value in zip(parents, values, strict=True):
                    parent.children[stage.name] = value
            if gates is not None:
                self._gated_outputs(job, gates, result)
            if stage.output == "detector":
                done = {child.name for child in gates.by_network.values()} if gates else set()
                for found in values:
                    self._start_children(job, stage, found, done)
        except BaseException as error:  # the job's future carries it
            self._fail(job, error)
        finally:
            self._close_one(job)

    def _start_children(self, job: _Job, stage: Stage, detections: list[Detection],
                        done: set[str] = frozenset()) -> None:
        """Submit the children of `stage` (but those `done`, gated in its own request) whose
        condition the detections pass."""
        for child in self.pipeline.children(stage.name):
            if child.name in done:
                continue
            condition = child.condition
            if condition is not None and not condition.passes(detections):
                with job.lock:
                    job.result.skipped[child.name] = job.result.skipped.get(child.name, 0) + 1
                continue
            chosen = detections if condition is None else condition.matching(detections)
            crops, regions = self._crops(job, child, chosen)
            self._submit(job, child, crops, regions, chosen)

    def _crops(self, job: _Job, child: Stage, chosen: list[Detection]
               ) -> tuple[list[np.ndarray], list[Region]]:
        """The child's input images cut from the job's image around the chosen detections,
        and their regions (x, y, width, height) in the image."""
        crop = child.crop
        rects = [crop_region(d.box, crop) for d in chosen]
        if crop.shape == "aligned":
            package = self.packages[package_key(child, 1)]
            nhwc = child.preprocess.settings(package.meta).get("layout") == "NHWC"
            size = int(package.input_shape[2 if nhwc else 3])  # dlib chips are square
            crops = aligned_chips(job.image, [d.box for d in chosen], size, crop.margin,
                                  str(crop.landmarks))
        else:
            crops = [crop_image(job.image, rect) for rect in rects]
        regions = [(float(x0), float(y0), float(x1 - x0), float(y1 - y0))
                   for x0, y0, x1, y1 in rects]
        return crops, regions

    def _fail(self, job: _Job, error: BaseException) -> None:
        with job.lock:
            if job.future.done():
                return
            job.future.set_exception(error)

    def _close_one(self, job: _Job) -> None:
        with job.lock:
            job.open -= 1
            finished = job.open == 0 and not job.future.done()
            if finished:
                job.result.response_ms = (time.perf_counter() - job.started) * 1e3
                job.future.set_result(job.result)
