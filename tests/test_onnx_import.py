"""ONNX import, node by node, against onnxruntime: every mapped operator with its attribute
variants and opsets, constant folding of shape subgraphs, dynamic dims."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.onnx_helpers import compare, make_model

node = helper.make_node


def rand(*shape, seed=1, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def one(op, inputs=("x",), opset=17, inits=None, shape=(1, 3, 8, 8), **attrs):
    return make_model([node(op, list(inputs), ["y"], **attrs)], inits, {"x": shape}, opset)


W = rand(4, 3, 3, 3, seed=2)
B4 = rand(4, seed=3)

CASES = {
    "conv": one("Conv", ("x", "w", "b"), inits={"w": W, "b": B4}, pads=[1, 1, 1, 1]),
    "conv-stride-dilation": one("Conv", ("x", "w"), inits={"w": W}, strides=[2, 1],
                                dilations=[2, 2]),
    "conv-asymmetric-pads": one("Conv", ("x", "w", "b"), inits={"w": W, "b": B4},
                                pads=[0, 1, 2, 1], strides=[2, 2]),
    "conv-same-upper": one("Conv", ("x", "w"), inits={"w": W}, auto_pad="SAME_UPPER",
                           strides=[2, 2], shape=(1, 3, 7, 8)),
    "conv-same-lower": one("Conv", ("x", "w"), inits={"w": W}, auto_pad="SAME_LOWER",
                           strides=[2, 2], shape=(1, 3, 7, 8)),
    "conv-group": one("Conv", ("x", "w"), inits={"w": rand(6, 2, 3, 3)}, group=2,
                      shape=(1, 4, 6, 6)),
    "conv-transpose": one("ConvTranspose", ("x", "w", "b"),
                          inits={"w": rand(3, 2, 3, 3), "b": rand(2)}, strides=[2, 2],
                          pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "maxpool-ceil": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                        shape=(1, 3, 10, 10)),
    "maxpool-pads": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool-asymmetric": one("MaxPool", kernel_shape=[2, 2], strides=[2, 2],
                              pads=[0, 0, 1, 1], shape=(1, 3, 7, 7)),
    "maxpool-same-upper": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                              auto_pad="SAME_UPPER", shape=(1, 3, 7, 8)),
    "avgpool-include-pad": one("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1], count_include_pad=1),
    "avgpool-exclude-pad": one("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1]),
    "avgpool-asymmetric-exclude": one("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[0, 1, 1, 2], shape=(1, 3, 9, 9)),
    "avgpool-asymmetric-include": one("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[0, 1, 2, 1], count_include_pad=1,
                                      shape=(1, 3, 9, 9)),
    "avgpool-ceil": one("AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                        shape=(1, 3, 10, 10)),
    "global-avg": one("GlobalAveragePool"),
    "global-max": one("GlobalMaxPool"),
    "gemm": one("Gemm", ("x", "w", "c"), inits={"w": rand(5, 12), "c": rand(5)}, transB=1,
                alpha=0.5, beta=2.0, shape=(2, 12)),
    "gemm-no-bias": one("Gemm", ("x", "w"), inits={"w": rand(12, 5)}, shape=(2, 12)),
    "matmul-const": one("MatMul", ("x", "w"), inits={"w": rand(8, 5)}, shape=(1, 3, 8)),
    "matmul-const-left": one("MatMul", ("w", "x"), inits={"w": rand(5, 3)}, shape=(2, 3, 4)),
    "add-const-broadcast": one("Add", ("x", "c"), inits={"c": rand(3, 1, 1)}),
    "sub-const-first": one("Sub", ("c", "x"), inits={"c": rand(1, 8)}),
    "mul-scalar": one("Mul", ("x", "c"), inits={"c": np.float32(0.5)}),
    "div-const": one("Div", ("x", "c"), inits={"c": rand(8) + 4}),
    "add-self": one("Add", ("x", "x")),
    "pow-scalar": one("Pow", ("x", "c"), inits={"c": np.float32(2.0)}),
    "max-3": one("Max", ("x", "c", "x"), inits={"c": rand(8)}),
    "relu": one("Relu"),
    "leaky-relu": one("LeakyRelu", alpha=0.2),
    "prelu-channel": one("PRelu", ("x", "s"), inits={"s": rand(3, 1, 1)}),
    "prelu-shared": one("PRelu", ("x", "s"), inits={"s": np.array([0.25], np.float32)}),
    "elu": one("Elu", alpha=0.7),
    "sigmoid": one("Sigmoid"),
    "tanh": one("Tanh"),
    "hard-sigmoid": one("HardSigmoid", alpha=0.3, beta=0.4),
    "hard-swish": one("HardSwish"),
    "clip": one("Clip", ("x", "lo", "hi"), inits={"lo": np.float32(-0.5),
                                                  "hi": np.float32(0.7)}),
    "clip-min-only": one("Clip", ("x", "lo"), inits={"lo": np.float32(0.0)}),
    "abs": one("Abs"),
    "exp": one("Exp"),
    "log": make_model(
        [node("Abs", ["x"], ["a"]), node("Log", ["a"], ["y"])]),
    "tile": one("Tile", ("x", "r"), inits={"r": np.array([1, 2, 1, 3], np.int64)}),
    "softplus": one("Softplus"),
    "neg": one("Neg"),
    "softmax-13": one("Softmax", axis=1),
    "softmax-11-coerced": one("Softmax", opset=11, axis=1),
    "log-softmax": one("LogSoftmax", shape=(2, 10)),
    "batchnorm": one("BatchNormalization", ("x", "s", "b", "m", "v"),
                     inits={"s": rand(3), "b": rand(3), "m": rand(3),
                            "v": np.abs(rand(3)) + 0.5}, epsilon=1e-3),
    "lrn": one("LRN", size=3, alpha=1e-2, beta=0.75, bias=2.0),
    "pad-constant": one("Pad", ("x", "p", "v"), inits={
        "p": np.array([0, 0, 1, 2, 0, 1, 0, 3], np.int64), "v": np.float32(1.5)}),
    "pad-reflect": one("Pad", ("x", "p"), mode="reflect",
                       inits={"p": np.array([0, 0, 1, 1, 0, 0, 2, 2], np.int64)}),
    "flatten": one("Flatten", axis=2),
    "transpose": one("Transpose", perm=[0, 2, 3, 1]),
    "concat-with-const": one("Concat", ("x", "c"), axis=1, inits={"c": rand(1, 2, 8, 8)}),
    "split-11-attr": make_model([node("Split", ["x"], ["a", "y"], axis=1, split=[1, 2])],
                                opset=11, outputs=("a", "y")),
    "split-13-input": make_model([node("Split", ["x", "s"], ["a", "y"], axis=2)],
                                 {"s": np.array([3, 5], np.int64)}, opset=13,
                                 outputs=("a", "y")),
    "split-18-uneven": make_model([node("Split", ["x"], ["a", "b", "y"], axis=3,
                                        num_outputs=3)], opset=18, outputs=("a", "b", "y")),
    "slice": one("Slice", ("x", "s", "e", "a", "st"), inits={
        "s": np.array([1, -1], np.int64), "e": np.array([3, -9999], np.int64),
        "a": np.array([1, 3], np.int64), "st": np.array([1, -2], np.int64)}),
    "squeeze-11": one("Squeeze", opset=11, axes=[0], shape=(1, 3, 4)),
    "unsqueeze-13": one("Unsqueeze", ("x", "a"), opset=13,
                        inits={"a": np.array([0, 3], np.int64)}, shape=(3, 4)),
    "reduce-mean-13": one("ReduceMean", opset=13, axes=[2, 3], keepdims=0),
    "reduce-sum-18": one("ReduceSum", ("x", "a"), opset=18,
                         inits={"a": np.array([1], np.int64)}),
    "reduce-max-all": one("ReduceMax", keepdims=1),
    "resize-nearest": one("Resize", ("x", "", "sc"), inits={
        "sc": np.array([1, 1, 2, 2], np.float32)}, mode="nearest"),
    "resize-linear-sizes": one("Resize", ("x", "", "", "sz"), inits={
        "sz": np.array([1, 3, 12, 5], np.int64)}, mode="linear"),
    "gather-scalar": one("Gather", ("x", "i"), inits={"i": np.array(2, np.int64)}, axis=1),
    "identity-output": make_model([node("Relu", ["x"], ["r"]), node("Identity", ["r"], ["y"])]),
    "dropout-cast": make_model([node("Dropout", ["x"], ["d", "mask"]),
                                node("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
                                node("Sigmoid", ["c"], ["y"])]),
    "constant-node": make_model([
        node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 3, 1, 1],
                                                             [1.0, 2.0, 3.0])),
        node("Mul", ["x", "c"], ["y"])]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_operator_matches_onnxruntime(case, tmp_path):
    compare(CASES[case], tmp_path / f"{case}.onnx")


def shape_subgraph_model(opset=13):
    """A PyTorch-style flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with a
    symbolic batch dim, and MatMul + Add (a Linear layer)."""
    nodes = [
        node("Relu", ["x"], ["r"]),
        node("Shape", ["r"], ["shape"]),
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        node("Cast", ["target"], ["target64"], to=TensorProto.INT64),
        node("Reshape", ["r", "target64"], ["flat"]),
        node("MatMul", ["flat", "w"], ["mm"]),
        node("Add", ["mm", "b"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64), "w": rand(3 * 8 * 8, 5), "b": rand(5)}
    return make_model(nodes, inits, opset=opset, symbolic={"x": {0: "N"}})


def test_shape_subgraph_folds_for_the_given_batch(tmp_path):
    model = shape_subgraph_model()
    net = compare(model, tmp_path / "flatten.onnx", input_shape=(3, 3, 8, 8))
    assert net.input_shape == (3, 3, 8, 8)
    assert net.meta["source"]["folded_nodes"] == 5  # Shape, Gather, Unsqueeze, Concat, Cast
    ops = [layer.op for layer in net.layers]
    assert ops == ["Input", "ReLU", "Reshape", "Dense"]  # the Add became the Dense bias
    assert net.layer_by_name[net.layers[-1].name].attrs["bias"] is True


def test_dynamic_batch_defaults_to_one(tmp_path):
    net = compare(shape_subgraph_model(), tmp_path / "flatten.onnx")
    assert net.input_shape == (1, 3, 8, 8)


def test_reference_evaluator_folds_what_numpy_does_not(tmp_path):
    """A constant subgraph with an op outside the numpy folders (ReduceProd) still folds."""
    nodes = [node("ReduceProd", ["c"], ["p"], keepdims=0),
             node("Cast", ["p"], ["p64"], to=TensorProto.INT64),
             node("Reshape", ["x", "t"], ["y0"]),
             node("Mul", ["y0", "pf"], ["y"])]
    inits = {"c": np.array([2, 3], np.int64), "t": np.array([1, -1], np.int64),
             "pf": np.float32(6.0)}
    net = compare(make_model(nodes, inits), tmp_path / "ref.onnx")
    assert net.meta["source"]["folded_nodes"] == 2


def test_weights_are_named_per_operator(tmp_path):
    net = compare(CASES["conv"], tmp_path / "conv.onnx")
    conv = next(layer for layer in net.layers if layer.op == "Conv")
    assert set(net.weights[conv.name]) == {"weight", "bias"}
    np.testing.assert_array_equal(net.weights[conv.name]["weight"], W)


def nhwc_model():
    """TensorFlow's layout: NHWC activations, a Transpose around each Conv, a residual Add,
    a Pad and a ReduceMean in NHWC."""
    to_nchw, to_nhwc = [0, 3, 1, 2], [0, 2, 3, 1]
    nodes = [
        node("Transpose", ["x"], ["t0"], perm=to_nchw),
        node("Conv", ["t0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Transpose", ["c1"], ["h1"], perm=to_nhwc),
        node("Add", ["h1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["r1"]),
        node("Pad", ["r1", "pads"], ["p1"]),
        node("Transpose", ["p1"], ["t1"], perm=to_nchw),
        node("Conv", ["t1", "w2"], ["c2"]),
        node("Transpose", ["c2"], ["h2"], perm=to_nhwc),
        node("Mul", ["h2", "s2"], ["m2"]),
        node("Add", ["m2", "r1"], ["res"]),
        node("Relu", ["res"], ["r2"]),
        node("ReduceMean", ["r2"], ["y"], axes=[1, 2], keepdims=0),
    ]
    inits = {"w1": rand(4, 3, 3, 3), "b1": rand(1, 1, 1, 4), "w2": rand(4, 4, 3, 3, seed=5),
             "s2": rand(4, seed=6), "pads": np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)}
    return make_model(nodes, inits, {"x": (1, 8, 8, 3)}, opset=13)


def test_nhwc_transposes_fold_away(tmp_path):
    net = compare(nhwc_model(), tmp_path / "nhwc.onnx")
    assert net.meta["source"]["transposes_removed"] == 3
    assert [layer.op for layer in net.layers].count("Transpose") == 1  # the input's
    plain = compare(nhwc_model(), tmp_path / "nhwc.onnx")
    import edgecaffe

    unfolded = edgecaffe.load_onnx(tmp_path / "nhwc.onnx", fold_transposes=False)
    assert [layer.op for layer in unfolded.layers].count("Transpose") == 4
    x = rand(1, 8, 8, 3, seed=9)
    np.testing.assert_allclose(plain.forward(x.copy())["y"], unfolded.forward(x.copy())["y"],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 2.5]])
def test_opset9_upsample_is_converted_to_resize(mode, scales, tmp_path):
    """Upsample (opsets 7-9) through onnx's version converter; its asymmetric coordinate
    rule is restored on the converter's Resize."""
    model = make_model([node("Upsample", ["x", "s"], ["y"], mode=mode)],
                       {"s": np.array(scales, np.float32)}, {"x": (1, 2, 5, 7)}, opset=9)
    net = compare(model, tmp_path / "up.onnx")
    assert [layer.op for layer in net.layers] == ["Input", "Resize"]
