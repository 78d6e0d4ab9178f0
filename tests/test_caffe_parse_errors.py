"""Parser errors are always ours: bad prototxt and caffemodel files raise CaffeError (a
ModelError) naming file, layer and field, never IndexError, DecodeError, ValueError or
RecursionError; a fuzz test over both readers checks that nothing else comes out."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecaffe.model.caffe import CaffeError, CaffeModelReader, load_caffe, parse_prototxt
from edgecaffe.model.caffe.synth import synthesize_caffemodel
from edgecaffe.model.errors import ModelError

GOOD = """name: "fuzz"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "sl" type: "Slice" bottom: "pool" top: "a" top: "b" slice_param { slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _load_text(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return path, load_caffe(path)


@pytest.mark.parametrize("text, words", [
    (GOOD.replace('bottom: "data" top: "conv"\n', 'top: "conv"\n'),
     ["'conv'", "bottom"]),
    (GOOD.replace('top: "fc"', ''), ["'fc'", "top"]),
    (GOOD.replace("dim: 8 dim: 8", "dim: -8 dim: 8"), ["'data'", "dim", "-8"]),
    (GOOD.replace("dim: 8 dim: 8", "dim: 0 dim: 8"), ["'data'", "dim"]),
    (GOOD.replace("input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }", "input_param { }"),
     ["'data'", "shape"]),
    (GOOD.replace('slice_param { slice_point: 1 }', 'slice_param { slice_point: 9 }'),
     ["'sl'"]),
    (GOOD.replace('kernel_size: 3 pad: 1', 'kernel_size: 3 pad: 1 group: 3'), ["'conv'"]),
    (GOOD.replace('bottom: "b" bottom: "a"', 'bottom: "b" bottom: "data"'), ["'cat'"]),
    (GOOD.replace("num_output: 3", "num_output: 0"), ["'fc'", "num_output"]),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
     'layer { name: "r" type: "Reshape" bottom: "x" top: "r" '
     'reshape_param { shape { dim: -3 } } }', ["'r'", "-3"]),
])
def test_bad_prototxt_names_file_and_layer(tmp_path, text, words):
    with pytest.raises(CaffeError) as caught:
        _load_text(tmp_path, text)
    message = str(caught.value)
    assert "net.prototxt" in message
    for word in words:
        assert word in message, message


def test_deep_nesting_is_our_error(tmp_path):
    text = "layer { " * 5000 + "}" * 5000
    with pytest.raises(CaffeError, match="net.prototxt"):
        _load_text(tmp_path, text)


def test_utf8_bom_is_skipped(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_caffe(path).blob_shapes["prob"] == (1, 3)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "net.prototxt").write_text(GOOD)
    synthesize_caffemodel(folder / "net.prototxt", folder / "net.caffemodel", seed=1)
    return (folder / "net.caffemodel").read_bytes()


@pytest.mark.parametrize("cut", [1, 2, 10, 50, 200, -4, -1])
def test_truncated_caffemodel(tmp_path, model_bytes, cut):
    path = tmp_path / "net.prototxt"
    path.write_text(GOOD)
    model = tmp_path / "cut.caffemodel"
    model.write_bytes(model_bytes[:cut])
    with pytest.raises(CaffeError) as caught:
        load_caffe(path, model)
    assert "cut.caffemodel" in str(caught.value)


def _only_ours(action):
    with warnings.catch_warnings(), contextlib.suppress(ModelError):
        warnings.simplefilter("ignore")
        action()


_TOKENS = st.sampled_from([
    "{", "}", ":", '"', "layer", "layers", "name:", "type:", '"Convolution"', '"Input"',
    "bottom:", "top:", '"data"', "dim:", "-1", "0", "99999999999999999999", "1e40", "nan",
    "shape", "input_param", "convolution_param", "num_output:", "kernel_size:", "stride:",
    "pad:", "include", "phase:", "TEST", "stage:", "\ufeff", "\x00", "#", "\n", "input:",
    "input_dim:", "blobs", "param", "name:", "slice_point:", "axis:", "-7", "true",
])


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(GOOD)), cut=st.integers(0, 40), insert=st.lists(_TOKENS,
       max_size=6))
def test_fuzz_prototxt_only_our_errors(tmp_path_factory, position, cut, insert):
    text = GOOD[:position] + " ".join(insert) + GOOD[position + cut:]
    folder = tmp_path_factory.mktemp("p", numbered=True)
    path = folder / "net.prototxt"
    path.write_text(text)
    _only_ours(lambda: load_caffe(path))
    _only_ours(lambda: parse_prototxt(text, "fuzz"))


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_caffemodel_only_our_errors(tmp_path_factory, model_bytes, data):
    raw = bytearray(model_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    end = data.draw(st.integers(1, len(raw)))
    folder = tmp_path_factory.mktemp("m", numbered=True)
    (folder / "net.prototxt").write_text(GOOD)
    model = folder / "net.caffemodel"
    model.write_bytes(bytes(raw[:end]))

    def read_all():
        with CaffeModelReader(model) as reader:
            for name in reader.layers:
                for blob in reader.read_blobs(name):
                    assert blob.dtype == np.float32

    _only_ours(read_all)
    _only_ours(lambda: load_caffe(folder / "net.prototxt", model))
