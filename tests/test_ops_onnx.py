"""The format-neutral operators against onnxruntime: one-node ONNX graphs, many attributes.

Each case builds a single-node ONNX model with `onnx.helper` (constant inputs such as pads,
scales or axes are initializers), runs it in onnxruntime, and runs our operator on the same
input and weights, through its shape inference and kernel. Agreement: 1e-5 of the output's
scale. onnx and onnxruntime are in the `test` extra and imported unconditionally, so a CI
without them fails instead of skipping.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecaffe.ops import get_op

OPSET = 19
TOL = 1e-5


def run_onnx(op_type: str, x: np.ndarray, attrs: dict, consts: dict | None = None,
             order: list[str] | None = None) -> np.ndarray:
    """One-node graph `op_type(x, *consts)`; `order` names the node's inputs ('' = absent)."""
    consts = consts or {}
    names = order if order is not None else ["x", *consts]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def run_ours(op: str, x: np.ndarray, attrs: dict, weights: dict | None = None) -> np.ndarray:
    kernel = get_op(op)
    expected = kernel.output_shapes([x.shape], attrs)[0]
    params = kernel.param_shapes([x.shape], attrs)
    weights = weights or {}
    assert {k: tuple(v.shape) for k, v in weights.items()} == params
    (y,) = kernel.run([x.copy()], weights, attrs)
    assert y.dtype == np.float32
    assert y.shape == expected, f"shape inference {expected} != kernel output {y.shape}"
    return y


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape, f"ours {ours.shape} != onnxruntime {ref.shape}"
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    error = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    assert error <= TOL * scale, f"max abs error {error:.3g} > {TOL * scale:.3g}"


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- ConvTranspose ------------------------------------------------------------------------------

CONV_T_CASES = [
    # (input NCHW, out_channels, kernel, stride, pads (hb, wb, he, we), dilation, group,
    #  output_padding, bias)
    pytest.param((1, 3, 5, 5), 4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, (0, 0), True,
                 id="k3"),
    pytest.param((1, 4, 6, 7), 6, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1, (0, 0), True,
                 id="k4-s2-p1-fcn-upsample"),
    pytest.param((2, 4, 5, 6), 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, (1, 1), True,
                 id="batch2-g2-output-padding"),
    pytest.param((1, 6, 4, 5), 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, (0, 0), False,
                 id="depthwise-no-bias"),
    pytest.param((1, 3, 5, 4), 5, (3, 2), (2, 3), (0, 1, 2, 0), (1, 1), 1, (1, 2), True,
                 id="asymmetric-pads-kernel-stride"),
    pytest.param((1, 2, 6, 6), 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2, (0, 0), True,
                 id="dilation2-g2"),
    pytest.param((1, 3, 4, 4), 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (0, 0), True,
                 id="k1"),
    pytest.param((1, 3, 3, 3), 3, (16, 16), (8, 8), (4, 4, 4, 4), (1, 1), 3, (0, 0), False,
                 id="k16-s8-bilinear-style-g3"),
    pytest.param((1, 2, 4, 4), 3, (5, 3), (3, 2), (0, 0, 0, 0), (2, 3), 1, (2, 1), True,
                 id="dilation-stride-mixed"),
]


@pytest.mark.parametrize(
    ("shape", "out", "kernel", "stride", "pads", "dilation", "group", "output_padding", "bias"),
    CONV_T_CASES,
)
def test_conv_transpose(shape, out, kernel, stride, pads, dilation, group, output_padding,
                        bias):
    x = rand(*shape)
    weight = rand(shape[1], out // group, *kernel, seed=1)
    b = rand(out, seed=2)
    consts = {"w": weight, "b": b} if bias else {"w": weight}
    ref = run_onnx("ConvTranspose", x, dict(
        kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
        dilations=list(dilation), group=group, output_padding=list(output_padding)), consts)
    attrs = dict(out_channels=out, kernel=list(kernel), stride=list(stride), pads=list(pads),
                 dilation=list(dilation), group=group, output_padding=list(output_padding),
                 bias=bias)
    weights = {"weight": weight, "bias": b} if bias else {"weight": weight}
    assert_close(run_ours("ConvTranspose", x, attrs, weights), ref)


# -- Transpose ----------------------------------------------------------------------------------


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [3, 2, 1, 0], [1, 0, 2, 3], None])
def test_transpose(perm):
    x = rand(2, 3, 4, 5)
    attrs = {} if perm is None else {"perm": perm}
    assert_close(run_ours("Transpose", x, {"perm": perm}), run_onnx("Transpose", x, attrs))


