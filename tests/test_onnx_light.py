"""Models nobody in this project wrote: the "light" ONNX graphs the onnx wheel ships (AlexNet,
DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512, exported
from Caffe2 at opset 9 with constant-filled weights), raised to opset 13 by onnx's version
converter at import, against onnxruntime on the original file: the output and the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, version_converter

import edgecaffe
from tests.onnx_helpers import onnxruntime_run

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.name for p in LIGHT.glob("*.onnx"))


def test_the_light_models_are_there():
    assert len(MODELS) >= 9, f"onnx wheel's light models missing under {LIGHT}"


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_onnxruntime(name):
    path = LIGHT / name
    net = edgecaffe.load_onnx(path)
    assert net.meta["source"]["converted_from_opset"] == 9
    logits = [layer.inputs[0] for layer in net.layers if layer.op == "Softmax"]
    blobs = list(dict.fromkeys([*net.outputs, *logits]))
    # Intermediate names are the converter's (it renames some), so the logits are read from
    # the converted model; the outputs from the original file as well.
    model = version_converter.convert_version(onnx.load(str(path)), 13)
    for blob in logits:
        model.graph.output.append(helper.make_tensor_value_info(blob, TensorProto.FLOAT, None))
    x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
    theirs = onnxruntime_run(model, {net.inputs[0]: x})
    original = onnxruntime_run(path, {net.inputs[0]: x})
    for blob in net.outputs:
        np.testing.assert_allclose(original[blob], theirs[blob], atol=1e-6)
    ours = net.forward(x.copy(), outputs=blobs)
    for blob in blobs:
        reference = theirs[blob]
        scale = max(1.0, float(np.abs(reference).max()))
        assert ours[blob].shape == reference.shape
        assert float(np.abs(ours[blob] - reference).max()) <= 1e-4 * scale, blob
