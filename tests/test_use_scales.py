"""The original's `use-scales` (FaceNet): the net's input becomes the image enlarged 5x
(Core/src/BaseNet.cpp scale_list()[0] = 5.0), shapes are re-inferred, and the package's sizes
follow the real activations; plus --input-size for fully convolutional networks.

pycaffe checks a reshaped fully convolutional net in the `fcn_input_size` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from edgecaffe.cli import main
from edgecaffe.model.caffe import load_caffe
from edgecaffe.model.package import split
from edgecaffe.model.package.original import read_original
from edgecaffe.model.zoo import get_zoo_model

SMALL_FCN = """
name: "SmallFCN"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 16
input_dim: 16
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "fc-conv" type: "Convolution" bottom: "conv1" top: "fc-conv"
        convolution_param { num_output: 2 kernel_size: 7 } }
layer { name: "prob" type: "Softmax" bottom: "fc-conv" top: "prob" }
"""


def _folder(root, name, prototxt, use_scales=True):
    folder = root / name
    folder.mkdir()
    (folder / "net.prototxt").write_text(prototxt)
    (folder / "description.yaml").write_text(yaml.safe_dump({
        "name": name, "network-file": "net.prototxt", "model-file": "net.caffemodel",
        "use-scales": use_scales, "input-scale": [16, 16]}))
    return folder


def _image(path, height, width):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_scale_rule(tmp_path):
    scaled = read_original(_folder(tmp_path, "a", SMALL_FCN))
    assert scaled.scaled_input_size((268, 268)) == (1340, 1340)
    assert scaled.scaled_input_size((7, 9)) == (35, 45)
    assert read_original(_folder(tmp_path, "b", SMALL_FCN, False)).scaled_input_size((7, 9)) \
        is None


def test_facenet_at_1340_gives_a_36x36_map(tmp_path):
    folder = _folder(tmp_path, "FaceNet", get_zoo_model("FaceNet").prototxt(1))
    package = split([folder], tmp_path / "pkg", synthetic=True, image_size=(268, 268))
    network = package.network
    assert network.input_shape == (1, 3, 1340, 1340)
    assert network.blob_shapes["prob"] == (1, 2, 36, 36)
    manifest = yaml.safe_load((tmp_path / "pkg" / "manifest.yaml").read_text())
    assert manifest["input"]["shape"] == [1, 3, 1340, 1340]
    # Per-layer output sizes in the manifest are those of the real (scaled) activations.
    by_name = {layer["name"]: layer for layer in manifest["layers"]}
    assert by_name["prob"]["output_bytes"] == 2 * 36 * 36 * 4
    # The same net at its declared 227 x 227 gives one window.
    assert load_caffe(folder / "net.prototxt").blob_shapes["prob"] == (1, 2, 1, 1)


def test_run_reshapes_an_original_use_scales_folder(tmp_path, capsys):
    folder = _folder(tmp_path, "SmallFCN", SMALL_FCN)
    assert main(["synth", str(folder / "net.prototxt"), "-o", str(folder / "net.caffemodel")]) == 0
    image = _image(tmp_path / "img.png", 6, 8)
    assert main(["run", str(folder), "--input", str(image), "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x30x40" in out  # 6x8 enlarged 5x
    assert "prob: shape 1x2x8x13" in out


def test_experiment_splits_use_scales_at_the_arrival_image(tmp_path, monkeypatch):
    from edgecaffe.experiment.config import ExperimentConfig
    from edgecaffe.experiment.networks import resolve_network
    from edgecaffe.workload import Arrival

    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path, "SmallFCN", SMALL_FCN)
    image = _image(tmp_path / "img.png", 5, 6)
    config = ExperimentConfig(network_path=str(tmp_path), synthetic=True,
                              arrivals=[Arrival(0, 0.0, ("SmallFCN",), str(image))])
    package = resolve_network("SmallFCN", config)
    assert package.network.input_shape == (1, 3, 25, 30)


@pytest.mark.parametrize("size", [(23, 31), (16, 16)])
def test_input_size_api_matches_a_fresh_prototxt(tmp_path, size):
    path = tmp_path / "fcn.prototxt"
    path.write_text(SMALL_FCN)
    reshaped = load_caffe(path, input_shape=size)
    rewritten = tmp_path / "rewritten.prototxt"
    rewritten.write_text(SMALL_FCN.replace("input_dim: 16\ninput_dim: 16",
                                           f"input_dim: {size[0]}\ninput_dim: {size[1]}"))
    assert reshaped.blob_shapes == load_caffe(rewritten).blob_shapes


def test_split_cli_image_and_input_size(tmp_path):
    folder = _folder(tmp_path, "SmallFCN", SMALL_FCN)
    image = _image(tmp_path / "img.png", 4, 7)
    assert main(["split", str(folder), "-o", str(tmp_path / "a"), "--synthetic",
                 "--image", str(image)]) == 0
    manifest = yaml.safe_load((tmp_path / "a" / "manifest.yaml").read_text())
    assert manifest["input"]["shape"] == [1, 3, 20, 35]
    prototxt = folder / "net.prototxt"
    assert main(["synth", str(prototxt), "-o", str(tmp_path / "w.caffemodel")]) == 0
    assert main(["split", str(prototxt), str(tmp_path / "w.caffemodel"), "-o",
                 str(tmp_path / "b"), "--input-size", "33x21"]) == 0
    manifest = yaml.safe_load((tmp_path / "b" / "manifest.yaml").read_text())
    assert manifest["input"]["shape"] == [1, 3, 33, 21]
    assert manifest["source"]["input_shape"] == [1, 3, 33, 21]