# -- Clip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(-0.5, 0.5), (0.0, 6.0), (None, 0.3), (-0.2, None),
                                           (None, None), (0.5, -0.5)])
def test_clip(low, high):
    x = rand(1, 3, 5, 5)
    consts, order = {}, ["x"]
    if low is not None:
        consts["lo"] = np.float32(low)
    order.append("lo" if low is not None else "")
    if high is not None:
        consts["hi"] = np.float32(high)
    order.append("hi" if high is not None else "")
    ref = run_onnx("Clip", x, {}, consts, order)
    assert_close(run_ours("Clip", x, {"min": low, "max": high}), ref)


# -- Reduce -------------------------------------------------------------------------------------

REDUCE_ONNX = {"sum": "ReduceSum", "mean": "ReduceMean", "asum": "ReduceL1",
               "sumsq": "ReduceSumSquare", "l2": "ReduceL2", "max": "ReduceMax",
               "min": "ReduceMin", "prod": "ReduceProd", "logsumexp": "ReduceLogSumExp"}


@pytest.mark.parametrize("operation", list(REDUCE_ONNX))
@pytest.mark.parametrize(("axes", "keepdims"), [([1], 1), ([2, 3], 0), ([-1], 1), (None, 0),
                                                ([0, 2], 1), ([1, 2, 3], 0)])
def test_reduce(operation, axes, keepdims):
    x = rand(2, 3, 4, 5)
    if operation == "prod":
        x = (1 + 0.1 * x).astype(np.float32)  # keep the product of 120 values finite
    consts = {} if axes is None else {"axes": np.array(axes, dtype=np.int64)}
    ref = run_onnx(REDUCE_ONNX[operation], x, {"keepdims": keepdims}, consts)
    ours = run_ours("Reduce", x, {"operation": operation, "axes": axes,
                                  "keepdims": bool(keepdims)})
    assert_close(ours, ref)


def test_reduce_coeff_scales_the_result():
    x = rand(2, 3, 4)
    ours = run_ours("Reduce", x, {"operation": "sum", "axes": [1, 2], "keepdims": False,
                                  "coeff": -2.5})
    ref = run_onnx("ReduceSum", x, {"keepdims": 0}, {"axes": np.array([1, 2], dtype=np.int64)})
    assert_close(ours, -2.5 * ref)


# -- Resize -------------------------------------------------------------------------------------

RESIZE_CASES = [
    # (input NCHW, mode, transform, nearest_mode, sizes, scales)
    ("linear", "half_pixel", None, None, (2.0, 2.0)),
    ("linear", "half_pixel", None, (7, 3), None),
    ("linear", "align_corners", None, (11, 9), None),
    ("linear", "align_corners", None, (3, 2), None),
    ("linear", "asymmetric", None, None, (3.0, 1.5)),
    ("linear", "pytorch_half_pixel", None, (1, 10), None),
    ("linear", "pytorch_half_pixel", None, (9, 13), None),
    ("linear", "half_pixel", None, None, (0.5, 0.6)),
    ("nearest", "asymmetric", "floor", None, (2.0, 2.0)),
    ("nearest", "asymmetric", "floor", None, (3.0, 4.0)),
    ("nearest", "half_pixel", "round_prefer_floor", (11, 7), None),
    ("nearest", "half_pixel", "round_prefer_ceil", (11, 7), None),
    ("nearest", "align_corners", "round_prefer_floor", (9, 13), None),
    ("nearest", "asymmetric", "ceil", (10, 9), None),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil", None, (0.5, 2.0)),
    ("nearest", "half_pixel", "floor", (3, 4), None),
    # Exact ties (x' = k + 0.5), where the rounding rules differ.
    ("nearest", "half_pixel", "round_prefer_floor", None, (0.5, 0.5)),
    ("nearest", "half_pixel", "round_prefer_ceil", None, (0.5, 0.5)),
    ("nearest", "asymmetric", "round_prefer_floor", None, (2.0, 2.0)),
    ("nearest", "asymmetric", "round_prefer_ceil", None, (2.0, 2.0)),
]


