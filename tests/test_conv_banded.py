"""The banded im2col convolution against OpenCV DNN, on shapes that need several bands.

Each case is a one-layer Caffe net (Input + Convolution) with He-scaled random weights written
by `write_caffemodel`; OpenCV computes the reference independently. Inputs have magnitudes from
1 to 100, so the tolerances (relative to the output's scale) are exercised at several scales.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import input_layer
from edgecaffe.model.caffe import LayerBlobs, write_caffemodel
from edgecaffe.ops.conv import conv2d

#: Against OpenCV (a different summation order): the suite's usual 1e-4 of the output's scale.
ORACLE_RTOL = 1e-4


def max_rel_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """Max abs difference over the reference's scale (its max abs value, at least 1)."""
    assert ours.shape == reference.shape, f"shape {ours.shape} vs {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(ours.astype(np.float64) - reference).max()) / scale


def opencv_conv(tmp_path: Path, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                stride: int, pad: int, group: int) -> np.ndarray:
    """OpenCV DNN's output for a one-convolution Caffe net with these weights."""
    out_channels, _, kh, _ = weight.shape
    params = (f"num_output: {out_channels} kernel_size: {kh} stride: {stride} pad: {pad} "
              f"group: {group} bias_term: {'true' if bias is not None else 'false'}")
    prototxt = tmp_path / "conv.prototxt"
    prototxt.write_text(
        'name: "conv"\n' + input_layer(x.shape)
        + f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
          f"convolution_param {{ {params} }} }}\n"
    )
    caffemodel = tmp_path / "conv.caffemodel"
    blobs = [weight] if bias is None else [weight, bias]
    write_caffemodel(caffemodel, "conv", [LayerBlobs("conv", "Convolution", blobs)])
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    return np.asarray(net.forward(), dtype=np.float32)


def make_case(rng: np.random.Generator, shape: tuple[int, int, int, int], out_channels: int,
              scale: float, bias: bool, group: int = 1, kernel: int = 3):
    x = rng.uniform(-scale, scale, size=shape).astype(np.float32)
    fan_in = shape[1] // group * kernel * kernel
    weight = (rng.standard_normal((out_channels, shape[1] // group, kernel, kernel))
              * np.sqrt(2.0 / fan_in)).astype(np.float32)  # He initialisation
    b = rng.uniform(-scale, scale, size=out_channels).astype(np.float32) if bias else None
    return x, weight, b


IM2COL_CASES = [
    # (N, C, H, W), O, kernel, stride, pad, group: shapes that need several im2col bands
    pytest.param((1, 64, 61, 61), 8, 3, 1, 1, 1, id="k3-three-bands-partial"),
    pytest.param((2, 32, 129, 129), 4, 3, 2, 1, 1, id="k3-s2-two-bands-batch2"),
    pytest.param((1, 128, 48, 48), 8, 3, 1, 1, 2, id="k3-g2-three-bands"),
    pytest.param((1, 16, 70, 66), 6, 5, 1, 2, 1, id="k5-p2"),
    pytest.param((1, 64, 40, 40), 16, 1, 1, 0, 1, id="pointwise"),
]


@pytest.mark.parametrize("shape, out_channels, kernel, stride, pad, group", IM2COL_CASES)
def test_banded_im2col_matches_opencv(tmp_path, rng, shape, out_channels, kernel, stride, pad,
                                      group):
    x, weight, b = make_case(rng, shape, out_channels, 20.0, True, group, kernel)
    reference = opencv_conv(tmp_path, x, weight, b, stride=stride, pad=pad, group=group)
    ours = conv2d(x, weight, b, (stride, stride), (pad, pad), (1, 1), group)
    assert max_rel_diff(ours, reference) <= ORACLE_RTOL
