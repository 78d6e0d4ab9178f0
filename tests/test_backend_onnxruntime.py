"""The onnxruntime backend against the numpy reference: single operators (every convolution
shape family), whole zoo networks, the engine, the CLI flag; its session cache; the one-node
ONNX models it writes, read back by the onnx package. Skipped when onnxruntime is missing."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import edgecaffe  # noqa: E402
from edgecaffe.cli.backend_flag import CHOICES  # noqa: E402
from edgecaffe.engine import Engine  # noqa: E402
from edgecaffe.model.package import split  # noqa: E402
from edgecaffe.model.zoo import ZOO  # noqa: E402
from edgecaffe.ops import (  # noqa: E402
    BACKENDS,
    BackendError,
    backend_kernels,
    fast,
    fast_nchwc,
    get_op,
)
from edgecaffe.ops import base as ops_base  # noqa: E402
from edgecaffe.ops.onnx_wire import one_node_model  # noqa: E402

#: The backends must agree to this, relative to the output's scale (the issue's bound).
RTOL = 1e-5


def rel_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape, f"{ours.shape} vs {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(ours.astype(np.float64) - reference).max()) / scale


def conv_attrs(out, kernel, stride=1, pad=0, dilation=1, group=1, bias=True):
    return {"out_channels": out, "kernel": [kernel, kernel], "stride": [stride, stride],
            "pad": [pad, pad], "dilation": [dilation, dilation], "group": group, "bias": bias}


CONV_CASES = [
    # input shape, attrs
    pytest.param((1, 16, 20, 20), conv_attrs(8, 1), id="pointwise"),
    pytest.param((2, 16, 20, 20), conv_attrs(8, 1, stride=2), id="pointwise-s2-batch2"),
    pytest.param((1, 3, 131, 131), conv_attrs(16, 11, stride=4), id="k11-s4"),
    pytest.param((1, 8, 30, 30), conv_attrs(16, 3, pad=1), id="k3-p1"),
    pytest.param((1, 12, 25, 25), conv_attrs(12, 3, pad=1, group=12), id="depthwise"),
    pytest.param((1, 12, 25, 25), conv_attrs(24, 5, stride=2, pad=2, group=12),
                 id="depthwise-multiplier2-s2"),
    pytest.param((1, 16, 21, 21), conv_attrs(8, 3, pad=1, group=4), id="grouped"),
    pytest.param((1, 8, 30, 30), conv_attrs(8, 3, pad=2, dilation=2), id="dilated"),
    pytest.param((1, 8, 14, 14), conv_attrs(4, 3, bias=False), id="no-bias"),
    # Caffe's rule: a kernel overhanging the input by less than the stride gives one output.
    pytest.param((1, 2, 5, 6), conv_attrs(3, 7, stride=4), id="overhang"),
]


@pytest.mark.parametrize("shape, attrs", CONV_CASES)
def test_conv_matches_numpy(rng, shape, attrs):
    op = get_op("Conv")
    x = rng.uniform(-20, 20, shape).astype(np.float32)
    weights = {name: rng.standard_normal(s).astype(np.float32)
               for name, s in op.param_shapes([shape], attrs).items()}
    expected = op.run([x], weights, attrs)[0]
    ours = fast.conv([x], weights, attrs, threads=2)[0]
    assert rel_diff(ours, expected) <= RTOL


def test_very_large_conv_weights_outside_nchwc_stay_on_numpy(rng, monkeypatch):
    monkeypatch.setattr(fast, "NUMPY_CONV_WEIGHT_FLOATS", 100)
    calls = []
    monkeypatch.setattr(fast, "run_one", lambda *args: calls.append(args))
    attrs = conv_attrs(8, 3)
    # 20 input channels: neither fewer than a block nor a multiple of one, so not NCHWc.
    x = rng.standard_normal((1, 20, 6, 6)).astype(np.float32)
    weights = {"weight": rng.standard_normal((8, 20, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(8).astype(np.float32)}
    assert fast_nchwc.plan(weights["weight"].shape, 1) is None
    ours = fast.conv([x], weights, attrs, threads=1)[0]
    assert not calls
    expected = get_op("Conv").run([x], weights, attrs)[0]
    np.testing.assert_array_equal(ours, expected)
    # A ReLU fused into such a layer is applied on numpy too.
    fused = fast.conv([x], weights, {**attrs, "activation": {"negative_slope": 0.25}}, 1)[0]
    assert (expected < 0).any()
    np.testing.assert_array_equal(
        fused, get_op("ReLU").run([expected], {}, {"negative_slope": 0.25})[0])


needs_nchwc = pytest.mark.skipif(fast_nchwc.block_size() is None,
                                 reason="this onnxruntime build has no NCHWc kernels")

NCHWC_CASES = [
    # input shape, attrs: each takes the NCHWc path (asserted), on plain and prepared weights
    pytest.param((1, 3, 23, 23), conv_attrs(20, 5, stride=2, pad=2), id="rgb-input-Bo"),
    pytest.param((1, 32, 15, 15), conv_attrs(48, 3, pad=1), id="blocked-BiBo"),
    pytest.param((1, 32, 15, 15), conv_attrs(5, 1), id="padded-output-channels"),
    pytest.param((2, 32, 9, 9), conv_attrs(32, 3, pad=1, group=32), id="depthwise-batch2"),
    pytest.param((1, 64, 9, 11), conv_attrs(64, 3, pad=1, group=2), id="grouped"),
    pytest.param((1, 16, 17, 17), conv_attrs(16, 3, pad=2, dilation=2, bias=False),
                 id="dilated-no-bias"),
    pytest.param((1, 16, 9, 9), conv_attrs(16, 4, stride=3), id="caffe-overhang"),
]


@needs_nchwc
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
@pytest.mark.parametrize("shape, attrs", NCHWC_CASES)
def test_nchwc_conv_matches_numpy(rng, shape, attrs, slope):
    """The blocked-layout convolution (filter reordered by us, a fused ReLU or leaky ReLU in
    its output loop) against the numpy conv and ReLU kernels."""
    op = get_op("Conv")
    x = rng.uniform(-20, 20, shape).astype(np.float32)
    weights = {name: rng.standard_normal(s).astype(np.float32)
               for name, s in op.param_shapes([shape], attrs).items()}
    expected = op.run([x], weights, attrs)[0]
    run_attrs = dict(attrs)
    if slope is not None:
        expected = get_op("ReLU").run([expected], {}, {"negative_slope": slope})[0]
        run_attrs["activation"] = {"negative_slope": slope}
    prepared = fast.prepare("Conv", attrs, dict(weights))
    assert fast.BLOCKED_WEIGHT in prepared and "weight" not in prepared
    for given in (weights, prepared):
        ours = fast.conv([x], given, run_attrs, threads=2)[0]
        assert rel_diff(ours, expected) <= RTOL


@needs_nchwc
def test_filter_reorder_is_onnxruntimes_own(rng, tmp_path):
    """Our numpy reorder of the filter gives the bytes onnxruntime's optimizer writes for
    the same Conv when the filter is an initializer (its NCHWc rewrite, saved to a file)."""
    from onnx import TensorProto, helper, numpy_helper

    block = fast_nchwc.block_size()
    for x_shape, w_shape, layout in [((1, 3, 9, 9), (2 * block, 3, 3, 3), "Bo"),
                                     ((1, block, 9, 9), (block + 4, block, 3, 3), "BiBo")]:
        w = rng.standard_normal(w_shape).astype(np.float32)
        out = (1, w_shape[0], 7, 7)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[3, 3])], "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out)],
            [numpy_helper.from_array(w, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(tmp_path / "optimized.onnx"))
        conv_node = next(n for n in optimized.graph.node if n.op_type == "Conv")
        assert conv_node.domain == fast_nchwc.DOMAIN
        theirs = next(numpy_helper.to_array(t) for t in optimized.graph.initializer
                      if t.name == conv_node.input[1])
        ours = fast_nchwc.reorder_filter(w, layout, block)
        np.testing.assert_array_equal(ours.ravel(), theirs.ravel())


def test_no_nchwc_build_falls_back_to_plain_conv(rng, monkeypatch):
    monkeypatch.setattr(fast_nchwc, "block_size", lambda: None)
    attrs = conv_attrs(32, 3, pad=1)
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    weights = {"weight": rng.standard_normal((32, 32, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(32).astype(np.float32)}
    assert fast.prepare("Conv", attrs, weights) is weights
    expected = get_op("Conv").run([x], weights, attrs)[0]
    assert rel_diff(fast.conv([x], weights, attrs, threads=1)[0], expected) <= RTOL


POOL_CASES = [
    # attrs; every one compared exactly with the numpy kernel
    pytest.param({"method": "max", "kernel": [3, 3], "stride": [2, 2], "pad": [0, 0],
                  "global": False, "ceil": True}, id="max-ceil"),
    pytest.param({"method": "max", "kernel": [3, 3], "stride": [1, 1], "pad": [1, 1],
                  "global": False, "ceil": True}, id="max-pad"),
    pytest.param({"method": "max", "kernel": [2, 2], "stride": [2, 2], "pad": [1, 0],
                  "global": False, "ceil": True}, id="max-pad-one-axis"),
    pytest.param({"method": "max", "kernel": [3, 3], "stride": [2, 2], "pad": [0, 0],
                  "global": False, "ceil": False}, id="max-floor"),
    pytest.param({"method": "avg", "kernel": [3, 3], "stride": [3, 3], "pad": [0, 0],
                  "global": False, "ceil": True}, id="avg-exact-windows"),
    pytest.param({"method": "avg", "kernel": [3, 3], "stride": [2, 2], "pad": [1, 1],
                  "global": False, "ceil": True}, id="avg-padded-on-numpy"),
    pytest.param({"method": "max", "kernel": [1, 1], "stride": [1, 1], "pad": [0, 0],
                  "global": True, "ceil": True}, id="global-max"),
    pytest.param({"method": "avg", "kernel": [1, 1], "stride": [1, 1], "pad": [0, 0],
                  "global": True, "ceil": True}, id="global-avg"),
]


@pytest.mark.parametrize("attrs", POOL_CASES)
def test_pool_matches_numpy(rng, attrs):
    x = rng.uniform(-20, 20, (2, 5, 12, 15)).astype(np.float32)
    expected = get_op("Pool").run([x], {}, attrs)[0]
    ours = fast.pool([x], {}, attrs, threads=2)[0]
    if attrs["method"] == "max":
        np.testing.assert_array_equal(ours, expected)
    else:
        assert rel_diff(ours, expected) <= RTOL


@needs_nchwc
@pytest.mark.parametrize("channels", [16, 20])
@pytest.mark.parametrize("attrs", POOL_CASES)
def test_nchwc_pool_matches_numpy(rng, attrs, channels):
    """Channel counts that fill whole blocks pool in NCHWc, others (20 on 8- or 16-float
    blocks: onnxruntime would pad them, memory the ledger does not hold) as plain ONNX
    pooling; the same results as the numpy kernel, max pooling bit for bit."""
    x = rng.uniform(-20, 20, (2, channels, 12, 15)).astype(np.float32)
    expected = get_op("Pool").run([x], {}, attrs)[0]
    fast.SESSIONS.clear()
    ours = fast.pool([x], {}, attrs, threads=2)[0]
    # Padded average windows (divisors differ) and floor rounding that drops input rows
    # (a negative end padding) stay on numpy.
    on_numpy = not attrs["global"] and (
        not attrs["ceil"] or (attrs["method"] == "avg" and any(attrs["pad"])))
    used = [key[0] for key in fast.SESSIONS._sessions]
    if on_numpy:
        assert used == []
    elif channels % fast_nchwc.block_size() == 0:
        assert used == ["nchwc pool"]
    else:
        assert len(used) == 1 and used[0] != "nchwc pool"
    if attrs["method"] == "max":
        np.testing.assert_array_equal(ours, expected)
    else:
        assert rel_diff(ours, expected) <= RTOL


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_dense_fused_relu_matches_numpy(rng, slope):
    op = get_op("Dense")
    attrs = {"out_features": 7, "axis": 1, "bias": True, "transpose": False}
    x = rng.uniform(-20, 20, (3, 40)).astype(np.float32)
    weights = {name: rng.standard_normal(s).astype(np.float32)
               for name, s in op.param_shapes([x.shape], attrs).items()}
    expected = get_op("ReLU").run(op.run([x], weights, attrs), {},
                                  {"negative_slope": slope})[0]
    ours = fast.dense([x], weights, {**attrs, "activation": {"negative_slope": slope}}, 1)[0]
    assert (expected < 0).any() == (slope > 0)
    assert rel_diff(ours, expected) <= RTOL


def test_conv_transpose_matches_numpy(rng):
    op = get_op("ConvTranspose")
    attrs = {"out_channels": 6, "kernel": [4, 4], "stride": [2, 2], "dilation": [1, 1],
             "pads": [1, 1, 1, 1], "output_padding": [0, 0], "group": 2, "bias": True}
    x = rng.uniform(-5, 5, (1, 4, 9, 9)).astype(np.float32)
    weights = {name: rng.standard_normal(s).astype(np.float32)
               for name, s in op.param_shapes([x.shape], attrs).items()}
    expected = op.run([x], weights, attrs)[0]
    assert rel_diff(fast.conv_transpose([x], weights, attrs, threads=1)[0], expected) <= RTOL


@pytest.mark.parametrize("shape, axis, transpose, bias", [
    ((3, 40), 1, False, True), ((1, 8, 3, 3), 1, False, True), ((2, 5, 6), 2, True, False),
])
def test_dense_matches_numpy(rng, shape, axis, transpose, bias):
    op = get_op("Dense")
    attrs = {"out_features": 7, "axis": axis, "bias": bias, "transpose": transpose}
    x = rng.uniform(-20, 20, shape).astype(np.float32)
    weights = {name: rng.standard_normal(s).astype(np.float32)
               for name, s in op.param_shapes([shape], attrs).items()}
    expected = op.run([x], weights, attrs)[0]
    assert rel_diff(fast.dense([x], weights, attrs, threads=1)[0], expected) <= RTOL


def test_one_node_model_reads_back_with_weights_as_inputs():
    model = onnx.load_model_from_string(one_node_model(
        "Conv", {"X": (1, 3, 8, 8), "W": (4, 3, 3, 3)}, {"Y": (1, 4, 3, 3)},
        {"kernel_shape": [3, 3], "strides": [2, 2], "group": 1}))
    onnx.checker.check_model(model, full_check=True)  # also infers and checks the output shape
    graph = model.graph
    assert not graph.initializer  # the session holds no weights
    assert [i.name for i in graph.input] == ["X", "W"]
    assert [d.dim_value for d in graph.input[1].type.tensor_type.shape.dim] == [4, 3, 3, 3]
    node = graph.node[0]
    assert node.op_type == "Conv" and list(node.input) == ["X", "W"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 2], "group": 1}


def test_wire_encodes_floats_and_negative_ints():
    model = onnx.load_model_from_string(one_node_model(
        "LeakyRelu", {"X": (2,)}, {"Y": (2,)}, {"alpha": 0.25}))
    assert onnx.helper.get_attribute_value(model.graph.node[0].attribute[0]) == 0.25
    model = onnx.load_model_from_string(one_node_model(
        "Flatten", {"X": (2, 3)}, {"Y": (2, 3)}, {"axis": -1}))
    assert onnx.helper.get_attribute_value(model.graph.node[0].attribute[0]) == -1


def test_sessions_are_cached_by_signature_and_bounded(rng, monkeypatch):
    cache = fast.SessionCache(capacity=2)
    monkeypatch.setattr(fast, "SESSIONS", cache)
    attrs = conv_attrs(4, 3)
    w = {"weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
         "bias": np.zeros(4, np.float32)}
    for size in (8, 8, 9, 8):
        fast.conv([rng.standard_normal((1, 2, size, size)).astype(np.float32)], w, attrs, 1)
    assert cache.created == 2  # 8 and 9; the second and fourth 8 were hits
    for size in (10, 11):
        fast.conv([rng.standard_normal((1, 2, size, size)).astype(np.float32)], w, attrs, 1)
    assert len(cache) == 2 and cache.created == 4
    fast.conv([rng.standard_normal((1, 2, 8, 8)).astype(np.float32)], w, attrs, 1)
    assert cache.created == 5  # 8 had been evicted
    fast.conv([rng.standard_normal((1, 2, 11, 11)).astype(np.float32)], w, attrs, 2)
    assert cache.created == 6  # another thread count is another session


def test_sessions_are_shared_safely_between_threads(rng):
    op, attrs = get_op("Conv"), conv_attrs(6, 3, pad=1)
    cases = []
    for i in range(16):
        x = rng.standard_normal((1, 4, 12 + i % 3, 12)).astype(np.float32)
        w = {"weight": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
             "bias": rng.standard_normal(6).astype(np.float32)}
        cases.append((x, w, op.run([x], w, attrs)[0]))
    errors: list[float] = []

    def work(offset: int) -> None:
        for x, w, expected in cases[offset:] + cases[:offset]:
            errors.append(rel_diff(fast.conv([x], w, attrs, 1)[0], expected))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 64 and max(errors) <= RTOL


def test_unknown_or_missing_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(BackendError, match="unknown backend 'tpu'; known: numpy, onnxruntime"):
        backend_kernels("tpu")
    monkeypatch.setitem(ops_base.BACKENDS, "onnxruntime", "edgecaffe.ops.no_such_module")
    with pytest.raises(BackendError, match=r"edgecaffe\[fast\]"):
        backend_kernels("onnxruntime")


def test_cli_choices_are_the_backends():
    assert tuple(BACKENDS) == CHOICES


def test_import_edgecaffe_loads_no_onnxruntime():
    code = ("import sys, edgecaffe, edgecaffe.ops, edgecaffe.engine, edgecaffe.cli;"
            "print(sorted(m for m in sys.modules if m.startswith(('onnx', 'onnxruntime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _compare_network(zoo_model, name):
    prototxt, caffemodel = zoo_model(name)
    net = edgecaffe.load_caffe(prototxt, caffemodel)
    x = np.random.default_rng(3).uniform(-60, 60, net.input_shape).astype(np.float32)
    # Every Conv and Dense output at 1e-5 (the logits before a final softmax among them). A
    # softmax output's error is the logits' *absolute* error times up to p(1-p) (logits of
    # hundreds differing by 1e-6 relative move a probability by ~1e-5), so it gets 1e-4.
    producer = {blob: layer.op for layer in net.layers for blob in layer.outputs}
    blobs = [*net.outputs, *(layer.outputs[0] for layer in net.layers
                             if layer.op in ("Conv", "Dense"))]
    reference = net.forward(x, outputs=blobs)
    ours = net.forward(x, outputs=blobs, backend="onnxruntime")
    for blob in blobs:
        bound = 1e-4 if producer[blob] == "Softmax" else RTOL
        assert rel_diff(ours[blob], reference[blob]) <= bound, f"{name} {blob}"


@pytest.mark.parametrize("name", ["TinyAlex", "TinyResidual", "TinyInception"])
def test_tiny_networks_match_numpy(zoo_model, name):
    _compare_network(zoo_model, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, m in ZOO.items() if not m.tiny])
def test_zoo_networks_match_numpy(zoo_model, name):
    _compare_network(zoo_model, name)


def test_engine_runs_on_onnxruntime(tmp_path, zoo_model):
    folder = tmp_path / "packages"
    for name in ("TinyAlex", "TinyInception"):
        split(list(zoo_model(name)), folder / name)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    results = {}
    for backend in ("numpy", "onnxruntime"):
        with Engine(folder, mode="masa", budget="64M", workers=2, backend=backend) as engine:
            results[backend] = engine.submit(image, ["TinyAlex", "TinyInception"]).result(60)
    for name, blobs in results["numpy"].items():
        for blob, array in blobs.items():
            assert rel_diff(results["onnxruntime"][name][blob], array) <= RTOL
    with pytest.raises(BackendError, match="unknown backend"):
        Engine(folder, backend="cuda")


def test_run_command_takes_backend(zoo_model, capsys):
    from edgecaffe.cli import main

    prototxt, caffemodel = zoo_model("TinyAlex")
    assert main(["run", str(prototxt), str(caffemodel), "--repeat", "1",
                 "--backend", "onnxruntime"]) == 0
    assert "forward" in capsys.readouterr().out


def test_profile_records_its_backend(tmp_path, zoo_model):
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.profile import profile_package

    split(list(zoo_model("TinyAlex")), tmp_path / "TinyAlex")
    package = open_package(tmp_path / "TinyAlex")
    summary = profile_package(package, runs=1, backend="onnxruntime")
    assert summary["backend"] == "onnxruntime"
    assert all(entry["profile"]["exec_ms"] > 0 for entry in package.manifest["layers"]
               if entry["op"] == "Conv")


def _relu_network(zoo_model):
    prototxt, caffemodel = zoo_model("TinyAlex")
    return edgecaffe.load_caffe(prototxt, caffemodel)


def test_relu_after_conv_and_dense_is_fused(zoo_model):
    """The runner lets a Conv or Dense kernel apply the in-place ReLU after it, and that ReLU
    layer passes its input through; outputs as numpy's."""
    from edgecaffe.model.network import BlobRunner

    net = _relu_network(zoo_model)
    x = np.random.default_rng(5).uniform(-60, 60, net.input_shape).astype(np.float32)
    runner = BlobRunner(net, x, backend="onnxruntime")
    relus = {layer.name for layer in net.layers if layer.op == "ReLU"}
    assert runner._done_by_producer == relus  # relu1, relu2 after convs, relu3 after fc3
    for layer in runner.layers:
        runner.run(layer, net.weights.get(layer.name, {}))
    expected = net.forward(x)
    for blob, array in runner.results().items():
        assert rel_diff(array, expected[blob]) <= 1e-4  # a softmax output (see above)


