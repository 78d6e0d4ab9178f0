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
from edgecaffe.ops import conv
from edgecaffe.ops.conv import conv2d

#: Against OpenCV (a different summation order): the suite's usual 1e-4 of the output's scale.
ORACLE_RTOL = 1e-4


def max_rel_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """Max abs difference over the reference's scale (its max abs value, at least 1)."""
    assert ours.shape == reference.shape, f"shape {ours.shape} vs {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(ours.astype(np.float64) - reference).max()) / scale


def opencv_conv(tmp_path: Path, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                stride: int, pad: int, group: int, dilation: int = 1) -> np.ndarray:
    """OpenCV DNN's output for a one-convolution Caffe net with these weights."""
    out_channels, _, kh, _ = weight.shape
    params = (f"num_output: {out_channels} kernel_size: {kh} stride: {stride} pad: {pad} "
              f"group: {group} dilation: {dilation} "
              f"bias_term: {'true' if bias is not None else 'false'}")
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


def float64_conv(x, weight, bias, stride, pad, dilation, group) -> np.ndarray:
    """A direct convolution in float64, tap by tap (no im2col, no banding): the reference the
    kernel must match to 1e-5 relative."""
    n, _, h, w = x.shape
    out_channels, per_group, kh, kw = weight.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, out_channels, oh, ow))
    outs_per_group = out_channels // group
    for g in range(group):
        wg = weight[g * outs_per_group:(g + 1) * outs_per_group].astype(np.float64)
        xg = xp[:, g * per_group:(g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                window = xg[:, :, i * dilation: i * dilation + stride * (oh - 1) + 1: stride,
                            j * dilation: j * dilation + stride * (ow - 1) + 1: stride]
                out[:, g * outs_per_group:(g + 1) * outs_per_group] += np.einsum(
                    "oc,nchw->nohw", wg[:, :, i, j], window)
    if bias is not None:
        out += bias[:, None, None]
    return out


#: Against the float64 reference: the issue's bound for kernel changes.
EXACT_RTOL = 1e-5

IM2COL_CASES = [
    # (N, C, H, W), O, kernel, stride, pad, group: shapes that need several im2col bands
    pytest.param((1, 64, 61, 61), 8, 3, 1, 1, 1, id="k3-three-bands-partial"),
    pytest.param((2, 32, 129, 129), 4, 3, 2, 1, 1, id="k3-s2-two-bands-batch2"),
    pytest.param((1, 128, 48, 48), 8, 3, 1, 1, 2, id="k3-g2-three-bands"),
    pytest.param((1, 16, 70, 66), 6, 5, 1, 2, 1, id="k5-p2"),
    pytest.param((1, 64, 40, 40), 16, 1, 1, 0, 1, id="pointwise"),
]


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few hundred floats, so that small shapes need several (uneven) bands."""
    monkeypatch.setattr(conv, "_BAND_FLOATS", 4096)
    monkeypatch.setattr(conv, "_MIN_BAND_PIXELS", 64)
    monkeypatch.setattr(conv, "_MAX_BAND_FLOATS", 8192)


@pytest.mark.parametrize("shape, out_channels, kernel, stride, pad, group", IM2COL_CASES)
def test_banded_im2col_matches_opencv(tmp_path, rng, small_bands, shape, out_channels, kernel,
                                      stride, pad, group):
    x, weight, b = make_case(rng, shape, out_channels, 20.0, True, group, kernel)
    oh = (shape[2] + 2 * pad - kernel) // stride + 1
    assert kernel == 1 or conv.band_rows(oh, oh, shape[1] * kernel * kernel * oh) < oh
    reference = opencv_conv(tmp_path, x, weight, b, stride=stride, pad=pad, group=group)
    ours = conv2d(x, weight, b, (stride, stride), (pad, pad), (1, 1), group)
    assert max_rel_diff(ours, reference) <= ORACLE_RTOL
    assert max_rel_diff(ours, float64_conv(x, weight, b, stride, pad, 1, group)) <= EXACT_RTOL


SHAPE_CASES = [
    # (N, C, H, W), O, kernel, stride, pad, dilation, group
    pytest.param((1, 16, 20, 20), 8, 1, 1, 0, 1, 1, id="1x1"),
    pytest.param((2, 16, 21, 21), 8, 1, 2, 0, 1, 1, id="1x1-stride2-batch2"),
    pytest.param((1, 8, 20, 20), 8, 1, 1, 1, 1, 1, id="1x1-padded"),
    pytest.param((1, 3, 227, 227), 16, 11, 4, 0, 1, 1, id="11x11-stride4"),
    pytest.param((1, 3, 99, 99), 8, 7, 2, 3, 1, 1, id="7x7-stride2-pad3"),
    pytest.param((1, 32, 40, 40), 32, 3, 1, 1, 1, 32, id="depthwise"),
    pytest.param((1, 32, 41, 41), 32, 3, 2, 1, 1, 32, id="depthwise-stride2"),
    pytest.param((1, 16, 30, 30), 32, 5, 1, 2, 1, 16, id="depthwise-multiplier2"),
    pytest.param((1, 32, 30, 30), 16, 3, 1, 1, 1, 4, id="grouped4"),
    pytest.param((1, 16, 33, 33), 8, 3, 1, 2, 2, 1, id="dilated2"),
    pytest.param((1, 16, 33, 33), 16, 3, 1, 4, 4, 2, id="dilated4-grouped"),
    pytest.param((1, 4, 700, 650), 8, 3, 1, 1, 1, 1, id="big-image"),
]


@pytest.mark.parametrize("shape, out_channels, kernel, stride, pad, dilation, group",
                         SHAPE_CASES)
def test_conv_shapes_match_float64_and_opencv(tmp_path, rng, shape, out_channels, kernel, stride,
                                               pad, dilation, group):
    x, weight, b = make_case(rng, shape, out_channels, 20.0, True, group, kernel)
    ours = conv2d(x, weight, b, (stride, stride), (pad, pad), (dilation, dilation), group)
    exact = float64_conv(x, weight, b, stride, pad, dilation, group)
    assert max_rel_diff(ours, exact) <= EXACT_RTOL
    reference = opencv_conv(tmp_path, x, weight, b, stride, pad, group, dilation)
    assert max_rel_diff(ours, reference) <= ORACLE_RTOL


def test_big_image_runs_in_equal_bands():
    """FaceNet's conv1 at 1340 px: bands of >= 4096 pixels, the last one not much shorter."""
    rows = conv.band_rows(333, 333, 3 * 11 * 11 * 333)
    assert rows * 333 >= conv._MIN_BAND_PIXELS
    bands = -(-333 // rows)
    assert bands > 1 and 333 - (bands - 1) * rows > rows // 2
    # fc6-conv at 1340 px: a 9216-deep column, capped at _MAX_BAND_FLOATS.
    assert conv.band_rows(36, 36, 9216 * 36) * 9216 * 36 <= conv._MAX_BAND_FLOATS
