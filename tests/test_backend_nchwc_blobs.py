"""Blobs kept in onnxruntime's NCHWc layout between layers (`BlobRunner._plan_blocked`,
`ops.fast.blocked_io`, `ops.fast.BLOCKED_KERNELS`) against the numpy reference: the plan on a
Tiny-YOLO-like chain (Conv, BatchNorm, Scale, leaky ReLU, max pooling), requested blobs left in
NCHW, and every kernel that reads or writes that layout. Whole zoo networks with the layout in
use are judged by pycaffe in tests/test_caffe_oracle.py (outputs only asked for). Skipped
without onnxruntime or without NCHWc kernels in its build."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgecaffe.model.caffe import build_layers, parse_prototxt
from edgecaffe.model.network import BlobRunner, Network
from edgecaffe.model.synth import synthesize_weights
from edgecaffe.ops import fast, fast_nchwc, get_op

pytestmark = pytest.mark.skipif(fast_nchwc.block_size() is None,
                                reason="this onnxruntime build has no NCHWc kernels")

#: The backends must agree to this, relative to the output's scale (issue 14's bound).
RTOL = 1e-5

CHAIN = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 22 dim: 22 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "bn2" type: "BatchNorm" bottom: "pool2" top: "pool2" }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 5 kernel_size: 1 } }
"""


def rel_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape, f"{ours.shape} vs {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(ours.astype(np.float64) - reference).max()) / scale


@pytest.fixture
def chain() -> Network:
    net = Network("chain", build_layers(parse_prototxt(CHAIN), "chain"))
    for layer in net.layers:
        if layer.op != "Input":
            net.weights[layer.name] = synthesize_weights(layer, 11)
    return net


def _producers(net: Network, blobs: set[str]) -> set[str]:
    return {layer.name for layer in net.layers if set(layer.outputs) & blobs}


def _input(net: Network) -> np.ndarray:
    return np.random.default_rng(4).uniform(-50, 50, net.input_shape).astype(np.float32)


def test_chain_stays_blocked_and_matches_numpy(chain):
    """Every blob from conv1 to bn2 stays NCHWc (BatchNorm, Scale and ReLU keep the layout,
    pooling takes and gives it); conv3's output, the result, is NCHW; numpy's values."""
    x = _input(chain)
    runner = BlobRunner(chain, x, backend="onnxruntime")
    assert _producers(chain, runner.blocked) == {
        "conv1", "bn1", "scale1", "relu1", "pool1", "conv2", "relu2", "pool2", "bn2"}
    # bn1 is folded into scale1, which applies relu1 too; relu2 is fused into conv2; bn2 is
    # read by a convolution and runs on its own.
    assert runner._folded == {"bn1": "scale1"}
    assert runner._done_by_producer == {"relu1", "relu2"}
    for backend_weights in (chain.weights, chain.prepared_weights("onnxruntime")):
        ours = chain.forward(x, backend="onnxruntime", weights=backend_weights)
        expected = chain.forward(x)
        assert ours.keys() == expected.keys() == {"conv3"}
        assert rel_diff(ours["conv3"], expected["conv3"]) <= RTOL


def test_requested_blobs_stay_nchw(chain):
    """A requested blob in the middle of a chain stays NCHW, and so does every blob of its
    layout-keeping chain (conv1 -> bn1 -> scale1 -> relu1); the rest still goes NCHWc."""
    x = _input(chain)
    bn1 = chain.layer_by_name["bn1"].outputs[0]
    runner = BlobRunner(chain, x, outputs=[bn1, "conv3"], backend="onnxruntime")
    assert _producers(chain, runner.blocked) == {"pool1", "conv2", "relu2", "pool2", "bn2"}
    assert runner._folded == {}
    ours = chain.forward(x, outputs=[bn1, "conv3"], backend="onnxruntime")
    expected = chain.forward(x, outputs=[bn1, "conv3"])
    for blob in (bn1, "conv3"):
        assert rel_diff(ours[blob], expected[blob]) <= RTOL


