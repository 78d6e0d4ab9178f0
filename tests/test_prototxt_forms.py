"""The ways a Caffe network can be written down, each read by EdgeCaffe and compared with OpenCV.

One small network (conv, in-place ReLU, pooling, LRN, fc, softmax) is written as a V2 net with an
Input layer, with the legacy `input` + `input_dim` header, with `input` + `input_shape`, and as a
V1 net (`layers { type: CONVOLUTION }`); a caffemodel in the V1 format (V1 layer entries, blobs
sized by num/channels/height/width) is built with the protobuf classes; and graphs with an
explicit Split layer, a blob read by several layers, and in-place layers on the network input.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import assert_close, compare_with_opencv, random_input, random_weights
from edgecaffe.model.caffe import load_caffe
from edgecaffe.model.caffe.schema import message_class

# name, V2 type, V1 enum, bottom, top, parameters
SMALL_NET = [
    ("conv1", "Convolution", "CONVOLUTION", "data", "conv1",
     "convolution_param { num_output: 6 kernel_size: 3 pad: 1 }"),
    ("relu1", "ReLU", "RELU", "conv1", "conv1", ""),
    ("pool1", "Pooling", "POOLING", "conv1", "pool1",
     "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("norm1", "LRN", "LRN", "pool1", "norm1",
     "lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 }"),
    ("fc", "InnerProduct", "INNER_PRODUCT", "norm1", "fc",
     "inner_product_param { num_output: 5 }"),
    ("prob", "Softmax", "SOFTMAX", "fc", "prob", ""),
]
INPUT_CHW = (3, 12, 12)


def small_net(form: str, batch: int) -> str:
    shape = (batch, *INPUT_CHW)
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'name: "small_{form}"\n'
    if form == "input-layer":
        text += (f'layer {{ name: "data" type: "Input" top: "data" '
                 f"input_param {{ shape {{ {dims} }} }} }}\n")
    elif form == "input-shape":
        text += f'input: "data"\ninput_shape {{ {dims} }}\n'
    else:  # input-dim, and V1 nets, which always used the legacy header
        text += 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in shape)
    for name, v2_type, v1_type, bottom, top, params in SMALL_NET:
        if form == "v1-layers":
            text += (f'layers {{ name: "{name}" type: {v1_type} bottom: "{bottom}" '
                     f'top: "{top}" {params} }}\n')
        else:
            text += (f'layer {{ name: "{name}" type: "{v2_type}" bottom: "{bottom}" '
                     f'top: "{top}" {params} }}\n')
    return text


FORMS = [
    pytest.param("input-layer", 1, id="v2-input-layer"),
    pytest.param("input-dim", 1, id="v2-legacy-input-dim"),
    pytest.param("input-shape", 1, id="v2-legacy-input-shape"),
    pytest.param("v1-layers", 1, id="v1-layers"),
    pytest.param("input-dim", 10, id="v2-legacy-input-dim-batch10"),
    pytest.param("v1-layers", 10, id="v1-layers-batch10"),
    pytest.param("input-layer", 10, id="v2-input-layer-batch10"),
]


@pytest.mark.parametrize(("form", "batch"), FORMS)
def test_prototxt_form_matches_opencv(tmp_path, form, batch):
    x = random_input(np.random.default_rng(batch), (batch, *INPUT_CHW), 30.0)
    run = compare_with_opencv(tmp_path, small_net(form, batch), synth_seed=3, inputs=x,
                              outputs=["fc", "prob"])
    net = run.network
    assert net.input_shape == (batch, *INPUT_CHW)
    assert net.outputs == ["prob"]
    assert [layer.op for layer in net.layers] == [
        "Input", "Conv", "ReLU", "Pool", "LRN", "Dense", "Softmax"]
    # The in-place ReLU is the last writer of conv1, so it keeps the plain name.
    assert net.layer_by_name["relu1"].outputs == ["conv1"]
    assert net.layer_by_name["conv1"].outputs == ["conv1@conv1"]
    assert run.ours["prob"].shape == (batch, 5)
    # Synthetic weights depend on (seed, layer name) only, so every form computes the same.
    reference = compare_with_opencv(tmp_path / "reference", small_net("input-layer", batch),
                                    synth_seed=3, inputs=x, outputs=["fc"])
    np.testing.assert_array_equal(run.ours["fc"], reference.ours["fc"])


# -- a caffemodel in the V1 format -------------------------------------------------------------


def _v1_blob(blob, array: np.ndarray, dims: tuple[int, int, int, int], double: bool) -> None:
    blob.num, blob.channels, blob.height, blob.width = dims
    assert int(np.prod(dims)) == array.size
    values = array.reshape(-1).astype(np.float64 if double else np.float32).tolist()
    (blob.double_data if double else blob.data).extend(values)


FC_FEATURES = 6 * 6 * 6  # norm1 is 6 x 6 x 6


def small_net_weights(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    return {
        "conv1": [random_weights(rng, (6, 3, 3, 3), 27), random_weights(rng, (6,))],
        "fc": [random_weights(rng, (5, FC_FEATURES), FC_FEATURES), random_weights(rng, (5,))],
    }


def v1_caffemodel(weights: dict[str, list[np.ndarray]], batch: int, double: bool = False) -> bytes:
    """SMALL_NET's weights as a V1 NetParameter: `layers` entries with enum types, legacy input
    header, and 4-d blobs given by num/channels/height/width (bias 1x1x1xO, fc weight 1x1xOxK),
    their values in `data` or, with `double`, in `double_data`."""
    net_class = message_class("NetParameter")
    v1_class = message_class("V1LayerParameter")
    enum = v1_class.DESCRIPTOR.enum_types_by_name["LayerType"]
    net = net_class(name="small_v1")
    net.input.append("data")
    net.input_dim.extend((batch, *INPUT_CHW))
    dims = {
        "conv1": [(6, 3, 3, 3), (1, 1, 1, 6)],
        "fc": [(1, 1, 5, FC_FEATURES), (1, 1, 1, 5)],
    }
    for name, _, v1_type, bottom, top, _ in SMALL_NET:
        layer = net.layers.add(name=name, type=enum.values_by_name[v1_type].number)
        layer.bottom.append(bottom)
        layer.top.append(top)
        for array, shape in zip(weights.get(name, []), dims.get(name, []), strict=True):
            _v1_blob(layer.blobs.add(), array, shape, double)
    return net.SerializeToString()


@pytest.mark.parametrize(
    ("form", "batch", "double"),
    [
        pytest.param("input-layer", 1, False, id="v2-prototxt"),
        pytest.param("v1-layers", 1, False, id="v1-prototxt"),
        pytest.param("input-dim", 4, False, id="v2-legacy-header-batch4"),
        pytest.param("input-layer", 2, True, id="v2-prototxt-double-data"),
    ],
)
def test_v1_caffemodel_matches_opencv(tmp_path, rng, form, batch, double):
    weights = small_net_weights(rng)
    data = v1_caffemodel(weights, batch, double)
    # The file really is V1: layer entries in field 2 with enum types, no BlobShape.
    parsed = message_class("NetParameter").FromString(data)
    assert len(parsed.layers) == len(SMALL_NET) and not parsed.layer
    assert not parsed.layers[0].blobs[0].HasField("shape")
    model = tmp_path / "v1.caffemodel"
    model.write_bytes(data)
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(small_net(form, batch))

    net = load_caffe(prototxt, model)
    np.testing.assert_array_equal(net.weights["conv1"]["weight"], weights["conv1"][0])
    np.testing.assert_array_equal(net.weights["fc"]["weight"], weights["fc"][0])
    np.testing.assert_array_equal(net.weights["fc"]["bias"], weights["fc"][1])

    x = random_input(rng, (batch, *INPUT_CHW), 30.0)
    ours = net.forward(x, outputs=["fc", "prob"])
    opencv_model = model
    if double:
        # OpenCV reads only float blob data ("pbBlob.has_raw_data()" fails on double_data), so
        # it gets the same (float32-exact) values as float data.
        opencv_model = tmp_path / "v1-float.caffemodel"
        opencv_model.write_bytes(v1_caffemodel(weights, batch, double=False))
    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(opencv_model))
    reference.setInput(x)
    fc, prob = reference.forward(["fc", "prob"])
    assert_close(ours["fc"], fc, "V1 caffemodel: fc")
    assert_close(ours["prob"], prob, "V1 caffemodel: prob")


# -- shared blobs ------------------------------------------------------------------------------


def _conv(name: str, bottom: str, top: str, out: int, k: int = 1, pad: int = 0) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
            f"convolution_param {{ num_output: {out} kernel_size: {k} pad: {pad} }} }}\n")


HEADER = 'name: "shared"\ninput: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'


def test_explicit_split_layer(tmp_path):
    """A Split layer (as Caffe inserts it) fanning conv1 out to three readers."""
    prototxt = HEADER + _conv("conv1", "data", "conv1", 4, 3, 1) + """
