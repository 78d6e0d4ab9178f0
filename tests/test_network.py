"""The network IR: shapes, bytes, FLOPs, single-assignment blobs, shared blobs, outputs=."""

from __future__ import annotations

import numpy as np
import pytest

from edgecaffe.model.caffe import build_layers, parse_prototxt
from edgecaffe.model.network import Layer, Network, NetworkError
from edgecaffe.model.synth import synthesize_weights
from edgecaffe.model.zoo import ZOO


def zoo_network(name: str, seed: int = 0) -> Network:
    net = Network(name, build_layers(parse_prototxt(ZOO[name].prototxt()), name))
    for layer in net.layers:
        if layer.params:
            net.weights[layer.name] = synthesize_weights(layer, seed)
    return net


def test_shapes_bytes_and_flops_of_agenet():
    net = Network("AgeNet", build_layers(parse_prototxt(ZOO["AgeNet"].prototxt()), "AgeNet"))
    assert net.input_shape == (1, 3, 227, 227)
    assert net.blob_shapes["conv1"] == (1, 96, 56, 56)
    assert net.blob_shapes["pool5"] == (1, 384, 7, 7)  # Caffe's ceil rounding
    assert net.layer_by_name["fc6"].params == {"weight": (512, 18816), "bias": (512,)}
    assert net.blob_bytes("conv1") == 96 * 56 * 56 * 4
    conv1 = net.layer_by_name["conv1"]
    assert conv1.flops == 96 * 56 * 56 * (2 * 3 * 7 * 7 + 1)
    assert conv1.weight_bytes == (96 * 3 * 7 * 7 + 96) * 4
    assert net.outputs == ["prob"]


def test_in_place_layers_get_single_assignment_names():
    net = Network("AgeNet", build_layers(parse_prototxt(ZOO["AgeNet"].prototxt()), "AgeNet"))
    relu1 = net.layer_by_name["relu1"]
    assert relu1.inputs == ["conv1@conv1"] and relu1.outputs == ["conv1"]
    # Dropout after relu6 after fc6: the last writer keeps the Caffe name.
    assert net.layer_by_name["drop6"].outputs == ["fc6"]


def test_requested_intermediate_blobs_are_not_overwritten_in_place():
    net = zoo_network("TinyAlex")
    x = np.random.default_rng(1).normal(0, 50, net.input_shape).astype(np.float32)
    out = net.forward(x, outputs=["conv1@conv1", "conv1", "fc3@fc3", "fc3", "prob"])
    assert (out["conv1@conv1"] < 0).any()
    np.testing.assert_array_equal(np.maximum(out["conv1@conv1"], 0), out["conv1"])
    np.testing.assert_array_equal(np.maximum(out["fc3@fc3"], 0), out["fc3"])
    # Asking for intermediates does not change the final result.
    np.testing.assert_array_equal(out["prob"], net.forward(x)["prob"])


def test_forward_leaves_the_callers_input_untouched():
    net = zoo_network("TinyResidual")
    x = np.random.default_rng(2).normal(0, 10, net.input_shape).astype(np.float32)
    before = x.copy()
    net.forward(x)
    np.testing.assert_array_equal(x, before)


def test_blob_read_by_several_layers_is_shared_not_split():
    net = Network("TinyInception",
                  build_layers(parse_prototxt(ZOO["TinyInception"].prototxt()), "x"))
    readers = [layer.name for layer in net.layers if "conv1" in layer.inputs]
    assert len(readers) == 4  # the four branches of the inception block
    assert not any(layer.op == "Split" for layer in net.layers)


def test_explicit_split_layers_alias_their_input():
    text = """
    input: "data" input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
    layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
    """
    net = Network("split", build_layers(parse_prototxt(text), "split"))
    assert net.layer_by_name["sum"].inputs == ["data", "data"]
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    np.testing.assert_array_equal(net.forward(x)["sum"], 2 * x)


def test_only_layers_needed_for_requested_outputs_run():
    net = zoo_network("TinyAlex")
    needed = [layer.name for layer in net.needed_layers(["pool1"])]
    assert needed == ["input", "conv1", "relu1", "pool1"]


def test_missing_or_wrong_weights_are_named():
    net = zoo_network("TinyAlex")
    del net.weights["fc4"]
    x = np.zeros(net.input_shape, np.float32)
    with pytest.raises(NetworkError, match="'fc4' has no 'weight'"):
        net.forward(x)
    net.weights["fc4"] = {"weight": np.zeros((5, 7), np.float32), "bias": np.zeros(5, np.float32)}
    with pytest.raises(NetworkError, match=r"'fc4' weight 'weight' is float32 \(5, 7\)"):
        net.forward(x)


def test_graph_errors_name_the_layer():
    data = Layer("data", "Input", [], ["data"], {"shape": [1, 3, 8, 8]})
    with pytest.raises(NetworkError, match="'pool' .* reads blob"):
        Network("n", [data, Layer("pool", "Pool", ["nope"], ["pool"], {})])
    with pytest.raises(NetworkError, match="unknown operator 'Warp'"):
        Network("n", [data, Layer("w", "Warp", ["data"], ["w"], {})])
    with pytest.raises(NetworkError, match="two layers are named 'data'"):
        Network("n", [data, Layer("data", "ReLU", ["data"], ["r"], {})])
    with pytest.raises(NetworkError, match="group 2 must divide"):
        Network("n", [data, Layer("c", "Conv", ["data"], ["c"], {
            "out_channels": 6, "kernel": [3, 3], "stride": [1, 1], "pad": [0, 0],
            "dilation": [1, 1], "group": 2, "bias": True})])
    with pytest.raises(NetworkError, match="missing hyperparameter"):
        Network("n", [data, Layer("p", "Pool", ["data"], ["p"], {"method": "max"})])
