"""Layers split into blocks along their outputs: the same outputs bit for bit, blocks scheduled
as layers, a network run under a budget smaller than its largest layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecaffe.blas import limit_blas
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package import open_package, split
from edgecaffe.model.package.blocks import block_edges, block_network, block_package
from edgecaffe.model.package.manifest import PackageError
from edgecaffe.ops.block import ALIGN
from tests.helpers import assert_same_or_rounding


def _network(batch: int) -> Network:
    """Conv 3->200 (small: whole) -> ReLU -> Conv 200->1200 3x3/2 (8.6 MB: split) -> Conv
    1x1 group 2 (never split) -> Dense 1500 (8.6 MB) -> Dense 1500 with a K x O weight (9 MB)."""
    def conv(name, src, out, kernel, stride, pad, group, bias=True):
        return Layer(name, "Conv", [src], [name],
                     {"out_channels": out, "kernel": [kernel, kernel], "stride": [stride] * 2,
                      "pad": [pad, pad], "dilation": [1, 1], "group": group, "bias": bias})

    layers = [
        Layer("data", "Input", [], ["data"], {"shape": [batch, 3, 12, 12]}),
        conv("conv1", "data", 200, 3, 1, 1, 1),
        Layer("relu1", "ReLU", ["conv1"], ["relu1"], {"negative_slope": 0.0}),
        conv("conv2", "relu1", 1200, 3, 2, 1, 1),
        conv("conv3", "conv2", 40, 1, 1, 0, 2, bias=False),
        Layer("fc1", "Dense", ["conv3"], ["fc1"],
              {"out_features": 1500, "axis": 1, "bias": True, "transpose": False}),
        Layer("fc2", "Dense", ["fc1"], ["fc2"],
              {"out_features": 1500, "axis": 1, "bias": True, "transpose": True}),
    ]
    network = Network("blocky", layers)
    rng = np.random.default_rng(3)
    network.weights = {layer.name: {name: rng.standard_normal(shape).astype(np.float32)
                                    for name, shape in layer.params.items()}
                       for layer in network.layers if layer.params}
    return network


def _blocked(network: Network, max_block_bytes: int) -> Network:
    blocked, sources = block_network(network, max_block_bytes)
    from edgecaffe.model.package.blocks import blocked_source

    weights = blocked_source(network, sources, lambda layer: network.weights[layer.name])
    blocked.weights = {layer.name: weights(layer) for layer in blocked.layers if layer.params}
    return blocked


def test_block_edges_are_aligned_within_the_size_and_cover_the_output():
    network = _network(1)
    fc1 = network.layer_by_name["fc1"]  # 1500 rows of 1440 floats: 8.6 MB
    edges = block_edges(fc1, 2 << 20)
    assert edges[0] == 0 and edges[-1] == 1500
    assert all(e % ALIGN == 0 for e in edges[:-1])
    sizes = np.diff(edges)
    assert (sizes * fc1.weight_bytes / 1500 <= 2 << 20).all()
    assert len(edges) - 1 == 6  # 363 rows fit in 2 MiB: 256-row blocks (ALIGN 128)
    assert block_edges(fc1, fc1.weight_bytes) is None  # fits: stays whole
    assert block_edges(network.layer_by_name["conv3"], 1) is None  # grouped: not split
    assert block_edges(network.layer_by_name["conv1"], 1) is None  # below CHUNK_MIN_BYTES
    with pytest.raises(PackageError, match="must be positive"):
        block_network(network, 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_blocked_forward_is_bit_exact(threads, batch):
    network = _network(batch)
    blocked = _blocked(network, 1 << 20)
    ops = [layer.op for layer in blocked.layers]
    assert ops.count("ConvBlock") >= 8 and ops.count("DenseBlock") >= 16
    assert {"conv1", "conv3"} <= set(blocked.layer_by_name)  # small / grouped: whole
    x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
    with limit_blas(threads):
        whole = network.forward(x, outputs=["conv2", "fc1", "fc2"])
        parts = blocked.forward(x, outputs=["conv2", "fc1", "fc2"])
    for blob in whole:
        assert np.array_equal(whole[blob], parts[blob]), blob
    assert blocked.weight_bytes == network.weight_bytes
    assert blocked.flops == network.flops


@pytest.fixture(scope="module")
def agenet(zoo_packages):
    """AgeNet (seed 7): fc6 is 38.5 MB, conv layers are small."""
    return open_package(zoo_packages(["AgeNet"]) / "AgeNet")


def test_split_with_max_block_matches_the_unsplit_package(zoo_model, agenet, tmp_path):
    """AgeNet split with --max-block 16M: fc6 becomes blocks with their own weight files in the
    manifest, and the package forward is bit-exact against the unsplit package."""
    blocked = split(list(zoo_model("AgeNet")), tmp_path / "blocked", max_block_bytes=16 << 20)
    names = [layer.name for layer in blocked.network.layers]
    assert "fc6[0]" in names and "fc6[3]" in names and "fc6" not in names
    assert blocked.manifest["source"]["max_block_bytes"] == 16 << 20
    assert max(layer.weight_bytes for layer in blocked.network.layers) <= 16 << 20
    stages = {e["name"]: e["stage"] for e in blocked.manifest["layers"]}
    assert stages["fc6[0]"] == "fc" and stages["conv1"] == "conv"
    x = np.random.default_rng(0).standard_normal(agenet.input_shape).astype(np.float32)
    expected = agenet.forward(x)
    got = blocked.forward(x)
    assert expected.keys() == got.keys()
    for blob in expected:
        assert np.array_equal(expected[blob], got[blob]), blob
    reopened = open_package(tmp_path / "blocked")  # the manifest checks out on its own
    assert [layer.op for layer in reopened.network.layers] == \
        [layer.op for layer in blocked.network.layers]


def test_blocked_agenet_matches_pycaffe(tmp_path):
    """The committed pycaffe outputs of AgeNet (tests/fixtures/caffe/zoo) against AgeNet in
    blocks: Caffe itself is the oracle for the blocked network too."""
    import importlib.util
    import sys
    from pathlib import Path

    from conftest import assert_close

    path = Path(__file__).resolve().parent.parent / "tools/caffe_oracle.py"
    spec = importlib.util.spec_from_file_location("caffe_oracle", path)
    oracle = sys.modules.setdefault("caffe_oracle", importlib.util.module_from_spec(spec))
    if not hasattr(oracle, "ZOO_FIXTURES"):
        spec.loader.exec_module(oracle)

    with np.load(oracle.ZOO_FIXTURES / "AgeNet.npz") as data:
        meta = json.loads(str(data["meta"]))
        expected = {blob: data[f"b{i}"] for i, blob in enumerate(meta["blobs"])}
    case = oracle.zoo_case("AgeNet", tmp_path)
    inputs = oracle.make_inputs(case)
    model = tmp_path / "weights.caffemodel"
    oracle.write_weights(case, model)
    network = oracle.build_network(case, model)
    blocked = _blocked(network, 4 << 20)
    assert any(layer.op == "DenseBlock" for layer in blocked.layers)
    ours = blocked.forward(inputs, outputs=list(expected))
    for blob, reference in expected.items():
        assert_close(ours[blob], reference, f"AgeNet in blocks/{blob} against pycaffe")


def test_block_package_derives_a_cached_package(agenet, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    assert block_package(agenet, 1 << 30) is agenet  # nothing to split
    derived = block_package(agenet, 8 << 20)
    assert derived.directory != agenet.directory
    assert block_package(agenet, 8 << 20).directory == derived.directory  # cached
    x = np.random.default_rng(1).standard_normal(agenet.input_shape).astype(np.float32)
    expected, got = agenet.forward(x), derived.forward(x)
    for blob in expected:
        assert np.array_equal(expected[blob], got[blob]), blob


def test_engine_runs_a_network_under_a_budget_below_its_largest_layer(agenet, tmp_path,
                                                                      monkeypatch):
    """Unsplit, AgeNet's fc6 alone exceeds the budget, so a strict engine refuses it; in
    blocks every task fits, nothing is forced, and the outputs are the plain forward's."""
    from edgecaffe.engine import Engine
    from edgecaffe.engine.tasks import network_input
    from edgecaffe.sched import BudgetError

    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    budget = 24 << 20  # fc6: 38.5 MB
    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with Engine({"AgeNet": agenet}, mode="masa", budget=budget, workers=2,
                allow_overcommit=False, max_block=None) as engine, pytest.raises(BudgetError):
        engine.submit(image, ["AgeNet"])
    # By default the engine runs a package with a layer over its capacity from blocks.
    with Engine({"AgeNet": agenet}, mode="masa", budget=budget, workers=2,
                allow_overcommit=False) as engine:
        derived = engine.packages["AgeNet"]
        # A sixteenth of the capacity, rounded down to a power of two MiB.
        assert derived.manifest["source"]["max_block_bytes"] == 1 << 20
        result = engine.submit(image, ["AgeNet"]).result(timeout=120)
        expected = agenet.forward(network_input(image, agenet))
    for blob, array in expected.items():
        # The engine gives each execution its own BLAS thread count.
        assert_same_or_rounding(result["AgeNet"][blob], array, blob)
    assert not engine.trace.forced_events
    assert max(e.used_bytes for e in engine.trace.ledger) <= budget
    block_tasks = [task for task in engine.trace.tasks if "fc6[" in task.layers]
    assert len(block_tasks) == 8  # a load and an exec per block