def test_no_fusion_when_the_conv_output_is_asked_for(zoo_model):
    """A requested convolution output keeps its values before the ReLU."""
    from edgecaffe.model.network import BlobRunner

    net = _relu_network(zoo_model)
    x = np.random.default_rng(5).uniform(-60, 60, net.input_shape).astype(np.float32)
    conv1 = net.layer_by_name["conv1"].outputs[0]
    relu1 = net.layer_by_name["relu1"].outputs[0]
    runner = BlobRunner(net, x, outputs=[conv1, relu1], backend="onnxruntime")
    assert "relu1" not in runner._done_by_producer
    ours = net.forward(x, outputs=[conv1, relu1], backend="onnxruntime")
    assert (ours[conv1] < 0).any() and not (ours[relu1] < 0).any()
    reference = net.forward(x, outputs=[conv1, relu1])
    for blob in (conv1, relu1):
        assert rel_diff(ours[blob], reference[blob]) <= RTOL


def test_prepared_weights_give_the_same_outputs(zoo_model):
    net = _relu_network(zoo_model)
    x = np.random.default_rng(6).uniform(-60, 60, net.input_shape).astype(np.float32)
    prepared = net.prepared_weights("onnxruntime")
    assert net.prepared_weights("numpy")["conv1"].keys() == {"weight", "bias"}
    if fast_nchwc.block_size() is not None:
        assert fast.BLOCKED_WEIGHT in prepared["conv1"]  # 3 input channels: NCHWc
        assert net.weights["conv1"]["weight"].shape == (8, 3, 5, 5)  # untouched
    plain = net.forward(x, backend="onnxruntime")
    ready = net.forward(x, backend="onnxruntime", weights=prepared)
    for blob, array in plain.items():
        np.testing.assert_array_equal(ready[blob], array)


@needs_nchwc
def test_engine_prepares_weights_when_it_loads(tmp_path, zoo_model, monkeypatch):
    """The engine's load task rearranges a layer's weights: its exec task gets them ready."""
    folder = tmp_path / "packages"
    split(list(zoo_model("TinyAlex")), folder / "TinyAlex")
    seen: list[list[str]] = []
    real = fast.conv

    def recording(inputs, weights, attrs, threads):
        seen.append(sorted(weights))
        return real(inputs, weights, attrs, threads)

    monkeypatch.setitem(fast.KERNELS, "Conv", recording)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    outputs = {}
    for backend in ("numpy", "onnxruntime"):
        with Engine(folder, mode="linear", workers=1, backend=backend) as engine:
            outputs[backend] = engine.submit(image, ["TinyAlex"]).result(60)["TinyAlex"]
    # conv1 (3 input channels) runs in NCHWc; conv2 (6 per group) does not
    assert seen == [[fast.PADDED_BIAS, fast.BLOCKED_WEIGHT], ["bias", "weight"]]
    for blob, array in outputs["numpy"].items():
        assert rel_diff(outputs["onnxruntime"][blob], array) <= 1e-4
