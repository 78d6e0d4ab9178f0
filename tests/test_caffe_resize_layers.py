"""The forks' resize layers: Interp (DeepLab/PSPNet) and Upsample (YOLOv3 forks).

Interp is compared with OpenCV DNN, which imports it (zoom_factor and height/width forms);
OpenCV's Interp gives an empty output for shrink_factor, so that size rule (interp_layer.cpp:
(n - 1) / shrink + 1) is checked by hand and its values against onnxruntime's Resize with
align_corners. Upsample, which OpenCV does not import, is nearest neighbour with an integer
factor (out[i] = in[i // scale], upsample_layer.cpp): numpy's repeat is that definition.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import input_layer
from edgecaffe.model.caffe import load_caffe
from test_ops_onnx import assert_close as assert_close_onnx
from test_ops_onnx import run_onnx
from test_ops_opencv import layer, net

INTERP_CASES = [
    pytest.param((1, 2, 5, 6), "interp_param { zoom_factor: 2 }", (9, 11), id="zoom2"),
    pytest.param((2, 3, 4, 7), "interp_param { zoom_factor: 8 }", (25, 49), id="zoom8-batch2"),
    pytest.param((1, 2, 5, 6), "interp_param { height: 9 width: 13 }", (9, 13), id="height-width"),
    pytest.param((1, 2, 8, 6), "interp_param { height: 3 width: 4 }", (3, 4), id="downsize"),
]


@pytest.mark.parametrize(("shape", "params", "size"), INTERP_CASES)
def test_interp_against_opencv(oracle, shape, params, size):
    run = oracle(net(input_layer(shape), layer("interp", "Interp", ["data"], ["interp"], params)))
    assert run.ours["interp"].shape == (*shape[:2], *size)


@pytest.mark.parametrize(("shape", "params", "size"), [
    ((1, 2, 9, 12), "interp_param { shrink_factor: 2 }", (5, 6)),
    ((1, 2, 10, 7), "interp_param { shrink_factor: 3 }", (4, 3)),
    ((1, 2, 9, 12), "interp_param { shrink_factor: 2 zoom_factor: 3 }", (13, 16)),
    # Both factors and a size: interp_layer.cpp takes the size.
    ((1, 2, 9, 12), "interp_param { shrink_factor: 2 zoom_factor: 3 height: 4 width: 5 }",
     (4, 5)),
    # One factor and a size: the factor wins.
    ((1, 2, 9, 12), "interp_param { shrink_factor: 2 height: 4 width: 5 }", (5, 6)),
])
def test_interp_shrink_against_onnxruntime(tmp_path, shape, params, size):
    path = tmp_path / "interp.prototxt"
    path.write_text(net(input_layer(shape), layer("interp", "Interp", ["data"], ["interp"],
                                                  params)))
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ours = load_caffe(path).forward(x)["interp"]
    assert ours.shape == (*shape[:2], *size)
    ref = run_onnx("Resize", x, {"mode": "linear",
                                 "coordinate_transformation_mode": "align_corners"},
                   {"sizes": np.array([*shape[:2], *size], dtype=np.int64)},
                   ["x", "", "", "sizes"])
    assert_close_onnx(ours, ref)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_is_nearest_repeat(tmp_path, scale):
    path = tmp_path / "up.prototxt"
    path.write_text(net(input_layer((2, 3, 4, 5)), layer("up", "Upsample", ["data"], ["up"],
                                                         f"upsample_param {{ scale: {scale} }}")))
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ours = load_caffe(path).forward(x)["up"]
    np.testing.assert_array_equal(ours, x.repeat(scale, axis=2).repeat(scale, axis=3))


def test_unsupported_forms_are_named(tmp_path):
    from edgecaffe.model.caffe import CaffeError

    cases = {
        'layer { name: "up" type: "Upsample" bottom: "data" bottom: "data" top: "up" }':
            "SegNet",
        'layer { name: "i" type: "Interp" bottom: "data" top: "i" '
        "interp_param { zoom_factor: 2 pad_beg: -1 } }": "pad_beg",
        'layer { name: "i" type: "Interp" bottom: "data" top: "i" }': "shrink_factor",
    }
    for text, words in cases.items():
        path = tmp_path / "bad.prototxt"
        path.write_text(net(input_layer((1, 2, 4, 4)), text))
        with pytest.raises(CaffeError, match=words):
            load_caffe(path)