def test_split_command_takes_max_block(zoo_model, tmp_path, capsys):
    from edgecaffe.cli import main

    prototxt, caffemodel = zoo_model("AgeNet")
    assert main(["split", str(prototxt), str(caffemodel), "-o", str(tmp_path / "p"),
                 "--max-block", "16M"]) == 0
    package = open_package(tmp_path / "p")
    assert [l.name for l in package.network.layers if l.name.startswith("fc6")] == \
        [f"fc6[{k}]" for k in range(4)]
    assert main(["split", str(prototxt), str(caffemodel), "-o", str(tmp_path / "q"),
                 "--max-block", "lots"]) != 0
    assert "memory size 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_layer_at_the_chunking_threshold_stays_whole_or_exact(threads):
    """Dense 1024 -> 2048: its weight is exactly the chunking threshold (8 MiB, not chunked),
    its bias takes it over. It must not be split (its products would then be split where the
    adaptive threads say, not at the block edges), and its forward is the same either way."""
    from unittest import mock

    from edgecaffe.blas import BlasHold

    layers = [Layer("data", "Input", [], ["data"], {"shape": [3, 1024]}),
              Layer("fc", "Dense", ["data"], ["fc"], {"out_features": 2048, "axis": 1,
                                                      "bias": True, "transpose": False})]
    network = Network("edge", layers)
    fc = network.layer_by_name["fc"]
    assert fc.weight_bytes > 8 << 20 and block_edges(fc, 2 << 20) is None
    rng = np.random.default_rng(0)
    network.weights = {"fc": {k: rng.standard_normal(s).astype(np.float32)
                              for k, s in fc.params.items()}}
    blocked = _blocked(network, 2 << 20)
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    with mock.patch.object(BlasHold, "split_threads", staticmethod(lambda: threads)):
        whole = network.forward(x, outputs=["fc"])["fc"]
        parts = blocked.forward(x, outputs=["fc"])["fc"]
    assert np.array_equal(whole, parts)
