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


def test_very_large_conv_weights_stay_on_numpy(rng, monkeypatch):
    monkeypatch.setattr(fast, "NUMPY_CONV_WEIGHT_FLOATS", 100)
    calls = []
    monkeypatch.setattr(fast, "run_one", lambda *args: calls.append(args))
    attrs = conv_attrs(8, 3)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    weights = {"weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(8).astype(np.float32)}
    ours = fast.conv([x], weights, attrs, threads=1)[0]
    assert not calls
    np.testing.assert_array_equal(ours, get_op("Conv").run([x], weights, attrs)[0])


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
