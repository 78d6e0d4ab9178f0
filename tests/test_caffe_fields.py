"""No Caffe field is read and silently ignored: every field of our schema is used with Caffe's
meaning, refused with an error naming file, layer and field, or ignored with a warning that
says why it cannot change an inference result."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgecaffe.model.caffe import CaffeError, load_caffe, parse_prototxt
from edgecaffe.model.caffe.fields import (
    IGNORED,
    REFUSED,
    USED,
    is_param_block,
    param_field_of,
)
from edgecaffe.model.caffe.schema import message_class

DATA = ('layer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n')


def _schema_fields():
    from edgecaffe.model.caffe.schema import _classes

    return {(name, field.name) for name, cls in _classes().items()
            for field in cls.DESCRIPTOR.fields}


def test_every_schema_field_is_classified_once():
    """Every field of every message the audit covers (a message named in any table) is in
    exactly one table; a layer's `*_param` blocks follow the type rule (`param_field_of`)."""
    tables = [set(USED), set(IGNORED), set(REFUSED)]
    audited = {message for message, _ in set().union(*tables)}
    fields = {(m, f) for m, f in _schema_fields() if m in audited and not is_param_block(m, f)}
    unclassified = sorted(fields - set().union(*tables))
    assert not unclassified, f"schema fields with no decided meaning: {unclassified}"
    for a in range(3):
        for b in range(a + 1, 3):
            assert not tables[a] & tables[b], tables[a] & tables[b]
    assert not set().union(*tables) - fields, "tables name fields the schema lacks"
    assert len(audited) >= 30


@pytest.mark.parametrize("layer_type, field", [
    ("Convolution", "convolution_param"), ("InnerProduct", "inner_product_param"),
    ("BatchNorm", "batch_norm_param"), ("PReLU", "prelu_param"), ("ReLU", "relu_param"),
    ("LRN", "lrn_param"), ("TanH", "tanh_param"), ("MemoryData", "memory_data_param"),
    ("Input", "input_param"), ("ELU", "elu_param"), ("Deconvolution", "convolution_param")])
def test_param_block_of_each_type(layer_type, field):
    assert param_field_of(layer_type) == field


def test_param_block_of_another_type_warns(tmp_path):
    body = ('layer { name: "relu" type: "ReLU" bottom: "data" top: "r" '
            'pooling_param { pool: AVE } }')
    with pytest.warns(UserWarning, match="pooling_param: a layer of type ReLU does not read it"):
        _load(tmp_path, body)


def _load(tmp_path, body, **kwargs):
    path = tmp_path / "net.prototxt"
    path.write_text(DATA + body)
    return path, load_caffe(path, **kwargs)


def test_dropout_scale_train_false_scales_at_inference(tmp_path):
    _, net = _load(tmp_path, 'layer { name: "drop" type: "Dropout" bottom: "data" top: "out" '
                             'dropout_param { dropout_ratio: 0.3 scale_train: false } }')
    x = np.random.default_rng(0).uniform(-5, 5, (1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x)["out"], x * 0.7, rtol=1e-6)
    _, plain = _load(tmp_path, 'layer { name: "drop" type: "Dropout" bottom: "data" top: "out" '
                               'dropout_param { dropout_ratio: 0.3 } }')
    np.testing.assert_array_equal(plain.forward(x)["out"], x)


def test_training_fields_warn_saying_why(tmp_path):
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 } '
            'convolution_param { num_output: 2 kernel_size: 1 engine: CAFFE '
            'weight_filler { type: "xavier" } } }')
    with pytest.warns(UserWarning) as caught:
        _load(tmp_path, body)
    text = " ".join(str(w.message) for w in caught)
    assert "param.lr_mult" in text and "only affects training (learning rate)" in text
    assert "convolution_param.weight_filler" in text and "caffemodel" in text
    assert "convolution_param.engine" in text and "cuDNN" in text
    assert "net.prototxt" in text and "conv" in text


def test_used_fields_do_not_warn(tmp_path):
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
            'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(tmp_path, body)


def test_weights_inside_the_prototxt_are_refused(tmp_path):
    body = ('layer { name: "scale" type: "Scale" bottom: "data" top: "s" '
            'blobs { shape { dim: 3 } data: 1 data: 2 data: 3 } }')
    with pytest.raises(CaffeError) as caught:
        _load(tmp_path, body)
    message = str(caught.value)
    assert "net.prototxt" in message and "'scale'" in message and "field blobs" in message


def test_net_level_state_fields(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('force_backward: true\nstate { phase: TRAIN level: 3 }\n' + DATA)
    with pytest.warns(UserWarning, match="state.level: Caffe's Net constructor replaces it"):
        net = load_caffe(path)
    assert net.inputs == ["data"]


def test_unknown_fields_are_named(tmp_path):
    with pytest.warns(UserWarning, match="dropout_param.*fancy_option|fancy_option"):
        parse_prototxt(DATA + 'layer { name: "d" type: "Dropout" bottom: "data" top: "d" '
                       'dropout_param { fancy_option: 3 } }', "x.prototxt")


def test_shared_blob_shapes_are_checked(tmp_path):
    body = ('layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "w" } '
            'convolution_param { num_output: 2 kernel_size: 1 } }\n'
            'layer { name: "b" type: "Convolution" bottom: "data" top: "b" param { name: "w" } '
            'convolution_param { num_output: 2 kernel_size: 3 } }')
    with pytest.raises(CaffeError, match="STRICT needs the same shape"):
        _load(tmp_path, body)


def test_v1_param_names_share_weights(tmp_path):
    from edgecaffe.model.caffe import LayerBlobs, write_caffemodel

    path = tmp_path / "v1.prototxt"
    path.write_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
                    'layers { name: "a" type: CONVOLUTION bottom: "data" top: "a" param: "w" '
                    'param: "b" convolution_param { num_output: 2 kernel_size: 1 } }\n'
                    'layers { name: "b" type: CONVOLUTION bottom: "data" top: "b" param: "w" '
                    'param: "b" convolution_param { num_output: 2 kernel_size: 1 } }\n')
    weight = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    bias = np.array([0.5, -1], dtype=np.float32)
    write_caffemodel(tmp_path / "w.caffemodel", "v1", [LayerBlobs("a", "Convolution",
                                                                  [weight, bias])])
    net = load_caffe(path, tmp_path / "w.caffemodel")
    np.testing.assert_array_equal(net.weights["b"]["weight"], weight)
    x = np.ones((1, 3, 4, 4), np.float32)
    out = net.forward(x)
    np.testing.assert_array_equal(out["a"], out["b"])
    assert message_class("LayerParameter")  # schema still compiles with the fork field
