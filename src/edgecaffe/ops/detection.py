"""DetectionOutput: SSD's box decoding, per-class non-maximum suppression and top-k selection.

Source: the SSD fork of Caffe (weiliu89/caffe, branch ssd): detection_output_layer.cpp and
util/bbox_util.cpp (DecodeBBox, ApplyNMSFast, JaccardOverlap). OpenCV DNN's implementation, which
runs the res10 face detector, is the test oracle.

Inputs: loc (N, priors * loc_classes * 4), conf (N, priors * classes; already softmax'd by the
net), priors (1, 2, priors * 4; PriorBox's boxes and variances). Output (1, 1, kept, 7): one row
per detection, [image, label, score, xmin, ymin, xmax, ymax], for each image in label order, in
descending score within a label. With no detection at all, N rows [image, -1, ..., -1].
The number of rows depends on the data: `output_shapes` gives the most there can be.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register

CODE_TYPES = ("corner", "center_size", "corner_size")


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: str,
                 variance_encoded_in_target: bool) -> np.ndarray:
    """Predicted offsets (P, 4) + prior boxes (P, 4) -> boxes (P, 4), Caffe's DecodeBBox."""
    var = np.ones_like(variances) if variance_encoded_in_target else variances
    if code_type == "corner":
        return priors + var * loc
    width = priors[:, 2] - priors[:, 0]
    height = priors[:, 3] - priors[:, 1]
    if np.any(width <= 0) or np.any(height <= 0):
        raise OpError("DetectionOutput: a prior box has zero or negative size")
    if code_type == "corner_size":
        scale = np.stack([width, height, width, height], axis=1)
        return priors + var * loc * scale
    cx = (priors[:, 0] + priors[:, 2]) / np.float32(2)
    cy = (priors[:, 1] + priors[:, 3]) / np.float32(2)
    center_x = var[:, 0] * loc[:, 0] * width + cx
    center_y = var[:, 1] * loc[:, 1] * height + cy
    half_w = np.exp(var[:, 2] * loc[:, 2]) * width / np.float32(2)
    half_h = np.exp(var[:, 3] * loc[:, 3]) * height / np.float32(2)
    return np.stack([center_x - half_w, center_y - half_h, center_x + half_w,
                     center_y + half_h], axis=1).astype(np.float32)


def _areas(boxes: np.ndarray) -> np.ndarray:
    """Caffe's BBoxSize (normalized): 0 for an inverted box."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.where((w < 0) | (h < 0), np.float32(0), w * h)


def overlaps(boxes: np.ndarray) -> np.ndarray:
    """Caffe's JaccardOverlap (normalized) of every pair of boxes (K, 4) -> (K, K), float32:
    0 unless the boxes intersect with positive width and height."""
    x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    iw, ih = x1 - x0, y1 - y0
    inter = iw * ih
    areas = _areas(boxes)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (areas[:, None] + areas[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, np.float32(0)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
        eta: float, top_k: int) -> list[int]:
    """Caffe's ApplyNMSFast: indices kept, in descending score order.

    Candidates: score > threshold, stably sorted by score, the first top_k (-1: all). A candidate
    is kept when its overlap with every kept box is <= the (adaptive, with eta < 1) threshold.
    The overlaps of all candidates are computed at once, and each candidate's largest overlap
    with a kept box is kept up to date as boxes are kept (the overlaps are symmetric), so the
    greedy pass is a loop of scalar comparisons.
    """
    candidates = np.flatnonzero(scores > score_threshold)
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        candidates = candidates[:top_k]
    iou = overlaps(boxes[candidates])
    kept: list[int] = []
    largest = np.zeros(len(candidates), np.float32)  # each candidate's overlap with a kept box
    threshold = nms_threshold
    for position in range(len(candidates)):
        if kept and largest[position] > threshold:
            continue
        kept.append(position)
        np.maximum(largest, iou[position], out=largest)
        if eta < 1 and threshold > 0.5:
            threshold *= eta
    return [int(candidates[p]) for p in kept]


def _check(inputs, attrs) -> tuple[int, int, int]:
    """(images, priors, location classes), after Caffe's Reshape checks."""
    if len(inputs) != 3:
        raise OpError(f"DetectionOutput needs three inputs (loc, conf, priors), got {len(inputs)}")
    if attrs["code_type"] not in CODE_TYPES:
        raise OpError(f"DetectionOutput code_type {attrs['code_type']!r}; known: {CODE_TYPES}")
    loc, conf, priors = (tuple(s) for s in inputs)
    if len(priors) != 3 or priors[:2] != (1, 2) or priors[2] % 4:
        raise OpError(f"DetectionOutput priors must be (1, 2, 4 * priors), got {priors}")
    n, num_priors = loc[0], priors[2] // 4
    classes = attrs["num_classes"]
    loc_classes = 1 if attrs["share_location"] else classes
    if conf[0] != n or int(np.prod(loc[1:])) != num_priors * loc_classes * 4 \
            or int(np.prod(conf[1:])) != num_priors * classes:
        raise OpError(f"DetectionOutput inputs disagree: loc {loc}, conf {conf} for {num_priors} "
                      f"priors and {classes} classes")
    return n, num_priors, loc_classes


