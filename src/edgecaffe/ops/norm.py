"""Per-channel affine layers: BatchNorm (inference statistics), Scale and Bias.

BatchNorm's weights are the running mean and variance, already divided by Caffe's scale-factor
blob at import, so the kernel is format-neutral: y = (x - mean) / sqrt(var + eps).
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


def _span(shape, attrs) -> tuple[int, tuple[int, ...]]:
    """First axis and the shape of the axes a Scale/Bias parameter covers."""
    axis = normalize_axis(attrs.get("axis", 1), len(shape))
    num_axes = attrs.get("num_axes", 1)
    if num_axes < -1:
        raise OpError(f"num_axes must be -1 or more, got {num_axes}")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise OpError(f"axis {axis} + num_axes {num_axes} exceed the input's {len(shape)} axes")
    return axis, tuple(shape[axis:end])


def _broadcastable(param: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if param.ndim == 0 or (param.size == 1 and param.ndim <= 1):
        return param.reshape(())
    return param.reshape((1,) * axis + param.shape + (1,) * (ndim - axis - param.ndim))


def _second_input_span(inputs, attrs) -> int:
    axis = normalize_axis(attrs.get("axis", 1), len(inputs[0]))
    other = tuple(inputs[1])
    if other and tuple(inputs[0][axis : axis + len(other)]) != other:
        raise OpError(
            f"second input of shape {other} does not match input {inputs[0]} at axis {axis}"
        )
    return axis


@register
class BatchNorm(Op):
    """attrs: eps, use_global_stats (default true). weights: mean, var (one value per channel,
    axis 1; unused when use_global_stats is false and the batch's own statistics are used)."""

    name = "BatchNorm"
    numbers = ('eps',)
    inplace = True

    def param_shapes(self, inputs, attrs):
        channels = inputs[0][1] if len(inputs[0]) > 1 else 1
        return {"mean": (channels,), "var": (channels,)}

    def flops(self, inputs, outputs, attrs):
        return 2 * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        if not attrs.get("use_global_stats", True):
            return [self._batch_statistics(x, attrs["eps"])]
        mean = _broadcastable(weights["mean"], 1, x.ndim)
        std = np.sqrt(weights["var"] + np.float32(attrs["eps"]))
        y = np.subtract(x, mean, out=x if inplace else None)
        y /= _broadcastable(std, 1, x.ndim)
        return [y]

    @staticmethod
    def _batch_statistics(x: np.ndarray, eps: float) -> np.ndarray:
        """Caffe's use_global_stats: false: mean and biased variance over every axis but 1."""
        axes = (0, *range(2, x.ndim))
        centered = x - x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
        var = np.mean(np.square(centered), axis=axes, keepdims=True, dtype=np.float64)
        return (centered / np.sqrt(var + eps).astype(np.float32)).astype(np.float32)


@register
class Scale(Op):
    """attrs: axis, num_axes, bias (bool). y = x * scale (+ bias); scale is a weight, or the
    second input when the layer has two."""
    integers = ('axis', 'num_axes')

    name = "Scale"
    inplace = True

    def param_shapes(self, inputs, attrs):
        if len(inputs) > 1:
            span = tuple(inputs[1])
            return {"bias": span} if attrs["bias"] else {}
        _, span = _span(inputs[0], attrs)
        return {"scale": span, "bias": span} if attrs["bias"] else {"scale": span}

    def output_shapes(self, inputs, attrs):
        if len(inputs) > 1:
            _second_input_span(inputs, attrs)
        return [tuple(inputs[0])]

    def flops(self, inputs, outputs, attrs):
        return (2 if attrs["bias"] else 1) * int(np.prod(outputs[0]))

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        axis = normalize_axis(attrs.get("axis", 1), x.ndim)
        scale = inputs[1] if len(inputs) > 1 else weights["scale"]
        y = np.multiply(x, _broadcastable(scale, axis, x.ndim), out=x if inplace else None)
        if attrs["bias"]:
            y += _broadcastable(weights["bias"], axis, x.ndim)
        return [y]


@register
class Bias(Op):
    """attrs: axis, num_axes. y = x + bias; bias is a weight, or the second input."""
    integers = ('axis', 'num_axes')

    name = "Bias"
    inplace = True

    def param_shapes(self, inputs, attrs):
        if len(inputs) > 1:
            return {}
        _, span = _span(inputs[0], attrs)
        return {"bias": span}

    def output_shapes(self, inputs, attrs):
        if len(inputs) > 1:
            _second_input_span(inputs, attrs)
        return [tuple(inputs[0])]

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        axis = normalize_axis(attrs.get("axis", 1), x.ndim)
        bias = inputs[1] if len(inputs) > 1 else weights["bias"]
        return [np.add(x, _broadcastable(bias, axis, x.ndim), out=x if inplace else None)]