@pytest.mark.parametrize(("mode", "transform", "nearest_mode", "sizes", "scales"), RESIZE_CASES)
def test_resize(mode, transform, nearest_mode, sizes, scales):
    x = rand(1, 2, 5, 6)
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    if nearest_mode:
        attrs["nearest_mode"] = nearest_mode
    if sizes is not None:
        consts = {"sizes": np.array([1, 2, *sizes], dtype=np.int64)}
        order = ["x", "", "", "sizes"]
    else:
        consts = {"scales": np.array([1, 1, *scales], dtype=np.float32)}
        order = ["x", "", "scales"]
    ref = run_onnx("Resize", x, attrs, consts, order)
    ours = run_ours("Resize", x, {**attrs, "sizes": sizes, "scales": scales})
    assert_close(ours, ref)


# -- Pad ----------------------------------------------------------------------------------------

PAD_CASES = [
    ("constant", [0, 0, 1, 2, 0, 0, 3, 1], 0.0),
    ("constant", [0, 1, 1, 0, 1, 0, 0, 2], -1.5),
    ("reflect", [0, 0, 2, 1, 0, 0, 1, 3], 0.0),
    ("edge", [0, 0, 3, 3, 0, 0, 2, 4], 0.0),
    ("wrap", [0, 0, 1, 2, 0, 0, 2, 1], 0.0),
    ("constant", [0, 0, -1, 2, 0, 0, 1, -2], 0.5),
    ("edge", [1, 0, 0, 1, 0, 2, 1, 0], 0.0),
]


@pytest.mark.parametrize(("mode", "pads", "value"), PAD_CASES)
def test_pad(mode, pads, value):
    x = rand(1, 2, 4, 5)
    consts = {"pads": np.array(pads, dtype=np.int64)}
    order = ["x", "pads"]
    if mode == "constant":
        consts["value"] = np.float32(value)
        order.append("value")
    ref = run_onnx("Pad", x, {"mode": mode}, consts, order)
    assert_close(run_ours("Pad", x, {"mode": mode, "pads": pads, "value": value}), ref)


def test_bad_attributes_raise_op_errors():
    from edgecaffe.ops import OpError

    with pytest.raises(OpError, match="perm"):
        get_op("Transpose").output_shapes([(1, 2, 3)], {"perm": [0, 0, 1]})
    with pytest.raises(OpError, match="reduce operation"):
        get_op("Reduce").output_shapes([(1, 2)], {"operation": "median"})
    with pytest.raises(OpError, match="coordinate_transformation_mode"):
        get_op("Resize").output_shapes([(1, 1, 2, 2)], {
            "mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
            "sizes": (4, 4)})
    with pytest.raises(OpError, match="reflect"):
        get_op("Pad").output_shapes([(1, 1, 2, 2)], {"mode": "reflect",
                                                     "pads": [0, 0, 2, 0, 0, 0, 0, 0]})
    with pytest.raises(OpError, match="group"):
        get_op("ConvTranspose").param_shapes([(1, 3, 4, 4)], {
            "group": 2, "out_channels": 4, "kernel": [3, 3], "bias": True})


def test_conv_transpose_in_bands_of_kernel_rows(monkeypatch):
    """A tiny band limit splits the kernel rows into bands; the result must not change."""
    import edgecaffe.ops.conv_transpose as module

    monkeypatch.setattr(module, "_BAND_FLOATS", 200)
    x, weight, bias = rand(2, 4, 5, 6), rand(4, 3, 5, 3, seed=1), rand(6, seed=2)
    attrs = dict(out_channels=6, kernel=[5, 3], stride=[2, 3], pads=[1, 2, 0, 1],
                 dilation=[2, 1], group=2, output_padding=[1, 0], bias=True)
    assert 200 // (6 * 3 * 5 * 6) < 5  # several bands of kernel rows
    ref = run_onnx("ConvTranspose", x, dict(
        kernel_shape=[5, 3], strides=[2, 3], pads=[1, 2, 0, 1], dilations=[2, 1], group=2,
        output_padding=[1, 0]), {"w": weight, "b": bias})
    assert_close(run_ours("ConvTranspose", x, attrs, {"weight": weight, "bias": bias}), ref)
