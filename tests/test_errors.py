"""Bad input of every kind gives a clear error naming the file, the layer and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

import edgecaffe
from edgecaffe.model.caffe import CaffeError, CaffeModelReader, LayerBlobs, write_caffemodel
from edgecaffe.model.caffe.synth import synthesize_caffemodel
from edgecaffe.model.network import NetworkError

NET = """
name: "small"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 5 } }
"""


@pytest.fixture
def small(tmp_path):
    prototxt = tmp_path / "small.prototxt"
    prototxt.write_text(NET)
    caffemodel = tmp_path / "small.caffemodel"
    synthesize_caffemodel(prototxt, caffemodel, seed=3)
    return prototxt, caffemodel


def test_unknown_layer_type_names_file_layer_and_type(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('type: "ReLU"', 'type: "Mystery"'))
    with pytest.raises(CaffeError) as error:
        edgecaffe.load_caffe(path)
    message = str(error.value)
    assert str(path) in message and "'relu1'" in message and "'Mystery'" in message
    assert "Convolution" in message  # lists what is supported


def test_training_layer_gets_a_deploy_hint(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" top: "l" }')
    with pytest.raises(CaffeError, match="training-only.*deploy"):
        edgecaffe.load_caffe(path)


def test_training_phase_layers_are_skipped(tmp_path, small):
    path = tmp_path / "net.prototxt"
    path.write_text(NET + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" top: "l" '
                          "include { phase: TRAIN } }")
    net = edgecaffe.load_caffe(path, small[1])
    assert [layer.name for layer in net.layers] == ["input", "conv1", "relu1", "fc"]


def test_malformed_prototxt_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(NET.replace("num_output: 4", "num_output: four"))
    with pytest.raises(CaffeError) as error:
        edgecaffe.load_caffe(path)
    assert str(path) in str(error.value) and "malformed prototxt" in str(error.value)
    assert " 6:41 " in str(error.value)  # line:column of the bad value


def test_unclosed_brace(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(NET.rstrip().rstrip("}"))
    with pytest.raises(CaffeError, match="malformed prototxt"):
        edgecaffe.load_caffe(path)


def test_caffemodel_given_as_prototxt(small):
    with pytest.raises(CaffeError, match="not a text prototxt"):
        edgecaffe.load_caffe(small[1])


def test_unknown_fields_warn_but_load(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('top: "fc"', 'top: "fc" transform_param { mirror: true }'))
    with pytest.warns(UserWarning, match="transform_param"):
        net = edgecaffe.load_caffe(path)
    assert net.blob_shapes["fc"] == (1, 5)


def test_missing_bottom_blob(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('bottom: "conv1" top: "fc"', 'bottom: "nowhere" top: "fc"'))
    with pytest.raises(CaffeError, match="'fc' reads blob 'nowhere'"):
        edgecaffe.load_caffe(path)


def test_impossible_shape_names_layer(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace("kernel_size: 3", "kernel_size: 11"))
    with pytest.raises(CaffeError, match="'conv1'.*does not fit"):
        edgecaffe.load_caffe(path)


def test_blob_size_mismatch_names_layer_and_shapes(tmp_path, small):
    other = tmp_path / "other.prototxt"
    other.write_text(NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(CaffeError) as error:
        edgecaffe.load_caffe(other, small[1])
    message = str(error.value)
    assert str(small[1]) in message and "'fc'" in message
    assert "(5, 144)" in message and "(6, 144)" in message


def test_blob_count_mismatch(tmp_path, small):
    other = tmp_path / "other.prototxt"
    other.write_text(NET.replace("num_output: 5", "num_output: 5 bias_term: false"))
    with pytest.raises(CaffeError, match="'fc'.*2 weight blob.*implies 1"):
        edgecaffe.load_caffe(other, small[1])


def test_layer_missing_from_caffemodel(tmp_path, small):
    model = tmp_path / "partial.caffemodel"
    reader = CaffeModelReader(small[1])
    conv1 = LayerBlobs("conv1", "Convolution", reader.read_blobs("conv1"))
    write_caffemodel(model, "small", [conv1])
    reader.close()
    with pytest.raises(CaffeError, match="no weights for layer 'fc'"):
        edgecaffe.load_caffe(small[0], model)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_caffemodel(tmp_path, small, keep):
    data = small[1].read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CaffeError) as error:
        edgecaffe.load_caffe(small[0], cut)
    assert str(cut) in str(error.value)
    assert "truncated" in str(error.value)


@pytest.mark.parametrize(
    "content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(100), b'name: "x"\nlayer {}\n', bytes(range(256))]
)
def test_not_a_caffemodel(tmp_path, small, content):
    bogus = tmp_path / "bogus.caffemodel"
    bogus.write_bytes(content)
    with pytest.raises(CaffeError, match="not a caffemodel|empty file") as error:
        edgecaffe.load_caffe(small[0], bogus)
    assert str(bogus) in str(error.value)


def test_missing_files(tmp_path, small):
    with pytest.raises(CaffeError, match="cannot read prototxt"):
        edgecaffe.load_caffe(tmp_path / "nope.prototxt")
    with pytest.raises(CaffeError, match="cannot open caffemodel"):
        edgecaffe.load_caffe(small[0], tmp_path / "nope.caffemodel")


def test_wrong_input_shape_is_named(small):
    net = edgecaffe.load_caffe(*small)
    with pytest.raises(NetworkError, match=r"must have shape \(1, 3, 8, 8\).*x\[None\]"):
        net.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(NetworkError, match="no blob"):
        net.forward(np.zeros((1, 3, 8, 8), np.float32), outputs=["nothing"])


def test_corrupt_blob_bytes_are_caught(tmp_path, small):
    """Damaging a blob's length field inside the file is reported, not silently misread."""
    data = bytearray(small[1].read_bytes())
    reader = CaffeModelReader(small[1])
    start, _ = reader.layers["fc"].blob_spans[0]
    reader.close()
    data[start : start + 4] = b"\xff\xff\xff\xff"
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(bytes(data))
    with pytest.raises(CaffeError) as error:
        edgecaffe.load_caffe(small[0], bad)
    assert str(bad) in str(error.value)


def test_v0_prototxt_is_refused_clearly(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                    'layers { layer { name: "conv1" type: "conv" } bottom: "data" top: "c" }\n')
    with pytest.raises(CaffeError, match="'conv1' uses Caffe's V0 format.*upgrade_net_proto_text"):
        edgecaffe.load_caffe(path)


def test_memory_data_layer_is_an_input(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text(
        'layer { name: "data" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 2 channels: 3 height: 8 width: 8 } }\n"
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    net = edgecaffe.load_caffe(path)
    assert net.input_shape == (2, 3, 8, 8) and net.outputs == ["r"]


def test_unknown_output_blob_suggests_close_names(small):
    net = edgecaffe.load_caffe(*small)
    with pytest.raises(NetworkError, match="did you mean 'conv1'"):
        net.forward(np.zeros((1, 3, 8, 8), np.float32), outputs=["conv"])
