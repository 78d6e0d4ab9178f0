"""Resize over height and width: nearest or (bi)linear, with ONNX Resize's coordinate rules.

Sources: ONNX's Operators.md (Resize, opset 13+) and its reference op_resize.py; onnxruntime is
the test oracle. The Caffe layers map here: Interp (DeepLab/PSPNet forks) is linear with
align_corners; the YOLO forks' Upsample is nearest, asymmetric, floor.

Each output coordinate x is mapped to an input coordinate x' (float32 arithmetic, as in
onnxruntime), then:
  nearest: x' is rounded by `nearest_mode` and clamped to [0, in - 1];
  linear:  x' is clamped to [0, in - 1] and the two neighbours are blended.
The interpolation is separable, so it is done as two 1-d passes (H then W).
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, register

MODES = ("nearest", "linear")
TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _sizes(shape, attrs) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output (h, w) and the scale factors the coordinate rules use."""
    h, w = shape[2], shape[3]
    if attrs.get("interp") is not None:
        oh, ow = interp_size(h, attrs["interp"]), interp_size(w, attrs["interp"], width=True)
        return (oh, ow), (oh / h, ow / w)
    if attrs.get("sizes") is not None:
        oh, ow = (int(v) for v in attrs["sizes"])
        return (oh, ow), (oh / h, ow / w)
    if attrs.get("scales") is None:
        raise OpError("resize needs `sizes` (output h, w) or `scales` (h, w factors)")
    sh, sw = (float(v) for v in attrs["scales"])
    if sh <= 0 or sw <= 0:
        raise OpError(f"resize scales must be positive, got {attrs['scales']}")
    # ONNX: output size = floor(input size * scale).
    return (int(np.floor(h * sh)), int(np.floor(w * sw))), (sh, sw)


def interp_size(size: int, rule: dict, width: bool = False) -> int:
    """DeepLab/PSPNet Interp's output size (interp_layer.cpp): shrink, then zoom, by integer
    factors ((n - 1) / shrink + 1, then n + (n - 1) * (zoom - 1)); or the given height/width."""
    if not rule["factors"]:
        return rule["width"] if width else rule["height"]
    size = (size - 1) // rule["shrink"] + 1
    return size + (size - 1) * (rule["zoom"] - 1)


def source_coordinates(out_size: int, in_size: int, scale: float, transform: str) -> np.ndarray:
    """x' for every output index x along one axis (float32), before rounding or clamping."""
    x = np.arange(out_size, dtype=np.float32)
    s = np.float32(scale)
    if transform == "half_pixel":
        return (x + np.float32(0.5)) / s - np.float32(0.5)
    if transform == "pytorch_half_pixel":
        if out_size == 1:
            return np.zeros(1, dtype=np.float32)
        return (x + np.float32(0.5)) / s - np.float32(0.5)
    if transform == "align_corners":
        if out_size == 1:
            return np.zeros(1, dtype=np.float32)
        return x * np.float32(in_size - 1) / np.float32(out_size - 1)
    if transform == "asymmetric":
        return x / s
    raise OpError(f"coordinate_transformation_mode {transform!r}; supported: {TRANSFORMS}")


def _nearest_index(coords: np.ndarray, in_size: int, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        index = np.ceil(coords - np.float32(0.5))
    elif nearest_mode == "round_prefer_ceil":
        index = np.floor(coords + np.float32(0.5))
    elif nearest_mode == "floor":
        index = np.floor(coords)
    elif nearest_mode == "ceil":
        index = np.ceil(coords)
    else:
        raise OpError(f"nearest_mode {nearest_mode!r}; supported: {NEAREST_MODES}")
    return np.clip(index, 0, in_size - 1).astype(np.intp)


def _linear_1d(x: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    in_size = x.shape[axis]
    coords = np.clip(coords, 0, in_size - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    frac = (coords - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    a = np.take(x, low, axis=axis)
    b = np.take(x, high, axis=axis)
    return a + (b - a) * frac


@register
class Resize(Op):
    """attrs: mode (MODES), sizes (out h, w) or scales (h, w) or interp (Caffe Interp's size
    rule: shrink, zoom, height, width, factors), coordinate_transformation_mode
    (TRANSFORMS, default half_pixel), nearest_mode (NEAREST_MODES, default round_prefer_floor).
    Input NCHW; N and C are kept."""
    integers = ('sizes',)

    name = "Resize"

    def output_shapes(self, inputs, attrs):
        if len(inputs[0]) != 4:
            raise OpError(f"resize needs a 4-d NCHW input, got shape {inputs[0]}")
        if attrs.get("mode", "nearest") not in MODES:
            raise OpError(f"resize mode {attrs['mode']!r}; supported: {MODES}")
        if attrs.get("coordinate_transformation_mode", "half_pixel") not in TRANSFORMS:
            raise OpError(f"coordinate_transformation_mode "
                          f"{attrs['coordinate_transformation_mode']!r}; supported: {TRANSFORMS}")
        if attrs.get("nearest_mode", "round_prefer_floor") not in NEAREST_MODES:
            raise OpError(f"nearest_mode {attrs['nearest_mode']!r}; supported: {NEAREST_MODES}")
        (oh, ow), _ = _sizes(inputs[0], attrs)
        if oh < 1 or ow < 1:
            raise OpError(f"resize gives an empty output ({oh} x {ow})")
        return [(*inputs[0][:2], oh, ow)]

    def flops(self, inputs, outputs, attrs):
        return (4 if attrs.get("mode") == "linear" else 1) * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        (oh, ow), (sh, sw) = _sizes(x.shape, attrs)
        transform = attrs.get("coordinate_transformation_mode", "half_pixel")
        ys = source_coordinates(oh, x.shape[2], sh, transform)
        xs = source_coordinates(ow, x.shape[3], sw, transform)
        if attrs.get("mode", "nearest") == "nearest":
            mode = attrs.get("nearest_mode", "round_prefer_floor")
            rows = _nearest_index(ys, x.shape[2], mode)
            cols = _nearest_index(xs, x.shape[3], mode)
            return [np.ascontiguousarray(x[:, :, rows][:, :, :, cols])]
        y = _linear_1d(_linear_1d(x, 2, ys), 3, xs)
        return [np.ascontiguousarray(y, dtype=np.float32)]