layer { name: "conv1_split" type: "Split" bottom: "conv1" top: "conv1_a" top: "conv1_b"
        top: "conv1_c" }
layer { name: "relu_a" type: "ReLU" bottom: "conv1_a" top: "conv1_a" }
layer { name: "pool_b" type: "Pooling" bottom: "conv1_b" top: "pool_b"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1_a" bottom: "pool_b" bottom: "conv1_c"
        top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }
""" + _conv("conv2", "conv1_c", "conv2", 2)
    run = compare_with_opencv(tmp_path, prototxt, synth_seed=5, rng=np.random.default_rng(1),
                              outputs=["sum", "conv2", "conv1_a"])
    net = run.network
    assert "conv1_split" not in net.layer_by_name  # a Split becomes a shared blob
    assert net.layer_by_name["pool_b"].inputs == ["conv1"]
    assert net.layer_by_name["sum"].inputs == ["conv1_a", "pool_b", "conv1"]
    assert net.outputs == ["sum", "conv2"]


def test_blob_with_several_readers(tmp_path):
    """conv1 read by four layers without a Split, one of them an in-place ReLU that comes last."""
    prototxt = HEADER + _conv("conv1", "data", "conv1", 4, 3, 1) + _conv(
        "branch_a", "conv1", "branch_a", 4) + _conv("branch_b", "conv1", "branch_b", 4, 3, 1) + """
