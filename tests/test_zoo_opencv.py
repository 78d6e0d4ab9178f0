"""Every network of the zoo, written as prototxt + caffemodel, against OpenCV DNN on those files."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

import edgecaffe
from conftest import assert_close
from edgecaffe.model.preprocess import load_image, preprocess
from edgecaffe.model.zoo import ZOO
from tests.helpers import opencv_compatible, real_photo

FULL_SIZE = [name for name, model in ZOO.items() if not model.tiny]
# The layer feeding the final softmax: a softmax of synthetic logits saturates to 0/1, so the
# logits themselves are compared too.
LOGITS = {"AgeNet": "fc8", "GenderNet": "fc8", "FaceNet": "fc8-conv", "EmotionNet": "fc8_cat_e",
          "ObjectNet": "fc8", "SceneNet": "fc8", "SoS": "fc8_sbt",
          "SoS_GoogleNet": "loss3/classifier-sos"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_zoo_network_matches_opencv(zoo_model, tmp_path, name):
    prototxt, caffemodel = zoo_model(name)
    net = edgecaffe.load_caffe(prototxt, caffemodel)
    assert net.weight_bytes == pytest.approx(
        {"AgeNet": 45.7, "GenderNet": 45.6, "FaceNet": 227.5, "EmotionNet": 395.4,
         "MemNet": 227.5, "ObjectNet": 574.7, "SceneNet": 230.8, "SoS": 227.6,
         "SoS_GoogleNet": 23.9, "TinyYolo": 64.7}[name] * 1e6, rel=2e-3)
    x = preprocess(load_image(real_photo()), net.input_shape, mean=ZOO[name].mean_bgr)
    oracle_prototxt = tmp_path / f"{name}.opencv.prototxt"
    oracle_prototxt.write_text(opencv_compatible(prototxt.read_text()))
    reference = cv2.dnn.readNetFromCaffe(str(oracle_prototxt), str(caffemodel))
    assert len(net.outputs) == 1
    compared = {net.outputs[0]: None}  # OpenCV's forward() without a name: the net's output
    if name in LOGITS:
        compared[net.layer_by_name[LOGITS[name]].outputs[0]] = LOGITS[name]
    ours = net.forward(x, outputs=list(compared))
    for blob, layer in compared.items():
        reference.setInput(x)
        expected = reference.forward(layer) if layer else reference.forward()
        assert_close(ours[blob], expected, f"{name} {blob}")
        assert np.isfinite(ours[blob]).all()
        assert float(np.abs(expected).max()) > 0


@pytest.mark.slow
def test_large_caffemodel_streams_within_512_mb(zoo_model):
    """Reading all 575 MB of VGG-19 one layer at a time peaks well under a 512 MB device."""
    _, caffemodel = zoo_model("ObjectNet")
    script = f"""
from edgecaffe.model.caffe import CaffeModelReader
total = 0
with CaffeModelReader({str(caffemodel)!r}) as model:
    for name in model.layers:
        total += sum(blob.nbytes for blob in model.read_blobs(name))
# VmHWM, not ru_maxrss: the latter keeps the forked parent's high-water mark across exec.
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(total, int(peak) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    total, peak = int(out[0]), int(out[1])
    assert total > 570e6  # every byte was read
    assert peak < 512 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB"
