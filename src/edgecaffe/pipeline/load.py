"""Pipelines from YAML: a declared schema (msgspec, strict types, unknown keys refused), then the
structural checks of `spec.check`; every error is one line naming the file and key, as the
experiment configs' (`experiment/schema.py`).

    name: my-faces
    stages:
      - name: face
        network: deploy.prototxt          # zoo name, package folder, prototxt, .onnx
        weights: res10.caffemodel         # a prototxt's caffemodel
        output: detector
        preprocess: {mean: [104, 177, 123], size: [300, 300]}
      - name: gender
        network: gender-v1.onnx
        input: {parent: face, margin: 0.2}
        when: {min_count: 1, min_score: 0.5}
        labels: [female, male]

Relative paths are read from the YAML file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from edgecaffe.pipeline.spec import (
    CHANNEL_ORDERS,
    CROP_SHAPES,
    LAYOUTS,
    Condition,
    Crop,
    Pipeline,
    PipelineError,
    Preprocess,
    Stage,
)
from edgecaffe.yamlfile import read_yaml

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class _Input(msgspec.Struct, forbid_unknown_fields=True):
    parent: Text
    margin: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 0.0
    shape: Literal[CROP_SHAPES] = "square"  # type: ignore[valid-type]
    landmarks: Text | None = None


class _When(msgspec.Struct, forbid_unknown_fields=True):
    min_count: Annotated[int, msgspec.Meta(ge=1)] = 1
    min_score: Score = 0.5
    classes: list[Annotated[int, msgspec.Meta(ge=0)]] | None = None


class _Preprocess(msgspec.Struct, forbid_unknown_fields=True):
    mean: Annotated[list[float], msgspec.Meta(min_length=1, max_length=3)] | None = None
    scale: float | None = None
    channel_order: Literal[CHANNEL_ORDERS] | None = None  # type: ignore[valid-type]
    layout: Literal[LAYOUTS] | None = None  # type: ignore[valid-type]
    size: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=8192)]],
                    msgspec.Meta(min_length=2, max_length=2)] | None = None


class _Stage(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    network: Text
    weights: Text | None = None
    input: Literal["image"] | _Input = "image"
    when: _When | None = None
    output: Literal["detector", "classifier"] = "classifier"
    labels: list[str] | None = None
    values: list[float] | None = None
    threshold: Score = 0.5
    top: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    batch: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    preprocess: _Preprocess | None = None


class _Pipeline(msgspec.Struct, forbid_unknown_fields=True):
    stages: Annotated[list[_Stage], msgspec.Meta(min_length=1, max_length=64)]
    name: Text | None = None
    description: str = ""


def load_pipeline(path: str | Path) -> Pipeline:
    """The pipeline declared in a YAML file. Raises PipelineError naming the file and key."""
    path = Path(path)
    data = read_yaml(path, PipelineError)
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping with 'stages', not "
                            f"{type(data).__name__}")
    return pipeline_from_dict(data, str(path), path.parent)


def pipeline_from_dict(data: dict[str, Any], source: str, folder: Path | None = None
                       ) -> Pipeline:
    """A pipeline from parsed YAML (`source` names it in errors; relative network paths are
    taken from `folder` when a file or folder of that name is there)."""
    try:
        raw = msgspec.convert(data, _Pipeline, str_keys=True)
    except msgspec.ValidationError as failure:
        raise PipelineError(_message(failure, data, source)) from None
    stages = tuple(_stage(s, folder) for s in raw.stages)
    name = raw.name or (Path(source).stem if folder is not None else "pipeline")
    return Pipeline(name, stages, source, raw.description)


def _stage(raw: _Stage, folder: Path | None) -> Stage:
    crop, parent = Crop(), None
    if isinstance(raw.input, _Input):
        landmarks = raw.input.landmarks
        crop = Crop(raw.input.margin, raw.input.shape,
                    None if landmarks is None else _path(landmarks, folder))
        parent = raw.input.parent
    condition = None
    if raw.when is not None:
        condition = Condition(raw.when.min_count, raw.when.min_score,
                              None if raw.when.classes is None else frozenset(raw.when.classes))
    elif parent is not None:
        condition = Condition()
    pre = raw.preprocess or _Preprocess()
    return Stage(
        name=raw.name, network=_path(raw.network, folder),
        weights=None if raw.weights is None else _path(raw.weights, folder),
        parent=parent, crop=crop, condition=condition, output=raw.output,
        labels=None if raw.labels is None else tuple(raw.labels),
        values=None if raw.values is None else tuple(raw.values),
        threshold=raw.threshold, top=raw.top, batch=raw.batch,
        preprocess=Preprocess(
            mean=None if pre.mean is None else tuple(pre.mean), scale=pre.scale,
            channel_order=pre.channel_order, layout=pre.layout,
            size=None if pre.size is None else (pre.size[0], pre.size[1])))


def _path(value: str, folder: Path | None) -> str:
    if folder is None or Path(value).is_absolute():
        return value
    candidate = folder / value
    return str(candidate) if candidate.exists() else value


_AT = re.compile(r" - at `\$(.*)`$")


def _message(failure: msgspec.ValidationError, data: dict[str, Any], source: str) -> str:
    """One line: the file, the key path as written (stages[1].input.margin), the value, and
    what msgspec expected."""
    text = str(failure)
    match = _AT.search(text)
    expected = text[:match.start()] if match else text
    steps = re.findall(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]", match.group(1) if match else "")
    value: Any = data
    label = ""
    for name, index in steps:
        try:
            value = value[int(index)] if index else value[name]
        except (KeyError, IndexError, TypeError):
            value = None
        label += f"[{index}]" if index else ("." if label else "") + name
    where = f"{source}: {label or 'pipeline'}"
    unknown = re.match(r"Object contains unknown field `(.*)`", expected)
    if unknown:
        return f"{where}: unknown key `{unknown.group(1)}`"
    missing = re.match(r"Object missing required field `(.*)`", expected)
    if missing:
        return f"{where}: the key `{missing.group(1)}` is missing"
    choices = {"output": ("detector", "classifier"), "channel_order": CHANNEL_ORDERS,
               "layout": LAYOUTS, "shape": CROP_SHAPES}
    if expected.startswith("Invalid enum value") and steps and steps[-1][0] in choices:
        expected = f"choose from {', '.join(choices[steps[-1][0]])}"
    elif steps and steps[-1][0] == "input" and expected.startswith(("Invalid enum", "Expected")):
        expected = "expected 'image' or a mapping {parent: STAGE, margin: 0.2, shape: square}"
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{where}: {shown} is not allowed; " \
           f"{expected[:1].lower() + expected[1:]}"