def test_a_reader_that_needs_nchw_keeps_the_blob_nchw(chain):
    """pool1 read by an LRN as well stays NCHW (a blob is blocked only where every reader
    takes that layout); conv2 and pool2 after it still go NCHWc."""
    text = CHAIN + """
layer { name: "norm" type: "LRN" bottom: "pool1" top: "norm" lrn_param { local_size: 3 } }
"""
    net = Network("chain2", build_layers(parse_prototxt(text), "chain2"))
    net.weights = {**net.weights, **{layer.name: synthesize_weights(layer, 11)
                                     for layer in net.layers if layer.op != "Input"}}
    x = _input(net)
    runner = BlobRunner(net, x, outputs=["conv3", "norm"], backend="onnxruntime")
    assert "pool1" not in runner.blocked
    assert {"conv2", "pool2"} <= _producers(net, runner.blocked)
    ours = net.forward(x, outputs=["conv3", "norm"], backend="onnxruntime")
    expected = net.forward(x, outputs=["conv3", "norm"])
    for blob in ("conv3", "norm"):
        assert rel_diff(ours[blob], expected[blob]) <= RTOL


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("op, attrs, params", [
    ("BatchNorm", {"eps": 1e-5, "use_global_stats": True}, ("mean", "var")),
    ("Scale", {"axis": 1, "num_axes": 1, "bias": True}, ("scale", "bias")),
    ("Scale", {"axis": 1, "num_axes": 1, "bias": False}, ("scale",)),
    ("ReLU", {"negative_slope": 0.1}, ()),
    ("ReLU", {"negative_slope": 0.0}, ()),
])
def test_layout_keeping_kernels_give_numpys_floats(rng, op, attrs, params, inplace):
    """On an NCHWc blob, the same floats as the numpy kernel on the NCHW one (bit for bit:
    the same float32 operations), in place or not; large enough to span many blocks."""
    block = fast_nchwc.block_size()
    x = rng.uniform(-30, 30, (2, 2 * block, 37, 41)).astype(np.float32)
    weights = {name: rng.uniform(0.5, 2.0, x.shape[1]).astype(np.float32) for name in params}
    expected = get_op(op).run([x.copy()], weights, attrs)[0]
    blocked = fast_nchwc.to_blocked(x, block)
    ours = fast.BLOCKED_KERNELS[op]([blocked], weights, attrs, inplace)[0]
    assert ours.shape == x.shape
    assert np.shares_memory(ours, blocked) == inplace
    np.testing.assert_array_equal(fast_nchwc.from_blocked(ours, block), expected)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1, -0.5])
@pytest.mark.parametrize("bias", [True, False])
def test_batch_norm_folded_into_scale_matches_numpy(rng, slope, bias, inplace):
    """BatchNorm's affine folded into the Scale after it (`fast.batch_norm_affine`,
    `attrs["pre_affine"]`) and a ReLU applied in the same pass: numpy's three layers within
    1e-5 of the blob's scale (the fold changes the rounding, not the values)."""
    block = fast_nchwc.block_size()
    x = rng.uniform(-30, 30, (1, 2 * block, 29, 31)).astype(np.float32)
    c = x.shape[1]
    bn_weights = {"mean": rng.uniform(-5, 5, c).astype(np.float32),
                  "var": rng.uniform(0.1, 9, c).astype(np.float32)}
    bn_attrs = {"eps": 1e-5, "use_global_stats": True}
    scale_weights = {"scale": rng.uniform(-2, 2, c).astype(np.float32),
                     "bias": rng.uniform(-3, 3, c).astype(np.float32)}
    scale_attrs = {"axis": 1, "num_axes": 1, "bias": bias}
    expected = get_op("BatchNorm").run([x], bn_weights, bn_attrs)[0]
    expected = get_op("Scale").run([expected], scale_weights, scale_attrs)[0]
    if slope is not None:
        expected = get_op("ReLU").run([expected], {}, {"negative_slope": slope})[0]
        scale_attrs = {**scale_attrs, "activation": {"negative_slope": slope}}
    affine = fast.batch_norm_affine(bn_weights, bn_attrs)
    blocked = fast_nchwc.to_blocked(x, block)
    ours = fast.scale_blocked([blocked], scale_weights,
                              {**scale_attrs, "pre_affine": affine}, inplace)[0]
    assert np.shares_memory(ours, blocked) == inplace
    assert rel_diff(fast_nchwc.from_blocked(ours, block), expected) <= RTOL