@register
class DetectionOutput(Op):
    """attrs: num_classes, share_location, background_label_id, code_type (CODE_TYPES),
    variance_encoded_in_target, nms_threshold, top_k (-1: all), eta, keep_top_k (-1: all),
    confidence_threshold (None: keep every score)."""
    integers = ('background_label_id', 'keep_top_k', 'num_classes', 'top_k')

    name = "DetectionOutput"
    dynamic_shape = True

    def output_shapes(self, inputs, attrs):
        n, num_priors, _ = _check(inputs, attrs)
        per_class = num_priors if attrs["top_k"] < 0 else min(attrs["top_k"], num_priors)
        classes = attrs["num_classes"] - (1 if 0 <= attrs["background_label_id"]
                                          < attrs["num_classes"] else 0)
        most = classes * per_class
        if attrs["keep_top_k"] > -1:
            most = min(most, attrs["keep_top_k"])
        return [(1, 1, max(n, n * most), 7)]

    def flops(self, inputs, outputs, attrs):
        return 20 * int(np.prod(inputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        n, num_priors, loc_classes = _check([a.shape for a in inputs], attrs)
        classes = attrs["num_classes"]
        loc = inputs[0].reshape(n, num_priors, loc_classes, 4)
        conf = inputs[1].reshape(n, num_priors, classes)
        prior_boxes = inputs[2][0, 0].reshape(num_priors, 4)
        variances = inputs[2][0, 1].reshape(num_priors, 4)
        threshold = attrs["confidence_threshold"]
        threshold = -np.finfo(np.float32).max if threshold is None else threshold
        rows = []
        for i in range(n):
            decoded = [decode_boxes(loc[i, :, c], prior_boxes, variances, attrs["code_type"],
                                    attrs["variance_encoded_in_target"])
                       for c in range(loc_classes)]
            found = []  # (label, score, prior index, box)
            for c in range(classes):
                if c == attrs["background_label_id"]:
                    continue
                boxes = decoded[0 if attrs["share_location"] else c]
                scores = conf[i, :, c]
                for index in nms(boxes, scores, threshold, attrs["nms_threshold"],
                                 attrs["eta"], attrs["top_k"]):
                    found.append((c, scores[index], index, boxes[index]))
            if -1 < attrs["keep_top_k"] < len(found):
                # The best keep_top_k over all labels, then back in label order (Caffe's map).
                found = sorted(found, key=lambda f: -f[1])[: attrs["keep_top_k"]]
                found.sort(key=lambda f: f[0])
            rows.extend([i, c, score, *box] for c, score, _, box in found)
        if not rows:
            return [np.array([[i] + [-1] * 6 for i in range(n)],
                             dtype=np.float32).reshape(1, 1, n, 7)]
        return [np.array(rows, dtype=np.float32).reshape(1, 1, len(rows), 7)]
