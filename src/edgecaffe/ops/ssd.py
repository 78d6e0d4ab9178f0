"""The SSD family's feature layers: Normalize (L2 normalization with a learned scale) and
PriorBox (default boxes). Source: the SSD fork of Caffe (weiliu89/caffe, branch ssd):
normalize_layer.cpp and prior_box_layer.cpp; OpenCV DNN implements both for the res10 face
detector and is the test oracle.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register


@register
class Normalize(Op):
    """attrs: across_spatial (bool), channel_shared (bool), eps. weights: scale ((1,) when
    channel_shared, else one per channel).

    across_spatial: x / sqrt(sum over C, H, W of x^2 + eps) per example; otherwise
    x / sqrt(sum over C of x^2 + eps) per pixel. The result is multiplied by the scale.
    """

    name = "Normalize"

    def param_shapes(self, inputs, attrs):
        if len(inputs[0]) < 2:
            raise OpError(f"Normalize needs an input with a channel axis, got {inputs[0]}")
        return {"scale": (1,) if attrs["channel_shared"] else (inputs[0][1],)}

    def flops(self, inputs, outputs, attrs):
        return 4 * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        n = x.shape[0]
        squares = np.square(x, dtype=np.float64)
        if attrs["across_spatial"]:
            norm = np.sqrt(squares.reshape(n, -1).sum(axis=1) + attrs["eps"])
            norm = norm.reshape((n,) + (1,) * (x.ndim - 1))
        else:
            norm = np.sqrt(squares.sum(axis=1, keepdims=True) + attrs["eps"])
        y = (x / norm).astype(np.float32)
        scale = weights["scale"].reshape(-1)
        if attrs["channel_shared"]:
            y *= scale[0]
        else:
            y *= scale.reshape((1, -1) + (1,) * (x.ndim - 2))
        return [y]


def prior_aspect_ratios(aspect_ratios, flip: bool) -> list[float]:
    """1, then each new ratio (and its inverse when `flip`), duplicates (within 1e-6) dropped."""
    ratios = [1.0]
    for ratio in aspect_ratios:
        if any(abs(ratio - known) < 1e-6 for known in ratios):
            continue
        ratios.append(float(ratio))
        if flip:
            ratios.append(1.0 / ratio)
    return ratios


def _check_prior_attrs(attrs) -> int:
    """Number of priors per location, after Caffe's LayerSetUp checks."""
    min_sizes, max_sizes = attrs["min_sizes"], attrs["max_sizes"]
    if not min_sizes or min(min_sizes) <= 0:
        raise OpError(f"PriorBox needs positive min_size values, got {list(min_sizes)}")
    if max_sizes and (len(max_sizes) != len(min_sizes)
                      or any(b <= a for a, b in zip(min_sizes, max_sizes, strict=True))):
        raise OpError(f"PriorBox max_size {list(max_sizes)} must pair with min_size "
                      f"{list(min_sizes)}, each larger")
    if len(attrs["variances"]) not in (0, 1, 4) or any(v <= 0 for v in attrs["variances"]):
        raise OpError(f"PriorBox needs 1 or 4 positive variances, got {list(attrs['variances'])}")
    ratios = prior_aspect_ratios(attrs["aspect_ratios"], attrs["flip"])
    return len(ratios) * len(min_sizes) + len(max_sizes)


@register
class PriorBox(Op):
    """attrs: min_sizes, max_sizes, aspect_ratios, flip, clip, variances (1 or 4; none = 0.1),
    img_h, img_w (0: the second input's size), step_h, step_w (0: image / feature size),
    offset. Inputs: a feature map (N, C, H, W) and the image blob (N, C, img H, img W).

    Output (1, 2, H * W * priors * 4): channel 0 the boxes (xmin, ymin, xmax, ymax, normalized
    by the image size), for each location row-major, for each min size: the min box, the
    sqrt(min * max) box, then one box per aspect ratio other than 1; channel 1 the variances.
    """

    name = "PriorBox"

    def output_shapes(self, inputs, attrs):
        if len(inputs) != 2 or len(inputs[0]) != 4 or len(inputs[1]) != 4:
            raise OpError(f"PriorBox needs two 4-d inputs (feature map, image), got {inputs}")
        priors = _check_prior_attrs(attrs)
        return [(1, 2, inputs[0][2] * inputs[0][3] * priors * 4)]

    def flops(self, inputs, outputs, attrs):
        return int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        (_, _, height, width), image = inputs[0].shape, inputs[1].shape
        img_h, img_w = (attrs["img_h"], attrs["img_w"]) if attrs["img_h"] and attrs["img_w"] \
            else (image[2], image[3])
        if attrs["step_h"] and attrs["step_w"]:
            step_h, step_w = np.float32(attrs["step_h"]), np.float32(attrs["step_w"])
        else:
            step_h, step_w = np.float32(img_h / height), np.float32(img_w / width)
        # Caffe keeps the sizes in ints (`int min_size_ = min_sizes_[s]`) and the box sizes in
        # floats; centres are floats, the final division is in double.
        sizes: list[tuple[np.float32, np.float32]] = []
        ratios = prior_aspect_ratios(attrs["aspect_ratios"], attrs["flip"])
        for index, min_size in enumerate(attrs["min_sizes"]):
            low = int(min_size)
            sizes.append((np.float32(low), np.float32(low)))
            if attrs["max_sizes"]:
                side = np.float32(np.sqrt(low * int(attrs["max_sizes"][index])))
                sizes.append((side, side))
            for ratio in ratios:
                if abs(ratio - 1.0) < 1e-6:
                    continue
                root = np.sqrt(np.float32(ratio))
                sizes.append((np.float32(low * root), np.float32(low / root)))
        box_w = np.array([s[0] for s in sizes], dtype=np.float64) / 2.0
        box_h = np.array([s[1] for s in sizes], dtype=np.float64) / 2.0
        offset = np.float32(attrs["offset"])
        cx = ((np.arange(width, dtype=np.float32) + offset) * step_w).astype(np.float64)
        cy = ((np.arange(height, dtype=np.float32) + offset) * step_h).astype(np.float64)
        cy, cx = (a[:, :, None] for a in np.meshgrid(cy, cx, indexing="ij"))
        boxes = np.stack([(cx - box_w) / img_w, (cy - box_h) / img_h,
                          (cx + box_w) / img_w, (cy + box_h) / img_h], axis=-1)
        boxes = boxes.astype(np.float32).reshape(-1)
        if attrs["clip"]:
            np.clip(boxes, 0.0, 1.0, out=boxes)
        variances = list(attrs["variances"]) or [0.1]
        var = np.resize(np.array(variances if len(variances) == 4 else variances * 4,
                                 dtype=np.float32), boxes.size)
        return [np.stack([boxes, var]).reshape(1, 2, -1)]
