"""Bad parameters of the added layer types fail at import with a CaffeError naming the file,
the layer and what is wrong (never an IndexError, KeyError or a protobuf error)."""

from __future__ import annotations

import pytest

from conftest import input_layer, inputs_layer
from edgecaffe.model.caffe import CaffeError, load_caffe
from test_ops_opencv import layer, net

DATA = input_layer((1, 4, 6, 6))
TWO = inputs_layer({"data": (1, 4, 6, 6), "ref": (1, 4, 8, 8)})

BAD = [
    pytest.param(TWO, layer("crop", "Crop", ["data", "ref"], ["crop"]), "out of bounds",
                 id="crop-larger-than-data"),
    pytest.param(DATA, layer("crop", "Crop", ["data"], ["crop"]), "two bottoms",
                 id="crop-one-bottom"),
    pytest.param(DATA, layer("crop", "Crop", ["data", "data"], ["crop"],
                             "crop_param { axis: 1 offset: 0 offset: 0 }"), "3 axes",
                 id="crop-offset-count"),
    pytest.param(inputs_layer({"data": (1, 4, 6, 6), "img": (1, 3, 30, 30)}),
                 layer("p", "PriorBox", ["data", "img"], ["p"], "prior_box_param { flip: true }"),
                 "min_size", id="priorbox-no-min-size"),
    pytest.param(inputs_layer({"data": (1, 4, 6, 6), "img": (1, 3, 30, 30)}),
                 layer("p", "PriorBox", ["data", "img"], ["p"],
                       "prior_box_param { min_size: 10 max_size: 5 }"), "max_size",
                 id="priorbox-max-below-min"),
    pytest.param(inputs_layer({"data": (1, 4, 6, 6), "img": (1, 3, 30, 30)}),
                 layer("p", "PriorBox", ["data", "img"], ["p"],
                       "prior_box_param { min_size: 10 variance: 0.1 variance: 0.2 }"),
                 "variances", id="priorbox-two-variances"),
    pytest.param(inputs_layer({"data": (1, 4, 6, 6), "img": (1, 3, 30, 30)}),
                 layer("p", "PriorBox", ["data", "img"], ["p"],
                       "prior_box_param { min_size: 10 img_h: 30 }"), "img_w",
                 id="priorbox-img-h-alone"),
    pytest.param(inputs_layer({"loc": (1, 16), "conf": (1, 8), "prior": (1, 2, 16)}),
                 layer("d", "DetectionOutput", ["loc", "conf", "prior"], ["d"],
                       "detection_output_param { share_location: true }"), "num_classes",
                 id="detection-no-num-classes"),
    pytest.param(inputs_layer({"loc": (1, 16), "conf": (1, 9), "prior": (1, 2, 16)}),
                 layer("d", "DetectionOutput", ["loc", "conf", "prior"], ["d"],
                       "detection_output_param { num_classes: 2 }"), "disagree",
                 id="detection-shapes-disagree"),
    pytest.param(DATA, layer("c", "Clip", ["data"], ["c"], "clip_param { min: 0 }"),
                 "min and max", id="clip-without-max"),
    pytest.param(DATA, layer("t", "Tile", ["data"], ["t"]), "tiles", id="tile-without-tiles"),
    pytest.param(DATA, layer("l", "Log", ["data"], ["l"], "log_param { base: -2 }"), "log base",
                 id="log-negative-base"),
    pytest.param(DATA, layer("a", "ArgMax", ["data"], ["a"], "argmax_param { axis: 1 top_k: 5 }"),
                 "top_k", id="argmax-top-k-too-large"),
    pytest.param(DATA, layer("r", "Reduction", ["data"], ["r"], "reduction_param { axis: 4 }"),
                 "axis", id="reduction-axis-out-of-range"),
    pytest.param(DATA, layer("p", "Permute", ["data"], ["p"],
                             "permute_param { order: 0 order: 0 }"), "repeats",
                 id="permute-repeated-axis"),
    pytest.param(DATA, layer("p", "Permute", ["data"], ["p"], "permute_param { order: 7 }"),
                 "permutation", id="permute-axis-out-of-range"),
    pytest.param(DATA, layer("d", "Deconvolution", ["data"], ["d"],
                             "convolution_param { num_output: 3 kernel_size: 2 group: 2 }"),
                 "group", id="deconvolution-group"),
]


@pytest.mark.parametrize(("inputs", "text", "words"), BAD)
def test_bad_layer_parameters_are_named(tmp_path, inputs, text, words):
    path = tmp_path / "bad.prototxt"
    path.write_text(net(inputs, text))
    with pytest.raises(CaffeError, match=words) as caught:
        load_caffe(path)
    message = str(caught.value)
    assert str(path) in message
    name = text.split('name: "')[1].split('"')[0]
    assert repr(name) in message, message


def test_fields_without_effect_at_inference_are_named(tmp_path):
    """The SSD fork's display and file options, and Normalize's filler, cannot change the
    output; the warning names them and says why."""
    path = tmp_path / "ssd.prototxt"
    path.write_text(net(
        inputs_layer({"data": (1, 4, 6, 6), "loc": (1, 16), "conf": (1, 8),
                      "prior": (1, 2, 16)}),
        layer("norm", "Normalize", ["data"], ["norm"],
              'norm_param { scale_filler { type: "constant" value: 20 } }'),
        layer("det", "DetectionOutput", ["loc", "conf", "prior"], ["det"],
              'detection_output_param { num_classes: 2 visualize: true '
              'visualize_threshold: 0.6 save_file: "out.txt" }')))
    with pytest.warns(UserWarning) as caught:
        load_caffe(path)
    message = " ".join(str(w.message) for w in caught)
    for words in ("norm_param.scale_filler", "detection_output_param.visualize:",
                  "detection_output_param.visualize_threshold", "detection_output_param.save_file",
                  "initializes weights before training"):
        assert words in message, message
