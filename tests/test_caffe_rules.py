"""Caffe's LayerSetUp checks, from its source (pooling_layer.cpp, base_conv_layer.cpp,
concat_layer.cpp, slice_layer.cpp, exp_layer.cpp, eltwise_layer.cpp): what Caffe refuses we
refuse with an error naming file, layer and field. What Caffe accepts is in the pycaffe fixtures
(tests/caffe_cases, tests/test_caffe_oracle.py)."""

from __future__ import annotations

import pytest

from edgecaffe.model.caffe import CaffeError, load_caffe
from edgecaffe.ops.pool import FLT_MAX, pool_output_size

DATA = ('layer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }\n')


@pytest.mark.parametrize("body, words", [
    ('type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }', ["pad", "smaller"]),
    ('type: "Pooling" pooling_param { kernel_size: 3 pad_h: 1 }', ["pad_h and pad_w"]),
    ('type: "Pooling" pooling_param { kernel_size: 3 kernel_h: 3 kernel_w: 3 }', ["not both"]),
    ('type: "Pooling" pooling_param { global_pooling: true kernel_size: 3 }', ["global"]),
    ('type: "Pooling" pooling_param { kernel_size: 3 stride_h: 2 }', ["stride_h and stride_w"]),
    ('type: "Pooling" pooling_param { global_pooling: true stride: 2 }', ["stride 1"]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 '
     'kernel_w: 3 }', ["not both"]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 stride_h: 2 }',
     ["stride_h and stride_w"]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 pad_h: 1 }',
     ["not both"]),
    ('type: "Exp" exp_param { base: -2 }', ["base"]),
    ('type: "Exp" exp_param { base: 0 }', ["base"]),
    ('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', ["dropout_ratio"]),
])
def test_caffe_refusals(tmp_path, body, words):
    path = tmp_path / "net.prototxt"
    path.write_text(DATA + f'layer {{ name: "x" {body} bottom: "data" top: "x" }}')
    with pytest.raises(CaffeError) as caught:
        load_caffe(path)
    message = str(caught.value)
    assert "net.prototxt" in message and "'x'" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("body, words", [
    ('type: "Concat" bottom: "data" concat_param { axis: 1 concat_dim: 1 }', ["not both"]),
    ('type: "Slice" top: "y" slice_param { axis: 1 slice_dim: 1 }', ["not both"]),
    ('type: "Eltwise" bottom: "data" eltwise_param { operation: PROD coeff: 1 coeff: 2 }',
     ["prod"]),
])
def test_caffe_refusals_multi_blob(tmp_path, body, words):
    path = tmp_path / "net.prototxt"
    path.write_text(DATA + f'layer {{ name: "x" {body} bottom: "data" top: "x" }}')
    with pytest.raises(CaffeError) as caught:
        load_caffe(path)
    for word in ["'x'", *words]:
        assert word in str(caught.value), str(caught.value)


def test_pooling_output_size_rule():
    # The example: 6 rows, kernel 1, stride 2, no pad on H but pad on W: Caffe drops
    # the 4th row window because a pad exists on the other axis.
    assert pool_output_size(6, 1, 2, 0, True, any_pad=True) == 3
    assert pool_output_size(6, 1, 2, 0, True, any_pad=False) == 4
    assert pool_output_size(6, 3, 2, 1, True) == 4
    assert pool_output_size(2, 3, 2, 0, True) == 1  # kernel over the edge: one clipped window
    with pytest.raises(ValueError):
        pool_output_size(2, 5, 1, 0, True)
    assert FLT_MAX == 3.4028234663852886e38


def test_silence_is_accepted_and_computes_nothing(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(DATA + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" }\n'
                    'layer { name: "quiet" type: "Silence" bottom: "b" }\n'
                    'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n')
    net = load_caffe(path)
    assert "quiet" not in net.layer_by_name and "r" in net.outputs
    path.write_text(DATA + 'layer { name: "quiet" type: "Silence" bottom: "nope" }\n')
    with pytest.raises(CaffeError, match="'quiet' reads blob 'nope'"):
        load_caffe(path)