layer { name: "join" type: "Concat" bottom: "branch_a" bottom: "conv1" bottom: "branch_b"
        top: "join" }
layer { name: "prod" type: "Eltwise" bottom: "conv1" bottom: "branch_a" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""
    run = compare_with_opencv(tmp_path, prototxt, synth_seed=6, rng=np.random.default_rng(2),
                              outputs=["join", "prod", "conv1"])
    net = run.network
    # Every reader before the in-place ReLU sees the convolution's value, not the ReLU's.
    for reader in ("branch_a", "branch_b", "join", "prod"):
        assert "conv1@conv1" in net.layer_by_name[reader].inputs
    assert np.any(run.ours["join"][:, 4:8] < 0)
    assert np.all(run.ours["conv1"] >= 0)


# -- in-place layers writing the network input -------------------------------------------------

IN_PLACE_ON_INPUT = """
layer { name: "scale_in" type: "Power" bottom: "data" top: "data"
        power_param { scale: 0.5 shift: 1 } }
layer { name: "relu_in" type: "ReLU" bottom: "data" top: "data" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


@pytest.mark.parametrize("header", [
    pytest.param(HEADER, id="legacy-input"),
    pytest.param('name: "shared"\nlayer { name: "data" type: "Input" top: "data" '
                 "input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n", id="input-layer"),
])
def test_in_place_layers_on_network_input(tmp_path, header):
    """Caffe nets that rescale their input in place (`data -> data`) before the first conv."""
    run = compare_with_opencv(tmp_path, header + IN_PLACE_ON_INPUT, rng=np.random.default_rng(3))
    x = run.inputs["data"]
    expected = np.maximum(0.5 * x + 1, 0).reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(run.ours["pool"], expected, rtol=1e-6)