@pytest.mark.parametrize("ends", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("slope", [None, 0.1])
def test_conv_reads_and_writes_nchwc_blobs(rng, ends, slope):
    block = fast_nchwc.block_size()
    attrs = {"out_channels": 2 * block, "kernel": [3, 3], "stride": [1, 1], "pad": [1, 1],
             "dilation": [1, 1], "group": 1, "bias": True}
    x = rng.standard_normal((2, block, 11, 9)).astype(np.float32)
    weights = {"weight": rng.standard_normal((2 * block, block, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(2 * block).astype(np.float32)}
    expected = get_op("Conv").run([x], weights, attrs)[0]
    if slope is not None:
        expected = get_op("ReLU").run([expected], {}, {"negative_slope": slope})[0]
        attrs = {**attrs, "activation": {"negative_slope": slope}}
    blocked_in, blocked_out = ends
    assert fast.blocked_io("Conv", attrs, x.shape, expected.shape) == (True, True, False)
    feed = fast_nchwc.to_blocked(x, block) if blocked_in else x
    ours = fast.conv([feed], fast.prepare("Conv", attrs, weights),
                     {**attrs, "blocked_in": blocked_in, "blocked_out": blocked_out}, 2)[0]
    if blocked_out:
        ours = fast_nchwc.from_blocked(ours, block)
    assert rel_diff(ours, expected) <= RTOL


@pytest.mark.parametrize("attrs", [
    {"method": "max", "kernel": [3, 3], "stride": [2, 2], "pad": [1, 1], "global": False,
     "ceil": True},
    {"method": "avg", "kernel": [2, 2], "stride": [2, 2], "pad": [0, 0], "global": False,
     "ceil": True},
    {"method": "avg", "kernel": [1, 1], "stride": [1, 1], "pad": [0, 0], "global": True,
     "ceil": True},
])
@pytest.mark.parametrize("ends", [(True, False), (False, True), (True, True)])
def test_pool_reads_and_writes_nchwc_blobs(rng, attrs, ends):
    block = fast_nchwc.block_size()
    x = rng.uniform(-20, 20, (2, 2 * block, 12, 14)).astype(np.float32)
    expected = get_op("Pool").run([x], {}, attrs)[0]
    assert fast.blocked_io("Pool", attrs, x.shape, expected.shape) == (True, True, False)
    blocked_in, blocked_out = ends
    feed = fast_nchwc.to_blocked(x, block) if blocked_in else x
    ours = fast.pool([feed], {}, {**attrs, "blocked_in": blocked_in,
                                  "blocked_out": blocked_out}, 2)[0]
    if blocked_out:
        ours = fast_nchwc.from_blocked(ours, block)
    assert rel_diff(ours, expected) <= RTOL


def test_what_takes_the_layout():
    """Convolutions whose output channels are not a multiple of the block write NCHW; a
    pooling on numpy (padded average windows) or over channels that are not a multiple of
    the block takes neither; LRN, Softmax and 2-d inputs nothing."""
    block = fast_nchwc.block_size()
    conv = {"out_channels": 5, "kernel": [1, 1], "stride": [1, 1], "pad": [0, 0],
            "dilation": [1, 1], "group": 1, "bias": True}
    assert fast.blocked_io("Conv", conv, (1, block, 4, 4), (1, 5, 4, 4)) == (True, False, False)
    assert fast.blocked_io("Conv", conv, (1, 3, 4, 4), (1, 5, 4, 4)) == (False, False, False)
    padded_avg = {"method": "avg", "kernel": [3, 3], "stride": [2, 2], "pad": [1, 1],
                  "global": False, "ceil": True}
    assert fast.blocked_io("Pool", padded_avg, (1, block, 9, 9), (1, block, 5, 5))[:2] == \
        (False, False)
    max_pool = {**padded_avg, "method": "max"}
    assert fast.blocked_io("Pool", max_pool, (1, 12, 9, 9), (1, 12, 5, 5)) == \
        (False, False, False)
    assert fast.blocked_io("LRN", {}, (1, block, 4, 4), (1, block, 4, 4)) == \
        (False, False, False)
    assert fast.blocked_io("ReLU", {}, (1, block), (1, block)) == (False, False, False)


def test_pycaffe_fixtures_cover_the_blocked_chains():
    """tests/test_caffe_oracle.py judges the zoo networks' outputs by pycaffe asking for the
    outputs and logits only: with those, Tiny YOLO runs every BatchNorm folded into its Scale
    and every blob from conv1 to conv8's ReLU in NCHWc, so pycaffe judges these paths."""
    import json
    from pathlib import Path

    from edgecaffe.model.zoo import ZOO

    fixture = Path(__file__).parent / "fixtures" / "caffe" / "zoo" / "TinyYolo.npz"
    with np.load(fixture) as data:
        asked = json.loads(str(data["meta"]))["blobs"]
    net = Network("TinyYolo", build_layers(parse_prototxt(ZOO["TinyYolo"].prototxt()),
                                           "TinyYolo"))
    runner = BlobRunner(net, np.zeros(net.input_shape, np.float32), outputs=asked,
                        backend="onnxruntime")
    convs = {layer.name for layer in net.layers if layer.op == "Conv"}
    assert convs - _producers(net, runner.blocked) == {"conv9"}
    assert len(runner._folded) == 8


def test_engine_runs_the_blocked_chain(tmp_path, monkeypatch):
    """Through the engine (load and exec tasks, weights prepared at load, two workers), the
    chain with its NCHWc blobs and folded BatchNorm gives numpy's outputs."""
    folded: list[bool] = []
    real = fast.BLOCKED_KERNELS["Scale"]

    def recording(inputs, weights, attrs, inplace):
        folded.append(attrs.get("pre_affine") is not None and "activation" in attrs)
        return real(inputs, weights, attrs, inplace)

    monkeypatch.setitem(fast.BLOCKED_KERNELS, "Scale", recording)
    from edgecaffe.engine import Engine
    from edgecaffe.model.caffe.synth import synthesize_caffemodel
    from edgecaffe.model.package import split

    prototxt, caffemodel = tmp_path / "chain.prototxt", tmp_path / "chain.caffemodel"
    prototxt.write_text(CHAIN.replace("dim: 2 dim: 3", "dim: 1 dim: 3"))
    synthesize_caffemodel(prototxt, caffemodel, seed=3)
    split([prototxt, caffemodel], tmp_path / "packages" / "chain")
    x = np.random.default_rng(8).uniform(-50, 50, (1, 3, 22, 22)).astype(np.float32)
    results = {}
    for backend in ("numpy", "onnxruntime"):
        with Engine(tmp_path / "packages", mode="masa", budget="64M", workers=2,
                    backend=backend) as engine:
            results[backend] = engine.submit(x, ["chain"]).result(60)["chain"]
    assert folded == [True]  # scale1 ran blocked, with bn1's affine and relu1
    assert results["numpy"].keys() == {"conv3"}
    assert rel_diff(results["onnxruntime"]["conv3"], results["numpy"]["conv3"]) <= RTOL


#: conv1 read by the BatchNorm (then Scale) branch and by a pooling branch, both NCHWc.
_TWO_READERS = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" }
layer { name: "scale1" type: "Scale" bottom: "bn1" top: "scale1" scale_param { bias_term: true } }
layer { name: "conv2" type: "Convolution" bottom: "scale1" top: "conv2"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
        convolution_param { num_output: 5 kernel_size: 1 } }
"""


def test_a_batch_norm_whose_input_has_another_reader_is_not_folded():
    """A folded BatchNorm hands its input's buffer to the Scale, which may write it in place:
    with conv1 also read by a pooling branch, folding gave that branch Scale(BN(conv1))
    (0.3 relative error, found in review). It is not folded, and both branches match numpy."""
    net = Network("two_readers", build_layers(parse_prototxt(_TWO_READERS), "two_readers"))
    for layer in net.layers:
        if layer.op != "Input":
            net.weights[layer.name] = synthesize_weights(layer, 11)
    x = _input(net)
    runner = BlobRunner(net, x, backend="onnxruntime")
    assert {"conv1", "pool1"} <= runner.blocked and "bn1" not in runner._folded
    ours, reference = net.forward(x, backend="onnxruntime"), net.forward(x)
    for blob in ("conv2", "conv3"):
        scale = max(1.0, float(np.abs(reference[blob]).max()))
        assert float(np.abs(ours[blob] - reference[blob]).max()) / scale <= 1e-5
