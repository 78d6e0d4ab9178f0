"""Every blob encoding Caffe forks write: BVLC's float `data` and `double_data`, the legacy 4-d
header, NVIDIA Caffe's `raw_data` + `raw_data_type` (FLOAT, FLOAT16, DOUBLE; field numbers and
enum values from NVIDIA/caffe's caffe.proto). Files are built with protobuf here; values are
checked exactly. An encoding we cannot read is named as such, never called corrupt."""

from __future__ import annotations

import numpy as np
import pytest

from edgecaffe.model.caffe import CaffeError, CaffeModelReader, load_caffe
from edgecaffe.model.caffe.schema import message_class

PROTOTXT = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
"""

WEIGHT = (np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3) - 27) / 7
BIAS = np.array([0.25, -1.5], dtype=np.float32)


def _write(path, blobs):
    net = message_class("NetParameter")(name="enc")
    layer = net.layer.add(name="conv", type="Convolution")
    layer.blobs.extend(blobs)
    path.write_bytes(net.SerializeToString())
    return path


def _raw(array, type_number, dtype):
    blob = message_class("BlobProto")(raw_data_type=type_number,
                                      raw_data=np.asarray(array, dtype=dtype).tobytes())
    blob.shape.dim.extend(array.shape)
    return blob


@pytest.mark.parametrize("type_number, dtype", [(1, "<f4"), (2, "<f2"), (0, "<f8")],
                         ids=["FLOAT", "FLOAT16", "DOUBLE"])
def test_nvidia_raw_data(tmp_path, type_number, dtype):
    model = _write(tmp_path / "w.caffemodel",
                   [_raw(WEIGHT, type_number, dtype), _raw(BIAS, type_number, dtype)])
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(PROTOTXT)
    net = load_caffe(prototxt, model)
    expected = WEIGHT.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(net.weights["conv"]["weight"], expected)
    np.testing.assert_array_equal(net.weights["conv"]["bias"], BIAS.astype(dtype))
    assert net.weights["conv"]["weight"].dtype == np.float32


def test_bvlc_double_and_legacy_header(tmp_path):
    blob_class = message_class("BlobProto")
    weight = blob_class(num=2, channels=3, height=3, width=3)
    weight.double_data.extend(WEIGHT.astype(np.float64).ravel())
    bias = blob_class(num=1, channels=1, height=1, width=2)
    bias.data.extend(BIAS)
    model = _write(tmp_path / "w.caffemodel", [weight, bias])
    with CaffeModelReader(model) as reader:
        got = reader.read_blobs("conv")
    np.testing.assert_array_equal(got[0], WEIGHT)
    np.testing.assert_array_equal(got[1].ravel(), BIAS)


@pytest.mark.parametrize("type_number, name", [(3, "INT"), (5, "BOOL")])
def test_unreadable_raw_types_are_named(tmp_path, type_number, name):
    model = _write(tmp_path / "w.caffemodel", [_raw(WEIGHT, type_number, "<i4")])
    with CaffeModelReader(model) as reader, pytest.raises(CaffeError) as caught:
        reader.read_blobs("conv")
    message = str(caught.value)
    assert f"raw_data of type {name}" in message and "cannot read" in message
    assert "corrupt" not in message and "'conv'" in message


def test_unknown_value_field_is_an_unreadable_encoding(tmp_path):
    from edgecaffe.model.caffe.caffemodel import _encode_varint, _key

    def field(number, payload):
        return _key(number, 2) + _encode_varint(len(payload)) + payload

    # A blob whose values sit in field 20 (bytes), which no Caffe schema we know uses.
    shape = message_class("BlobShape")(dim=[2]).SerializeToString()
    blob = field(7, shape) + field(20, np.zeros(2, "<f4").tobytes())
    layer = message_class("LayerParameter")(name="conv", type="Convolution").SerializeToString()
    path = tmp_path / "w.caffemodel"
    path.write_bytes(field(100, layer + field(7, blob)))
    with CaffeModelReader(path) as reader, pytest.raises(CaffeError) as caught:
        reader.read_blobs("conv")
    assert "field(s) [20]" in str(caught.value)
    assert "encoding EdgeCaffe cannot read" in str(caught.value)
    assert "corrupt" not in str(caught.value)


def test_raw_data_size_mismatch_is_damage(tmp_path):
    blob = _raw(WEIGHT, 2, "<f2")
    blob.raw_data = blob.raw_data[:-1]
    model = _write(tmp_path / "w.caffemodel", [blob])
    with CaffeModelReader(model) as reader, pytest.raises(CaffeError, match="damaged"):
        reader.read_blobs("conv")
