"""A pipeline's result as a tree: the image stages' outputs; each detection carries its
children's outputs. Plain dataclasses of numbers and strings (`to_dict` / `to_json`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Label:
    """One class of a classifier's output and its probability."""

    label: str
    probability: float


@dataclass
class Classification:
    """A classifier's output for one input (the image, or one crop): the `top` classes, the
    full `probabilities`, and the expectation over the stage's class `values` (e.g. an age in
    years) when the stage gives values."""

    top: list[Label]
    probabilities: list[float]
    expected: float | None = None


@dataclass
class Detection:
    """One detection: class id and label, score, box (xmin, ymin, xmax, ymax) in pixels of the
    request's image (clipped to it), and the outputs of the stages gated on it, by stage name
    (a Classification, or a list of Detections for a detector stage)."""

    label: int
    name: str
    score: float
    box: tuple[float, float, float, float]
    children: dict[str, Classification | list[Detection]] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """What one image gave: `outputs` of the image stages by stage name; `skipped` says, per
    gated stage, for how many parent runs its condition failed (no exec; and no load under
    the aware context); `ran` how many requests each stage's network ran (a stage gated in
    its parent's request, pipeline/gates.py: how many instances, one per detection);
    `request_ids` the engine's requests (to read the trace); response time from submit to
    the last stage's end."""

    pipeline: str
    image_size: tuple[int, int]  # (width, height)
    outputs: dict[str, Classification | list[Detection]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    ran: dict[str, int] = field(default_factory=dict)
    request_ids: list[int] = field(default_factory=list)
    response_ms: float = 0.0

    def detections(self, stage: str) -> list[Detection]:
        """Every detection of `stage`, wherever it sits in the tree."""
        found: list[Detection] = []

        def walk(outputs: dict[str, Any]) -> None:
            for name, value in outputs.items():
                if isinstance(value, list):
                    if name == stage:
                        found.extend(value)
                    for detection in value:
                        walk(detection.children)

        walk(self.outputs)
        return found

    def to_dict(self, probabilities: bool = False) -> dict[str, Any]:
        """JSON-ready: tuples become lists; the full probability vectors only if asked."""
        data = asdict(self)
        if not probabilities:
            _drop_probabilities(data)
        return data

    def to_json(self, probabilities: bool = False, **options: Any) -> str:
        return json.dumps(self.to_dict(probabilities), **options)


def _drop_probabilities(value: Any) -> None:
    if isinstance(value, dict):
        value.pop("probabilities", None)
        for item in value.values():
            _drop_probabilities(item)
    elif isinstance(value, list):
        for item in value:
            _drop_probabilities(item)
