"""Every supported Caffe layer type against OpenCV DNN: one small net per hyperparameter combo.

Each net is an Input layer plus the layer under test (plus a helper layer where the type needs
two bottoms), with random weights written by `write_caffemodel`, so the blobs are exactly the
ones chosen here (BatchNorm's scale factor included).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np
import pytest

from conftest import input_layer, inputs_layer, random_input, random_weights
from edgecaffe.model.caffe import LayerBlobs


def layer(name: str, type_: str, bottoms: Sequence[str], tops: Sequence[str],
          params: str = "") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    top = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {bottom} {top} {params} }}\n'


def net(*parts: str) -> str:
    return 'name: "op"\n' + "".join(parts)


def fields(message: str, values: dict) -> str:
    """`message { key: value ... }`; list values become repeated fields, None is left out."""
    items = []
    for key, value in values.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None:
                continue
            if isinstance(item, bool):
                item = "true" if item else "false"
            items.append(f"{key}: {item}")
    return f"{message} {{ {' '.join(items)} }}"


# -- Convolution -------------------------------------------------------------------------------

CONV_CASES = [
    # (input NCHW, convolution_param); kernel_size etc. may be lists.
    pytest.param((1, 3, 12, 12), dict(num_output=8, kernel_size=3, pad=1), id="k3-p1"),
    pytest.param((1, 4, 13, 13), dict(num_output=6, kernel_size=3, stride=2, group=2),
                 id="k3-s2-g2"),
    pytest.param((1, 8, 11, 11), dict(num_output=8, kernel_size=5, pad=2, group=4),
                 id="k5-p2-g4"),
    pytest.param((1, 8, 9, 9), dict(num_output=8, kernel_size=3, pad=1, group=8),
                 id="depthwise-g8"),
    pytest.param((1, 3, 39, 39), dict(num_output=4, kernel_size=11, stride=4), id="k11-s4"),
    pytest.param((1, 3, 41, 37), dict(num_output=4, kernel_size=11, stride=4, pad=2),
                 id="k11-s4-p2-nonsquare"),
    pytest.param((1, 3, 14, 14), dict(num_output=5, kernel_size=3, pad=2, dilation=2),
                 id="k3-dilation2"),
    pytest.param((1, 4, 15, 15), dict(num_output=4, kernel_size=5, stride=2, dilation=2,
                                      group=2), id="k5-s2-dilation2-g2"),
    pytest.param((1, 3, 10, 12), dict(num_output=4, kernel_h=3, kernel_w=5, pad_h=1, pad_w=2,
                                      stride_h=1, stride_w=2), id="kh3-kw5-strided"),
    # pad_h is spelled out: OpenCV ignores pad_w without pad_h (Caffe takes pad_h = 0).
    pytest.param((1, 3, 11, 9), dict(num_output=3, kernel_h=1, kernel_w=3, pad_h=0, pad_w=1),
                 id="kh1-kw3"),
    pytest.param((1, 3, 10, 10), dict(num_output=4, kernel_size=[3, 5], pad=[1, 2]),
                 id="repeated-kernel-size"),
    pytest.param((1, 6, 7, 7), dict(num_output=4, kernel_size=1, bias_term=False),
                 id="k1-no-bias"),
    pytest.param((1, 6, 9, 9), dict(num_output=5, kernel_size=1, stride=2), id="k1-s2"),
    pytest.param((1, 6, 8, 8), dict(num_output=4, kernel_size=1, pad=1), id="k1-p1"),
    pytest.param((2, 4, 9, 9), dict(num_output=6, kernel_size=3, stride=2, pad=1, group=2),
                 id="batch2-k3-s2-p1-g2"),
    pytest.param((2, 3, 16, 16), dict(num_output=8, kernel_size=5, stride=4, pad=1,
                                      bias_term=False), id="batch2-k5-s4-no-bias"),
]


@pytest.mark.parametrize(("shape", "params"), CONV_CASES)
def test_convolution(oracle, rng, shape, params):
    channels = shape[1]
    group = params.get("group", 1)
    kernel = params.get("kernel_size", 1)
    kh, kw = (params["kernel_h"], params["kernel_w"]) if "kernel_h" in params else (
        (kernel[0], kernel[-1]) if isinstance(kernel, list) else (kernel, kernel))
    out = params["num_output"]
    fan_in = channels // group * kh * kw
    blobs = [random_weights(rng, (out, channels // group, kh, kw), fan_in)]
    if params.get("bias_term", True):
        blobs.append(random_weights(rng, (out,)))
    run = oracle(
        net(input_layer(shape), layer("conv", "Convolution", ["data"], ["conv"],
                                      fields("convolution_param", params))),
        layers=[LayerBlobs("conv", "Convolution", blobs, ["data"], ["conv"])],
    )
    assert run.network.layer_by_name["conv"].attrs["group"] == group


# -- Pooling -----------------------------------------------------------------------------------

POOL_CASES = [
    pytest.param((1, 3, 13, 13), dict(kernel_size=3, stride=2), id="13-k3-s2"),
    pytest.param((1, 3, 14, 14), dict(kernel_size=3, stride=2), id="14-k3-s2-clipped"),
    pytest.param((1, 3, 12, 12), dict(kernel_size=3, stride=2), id="12-k3-s2-clipped"),
    pytest.param((1, 3, 7, 7), dict(kernel_size=3, stride=2, pad=1), id="7-k3-s2-p1"),
    pytest.param((1, 3, 6, 6), dict(kernel_size=2, stride=2, pad=1), id="6-k2-s2-p1"),
    pytest.param((1, 3, 5, 5), dict(kernel_size=2, stride=2, pad=1), id="5-k2-s2-p1-dropped"),
    pytest.param((1, 3, 8, 8), dict(kernel_size=3, stride=3), id="8-k3-s3-clipped"),
    pytest.param((2, 4, 15, 15), dict(kernel_size=3, stride=1, pad=1), id="batch2-k3-s1-p1"),
    pytest.param((1, 3, 11, 11), dict(kernel_size=5, stride=1, pad=2), id="k5-s1-p2"),
    pytest.param((1, 3, 11, 11), dict(kernel_size=5, stride=3, pad=2), id="k5-s3-p2"),
    # Stride above the kernel, last column window clipped to one column. (Not W=12: there
    # ceil rounding gives a window wholly past the input, where Caffe itself yields -FLT_MAX / NaN.)
    pytest.param((1, 2, 9, 13), dict(kernel_h=3, kernel_w=2, stride_h=2, stride_w=3),
                 id="kh3-kw2-sh2-sw3"),
    pytest.param((1, 2, 9, 10), dict(kernel_h=2, kernel_w=3, stride_h=2, stride_w=2, pad_h=1,
                                     pad_w=0), id="kh2-kw3-ph1"),
    pytest.param((1, 3, 7, 7), dict(kernel_size=7, stride=1), id="whole-image-kernel"),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(("shape", "params"), POOL_CASES)
def test_pooling(oracle, shape, params, method):
    oracle(net(input_layer(shape), layer("pool", "Pooling", ["data"], ["pool"],
                                         fields("pooling_param", dict(pool=method, **params)))))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 4, 6, 9), (1, 5, 1, 1)])
def test_global_pooling(oracle, shape, method):
    run = oracle(net(input_layer(shape), layer(
        "pool", "Pooling", ["data"], ["pool"],
        fields("pooling_param", dict(pool=method, global_pooling=True)))))
    assert run.ours["pool"].shape == (*shape[:2], 1, 1)


# -- LRN ---------------------------------------------------------------------------------------

LRN_CASES = [
    pytest.param(dict(local_size=5, alpha=1e-4, beta=0.75), id="across-5-alexnet"),
    pytest.param(dict(local_size=3, alpha=1e-3, beta=0.75), id="across-3"),
    pytest.param(dict(local_size=5, alpha=5e-4, beta=0.75, k=2), id="across-5-emotionnet"),
    pytest.param(dict(local_size=5, alpha=0.01, beta=0.5, k=1.5), id="across-5-beta0.5"),
    pytest.param(dict(local_size=7, alpha=1e-3, beta=0.75), id="across-7-wider-than-channels"),
    pytest.param(dict(local_size=3, alpha=1e-3, beta=0.75, norm_region="WITHIN_CHANNEL"),
                 id="within-3"),
    pytest.param(dict(local_size=5, alpha=5e-3, beta=0.75, norm_region="WITHIN_CHANNEL"),
                 id="within-5"),
    pytest.param(dict(local_size=3, alpha=0.1, beta=0.6, norm_region="WITHIN_CHANNEL"),
                 id="within-3-beta0.6"),
]


@pytest.mark.parametrize("params", LRN_CASES)
def test_lrn(oracle, params):
    shape = (2, 6, 7, 8)
    prototxt = net(input_layer(shape),
                   layer("norm", "LRN", ["data"], ["norm"], fields("lrn_param", params)))
    k, beta = params.get("k", 1.0), params["beta"]
    equivalent = None
    if k != 1.0:
        # OpenCV's Caffe importer ignores lrn_param.k (it always uses 1). Caffe's
        # x * (k + alpha/n * S)^-beta equals k^-beta * x * (1 + (alpha/k)/n * S)^-beta, so OpenCV
        # gets that: an LRN with k = 1 and alpha / k, then a Power layer scaling by k^-beta.
        equivalent = net(
            input_layer(shape),
            layer("norm_k1", "LRN", ["data"], ["norm_k1"],
                  fields("lrn_param", {**params, "k": None, "alpha": params["alpha"] / k})),
            layer("norm", "Power", ["norm_k1"], ["norm"],
                  fields("power_param", dict(scale=k ** -beta))),
        )
    run = oracle(prototxt, opencv_prototxt=equivalent, input_scale=20.0)
    # The normalisation must actually bite, or this would only test the identity.
    ratio = np.abs(run.ours["norm"]) / np.maximum(np.abs(run.inputs["data"]), 1e-3)
    assert ratio.min() < 0.99


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("shape, size", [((1, 96, 9, 11), 5), ((2, 13, 4, 4), 7),
                                         ((1, 16, 3, 3), 3)])
def test_lrn_across_in_channel_slices_on_threads(shape, size, threads):
    """Across-channel LRN split in channel slices across our threads (each reading its
    neighbours' squares) against a float64 sum of Caffe's formula, out of place and in place."""
    from unittest import mock

    from edgecaffe.blas import BlasHold
    from edgecaffe.ops import get_op

    x = np.random.default_rng(threads).uniform(-50, 50, shape).astype(np.float32)
    attrs = {"size": size, "alpha": 1e-2, "beta": 0.75, "k": 2.0, "region": "across"}
    half = size // 2
    padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (half, half), (0, 0), (0, 0)))
    total = sum(padded[:, i : i + shape[1]] for i in range(size))
    expected = x * (2.0 + 1e-2 / size * total) ** -0.75
    with mock.patch.object(BlasHold, "split_threads", staticmethod(lambda: threads)):
        (ours,) = get_op("LRN").run([x], {}, attrs)
        (inplace,) = get_op("LRN").run([x.copy()], {}, attrs, inplace=True)
    for y in (ours, inplace):
        assert np.abs(y - expected).max() <= 1e-6 * np.abs(expected).max()
    assert np.abs(ours / x).min() < 0.5  # the normalisation bites


# -- ReLU and PReLU ----------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [None, 0.0, 0.1, 1.0, 2.5, -0.3])
@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (2, 10)])
def test_relu(oracle, shape, slope):
    params = "" if slope is None else fields("relu_param", dict(negative_slope=slope))
    oracle(net(input_layer(shape), layer("relu", "ReLU", ["data"], ["out"], params)))


def conv1x1(rng: np.random.Generator, channels: int, positive: bool = False,
            name: str = "conv") -> tuple[str, LayerBlobs]:
    """A 1x1 convolution `data` -> `name` (channels -> channels): a blob for in-place layers to
    overwrite, and the producer OpenCV fuses activations into. Positive weights and bias keep
    positive inputs positive."""
    weight = random_weights(rng, (channels, channels, 1, 1), channels)
    bias = random_weights(rng, (channels,))
    if positive:
        weight, bias = np.abs(weight), np.abs(bias)
    text = layer(name, "Convolution", ["data"], [name],
                 fields("convolution_param", dict(num_output=channels, kernel_size=1)))
    return text, LayerBlobs(name, "Convolution", [weight, bias], ["data"], [name])


@pytest.mark.parametrize("in_place", [False, True], ids=["separate-top", "in-place-after-conv"])
@pytest.mark.parametrize("channel_shared", [False, True], ids=["per-channel", "shared"])
def test_prelu(oracle, rng, channel_shared, in_place):
    shape = (2, 4, 5, 6)
    slopes = rng.uniform(0.05, 0.8, size=(1,) if channel_shared else (4,)).astype(np.float32)
    if not channel_shared:
        slopes[0] = -0.3  # a negative slope too (Caffe does not constrain the sign)
    params = fields("prelu_param", dict(channel_shared=True)) if channel_shared else ""
    if in_place:
        conv, conv_blobs = conv1x1(rng, 4)
        bottom = top = "conv"
        prefix, weights = conv, [conv_blobs]
    else:
        bottom, top, prefix, weights = "data", "out", "", []
    run = oracle(
        net(input_layer(shape), prefix, layer("prelu", "PReLU", [bottom], [top], params)),
        layers=[*weights, LayerBlobs("prelu", "PReLU", [slopes], [bottom], [top])],
    )
    assert np.any(run.ours[top] < 0)


# -- InnerProduct ------------------------------------------------------------------------------

IP_CASES = [
    pytest.param((1, 3, 4, 4), dict(num_output=10), id="from-4d"),
    pytest.param((2, 3, 4, 4), dict(num_output=7), id="batch2-from-4d"),
    pytest.param((3, 20), dict(num_output=6, axis=1), id="2d-axis1"),
    pytest.param((2, 3, 4, 5), dict(num_output=7, axis=2), id="4d-axis2"),
    pytest.param((2, 3, 4, 5), dict(num_output=5, axis=-1), id="4d-axis-1"),
    pytest.param((2, 3, 2, 2), dict(num_output=6, transpose=True), id="transpose"),
    pytest.param((2, 12), dict(num_output=4, bias_term=False), id="no-bias"),
    pytest.param((1, 8, 2, 2), dict(num_output=5, bias_term=False, transpose=True),
                 id="transpose-no-bias"),
]


@pytest.mark.parametrize(("shape", "params"), IP_CASES)
def test_inner_product(oracle, rng, shape, params):
    axis = params.get("axis", 1) % len(shape)
    features, out = prod(shape[axis:]), params["num_output"]
    transpose = params.get("transpose", False)
    weight_shape = (features, out) if transpose else (out, features)
    blobs = [random_weights(rng, weight_shape, features)]
    if params.get("bias_term", True):
        blobs.append(random_weights(rng, (out,)))
    equivalent = equivalent_layers = None
    if transpose:
        # OpenCV's Caffe importer ignores inner_product_param.transpose (it always reads the
        # weight as O x K), so OpenCV gets the same product as a plain layer with the weight's
        # transpose.
        equivalent = net(input_layer(shape), layer(
            "fc", "InnerProduct", ["data"], ["fc"],
            fields("inner_product_param", {**params, "transpose": None})))
        equivalent_layers = [LayerBlobs("fc", "InnerProduct",
                                        [np.ascontiguousarray(blobs[0].T), *blobs[1:]],
                                        ["data"], ["fc"])]
    run = oracle(
        net(input_layer(shape), layer("fc", "InnerProduct", ["data"], ["fc"],
                                      fields("inner_product_param", params))),
        layers=[LayerBlobs("fc", "InnerProduct", blobs, ["data"], ["fc"])],
        opencv_prototxt=equivalent, opencv_layers=equivalent_layers,
    )
    assert run.ours["fc"].shape == (*shape[:axis], out)


# -- Dropout, Softmax --------------------------------------------------------------------------


def test_dropout_is_identity(oracle):
    # A layer after the dropout, so that OpenCV has something to compute.
    run = oracle(net(
        input_layer((2, 3, 4, 5)),
        layer("drop", "Dropout", ["data"], ["drop"],
              fields("dropout_param", dict(dropout_ratio=0.7))),
        layer("relu", "ReLU", ["drop"], ["out"]),
    ))
    np.testing.assert_array_equal(run.ours["out"], np.maximum(run.inputs["data"], 0))


def test_dropout_in_place_after_conv(oracle, rng):
    conv, conv_blobs = conv1x1(rng, 3)
    prototxt = net(input_layer((2, 3, 4, 5)), conv,
                   layer("drop", "Dropout", ["conv"], ["conv"]),
                   layer("relu", "ReLU", ["conv"], ["out"]))
    run = oracle(prototxt, layers=[conv_blobs])
    assert run.network.layer_by_name["relu"].inputs == ["conv"]
    # The in-place dropout's own output is compared with OpenCV's fusion off: with it on,
    # OpenCV 4.14 reports uninitialised memory as that layer's output.
    run = oracle(prototxt, layers=[conv_blobs], outputs=["conv", "out"], opencv_fusion=False)
    assert run.pins["conv"] == ("drop", 0)


SOFTMAX_CASES = [
    pytest.param((3, 10), None, id="2d-default"),
    pytest.param((3, 10), 1, id="2d-axis1"),
    pytest.param((2, 5, 3, 4), 1, id="4d-axis1"),
    pytest.param((2, 5, 3, 4), 2, id="4d-axis2"),
    pytest.param((2, 5, 3, 4), 3, id="4d-axis3"),
    pytest.param((2, 5, 3, 4), -1, id="4d-axis-1"),
    pytest.param((4, 5), 0, id="2d-axis0"),
]


@pytest.mark.parametrize(("shape", "axis"), SOFTMAX_CASES)
def test_softmax(oracle, shape, axis):
    params = "" if axis is None else fields("softmax_param", dict(axis=axis))
    run = oracle(net(input_layer(shape), layer("prob", "Softmax", ["data"], ["prob"], params)),
                 input_scale=5.0)
    np.testing.assert_allclose(run.ours["prob"].sum(axis=1 if axis is None else axis), 1.0,
                               rtol=1e-5)


# -- BatchNorm, Scale, Bias --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "eps", "explicit_global_stats"),
    [
        pytest.param(1.0, None, True, id="factor1"),
        pytest.param(0.5, None, True, id="factor0.5"),
        pytest.param(999.0, 1e-3, True, id="factor999-eps1e-3"),
        pytest.param(999.98, 1e-5, False, id="factor999.98-default-stats"),
        pytest.param(0.0, 1e-2, True, id="factor0"),
    ],
)
def test_batch_norm(oracle, rng, factor, eps, explicit_global_stats):
    shape = (2, 5, 4, 3)
    mean = (rng.standard_normal(5) * 3 * max(factor, 1.0)).astype(np.float32)
    var = (rng.uniform(0.5, 4.0, 5) * max(factor, 1.0)).astype(np.float32)
    params = {"eps": eps, "use_global_stats": True if explicit_global_stats else None}
    param_text = fields("batch_norm_param", params) if any(
        v is not None for v in params.values()) else ""
    run = oracle(
        net(input_layer(shape), layer("bn", "BatchNorm", ["data"], ["bn"], param_text)),
        layers=[LayerBlobs("bn", "BatchNorm", [mean, var, np.array([factor], np.float32)],
                           ["data"], ["bn"])],
    )
    assert not np.allclose(run.ours["bn"], run.inputs["data"], rtol=1e-2)


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        pytest.param((2, 4, 3, 5), dict(), id="per-channel"),
        pytest.param((2, 4, 3, 5), dict(bias_term=True), id="per-channel-bias"),
        pytest.param((2, 4, 3, 5), dict(axis=1, num_axes=2, bias_term=True), id="axis1-2axes"),
        pytest.param((3, 6), dict(bias_term=True), id="2d"),
        pytest.param((2, 4, 3, 5), dict(axis=1, num_axes=0), id="scalar"),
    ],
)
def test_scale(oracle, rng, shape, params):
    axis = params.get("axis", 1)
    num_axes = params.get("num_axes", 1)
    span = shape[axis: axis + num_axes]
    blobs = [rng.uniform(-2.0, 2.0, span).astype(np.float32)]
    if params.get("bias_term"):
        blobs.append(random_weights(rng, span))
    oracle(
        net(input_layer(shape), layer("scale", "Scale", ["data"], ["scale"],
                                      fields("scale_param", params))),
        layers=[LayerBlobs("scale", "Scale", blobs, ["data"], ["scale"])],
    )


def test_scale_two_bottoms_se_block(oracle, rng):
    """Squeeze-and-excitation: Scale(data, sigmoid(fc(global pool(data)))) along axis 0."""
    shape = (2, 4, 5, 5)
    prototxt = net(
        input_layer(shape),
        layer("squeeze", "Pooling", ["data"], ["squeeze"],
              fields("pooling_param", dict(pool="AVE", global_pooling=True))),
        layer("fc", "InnerProduct", ["squeeze"], ["fc"],
              fields("inner_product_param", dict(num_output=4))),
        layer("gate", "Sigmoid", ["fc"], ["fc"]),
        layer("excite", "Scale", ["data", "fc"], ["excite"], fields("scale_param", dict(axis=0))),
    )
    blobs = [LayerBlobs("fc", "InnerProduct",
                        [random_weights(rng, (4, 4), 4), random_weights(rng, (4,))],
                        ["squeeze"], ["fc"])]
    run = oracle(prototxt, layers=blobs)
    assert run.network.layer_by_name["excite"].params == {}


@pytest.mark.parametrize(
    ("scale_shape", "axis"),
    [
        pytest.param((4,), 1, id="axis1-channels"),
        pytest.param((4, 3), 1, id="axis1-2axes"),
        pytest.param((2, 4), 0, id="axis0-batch-channels"),
    ],
)
def test_scale_two_bottoms_with_bias(oracle, rng, scale_shape, axis):
    """Scale with the factor as a second bottom and a learned bias of the factor's shape."""
    shapes = {"data": (2, 4, 3, 5), "factor": scale_shape}
    bias = random_weights(rng, scale_shape)
    prototxt = net(inputs_layer(shapes), layer(
        "scale", "Scale", ["data", "factor"], ["scale"],
        fields("scale_param", dict(axis=axis, bias_term=True))))
    # OpenCV mishandles a two-bottom Scale with a bias blob (its output matches no reading of
    # the blob), so it gets the same function as a two-bottom Scale without bias followed by a
    # one-bottom Scale of ones with that bias over the same axes.
    equivalent = net(
        inputs_layer(shapes),
        layer("multiply", "Scale", ["data", "factor"], ["multiply"],
              fields("scale_param", dict(axis=axis))),
        layer("scale", "Scale", ["multiply"], ["scale"],
              fields("scale_param", dict(axis=axis, num_axes=len(scale_shape), bias_term=True))),
    )
    run = oracle(
        prototxt,
        layers=[LayerBlobs("scale", "Scale", [bias], ["data", "factor"], ["scale"])],
        opencv_prototxt=equivalent,
        opencv_layers=[LayerBlobs("scale", "Scale", [np.ones(scale_shape, np.float32), bias],
                                  ["multiply"], ["scale"])],
    )
    view = (1,) * axis + scale_shape + (1,) * (4 - axis - len(scale_shape))
    np.testing.assert_allclose(
        run.ours["scale"],
        run.inputs["data"] * run.inputs["factor"].reshape(view) + bias.reshape(view), rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        pytest.param((2, 4, 3, 5), dict(), id="per-channel"),
        pytest.param((3, 6), dict(), id="2d"),
        pytest.param((2, 4, 3, 5), dict(axis=1, num_axes=3), id="axis1-3axes"),
    ],
)
def test_bias(oracle, rng, shape, params):
    axis, num_axes = params.get("axis", 1), params.get("num_axes", 1)
    span = shape[axis: axis + num_axes]
    bias = random_weights(rng, span) * 5
    text = fields("bias_param", params) if params else ""
    # OpenCV has no Caffe `Bias` layer ("Can't create layer of type Bias"); it gets the same
    # function as a Scale layer over the same axes with unit scale and this bias.
    equivalent = net(input_layer(shape), layer(
        "bias", "Scale", ["data"], ["bias"],
        fields("scale_param", dict(axis=axis, num_axes=num_axes, bias_term=True))))
    run = oracle(
        net(input_layer(shape), layer("bias", "Bias", ["data"], ["bias"], text)),
        layers=[LayerBlobs("bias", "Bias", [bias], ["data"], ["bias"])],
        opencv_prototxt=equivalent,
        opencv_layers=[LayerBlobs("bias", "Scale", [np.ones(span, np.float32), bias],
                                  ["data"], ["bias"])],
    )
    view = (1,) * axis + span + (1,) * (len(shape) - axis - len(span))
    np.testing.assert_allclose(run.ours["bias"], run.inputs["data"] + bias.reshape(view))


# -- Concat, Slice, Eltwise --------------------------------------------------------------------

CONCAT_CASES = [
    pytest.param({"a": (2, 3, 4, 5), "b": (2, 2, 4, 5), "c": (2, 1, 4, 5)}, None, id="default"),
    pytest.param({"a": (2, 3, 4, 5), "b": (2, 2, 4, 5)}, 1, id="axis1"),
    pytest.param({"a": (1, 3, 4, 5), "b": (1, 3, 2, 5)}, 2, id="axis2"),
    pytest.param({"a": (1, 3, 4, 5), "b": (1, 3, 4, 1)}, 3, id="axis3"),
    pytest.param({"a": (1, 3, 4, 5), "b": (1, 3, 4, 2)}, -1, id="axis-1"),
    pytest.param({"a": (2, 7), "b": (2, 3)}, 1, id="2d"),
]


@pytest.mark.parametrize(("shapes", "axis"), CONCAT_CASES)
def test_concat(oracle, shapes, axis):
    params = "" if axis is None else fields("concat_param", dict(axis=axis))
    run = oracle(net(inputs_layer(shapes), layer("cat", "Concat", list(shapes), ["cat"], params)))
    expected = np.concatenate(list(run.inputs.values()), axis=1 if axis is None else axis)
    np.testing.assert_array_equal(run.ours["cat"], expected)


def test_concat_axis0(oracle):
    """Concatenating along the batch axis."""
    shapes = {"a": (1, 3, 4, 5), "b": (2, 3, 4, 5)}
    oracle(net(inputs_layer(shapes),
               layer("cat", "Concat", list(shapes), ["cat"], fields("concat_param", dict(axis=0)))))


SLICE_CASES = [
    pytest.param((2, 6, 4, 5), dict(axis=1, slice_point=[1, 3]), 3, id="axis1-points"),
    pytest.param((2, 6, 4, 5), dict(), 2, id="default-equal-halves"),
    pytest.param((2, 6, 4, 5), dict(axis=1), 3, id="axis1-equal-thirds"),
    pytest.param((1, 3, 8, 5), dict(axis=2, slice_point=[5]), 2, id="axis2-points"),
    pytest.param((1, 3, 4, 6), dict(axis=3), 2, id="axis3-equal"),
    pytest.param((1, 3, 4, 6), dict(axis=-1, slice_point=[2, 3]), 3, id="axis-1-points"),
    pytest.param((2, 10), dict(axis=1, slice_point=[4]), 2, id="2d"),
    pytest.param((4, 6, 2, 2), dict(slice_dim=1, slice_point=[2]), 2, id="legacy-slice-dim"),
]


@pytest.mark.parametrize(("shape", "params", "parts"), SLICE_CASES)
def test_slice(oracle, shape, params, parts):
    tops = [f"part{i}" for i in range(parts)]
    text = fields("slice_param", params) if params else ""
    axis = params.get("axis", params.get("slice_dim", 1))
    equivalent = None
    if "slice_point" not in params:
        # OpenCV's Caffe importer cannot split into equal parts without slice points (it asserts
        # "splits > 0"); it gets the equivalent explicit points.
        points = [shape[axis] // parts * i for i in range(1, parts)]
        equivalent = net(input_layer(shape), layer(
            "slice", "Slice", ["data"], tops,
            fields("slice_param", dict(axis=axis, slice_point=points))))
    run = oracle(net(input_layer(shape), layer("slice", "Slice", ["data"], tops, text)),
                 opencv_prototxt=equivalent)
    np.testing.assert_array_equal(np.concatenate([run.ours[t] for t in tops], axis=axis),
                                  run.inputs["data"])


ELTWISE_CASES = [
    pytest.param(2, dict(), id="sum-default"),
    pytest.param(2, dict(operation="SUM"), id="sum"),
    pytest.param(2, dict(operation="SUM", coeff=[0.5, -2.0]), id="sum-coeff"),
    pytest.param(3, dict(operation="SUM", coeff=[1.0, -1.0, 0.25]), id="sum3-coeff"),
    pytest.param(2, dict(operation="PROD"), id="prod"),
    pytest.param(3, dict(operation="PROD"), id="prod3"),
    pytest.param(2, dict(operation="MAX"), id="max"),
    pytest.param(3, dict(operation="MAX"), id="max3"),
]


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 7)], ids=["4d", "2d"])
@pytest.mark.parametrize(("count", "params"), ELTWISE_CASES)
def test_eltwise(oracle, shape, count, params):
    names = ["a", "b", "c"][:count]
    text = fields("eltwise_param", params) if params else ""
    oracle(net(inputs_layer(dict.fromkeys(names, shape)),
               layer("elt", "Eltwise", names, ["elt"], text)))


def test_eltwise_in_place_over_first_bottom(oracle, rng):
    """A residual join written in place into its first bottom (ResNet's `res2a: res2a`)."""
    prototxt = net(
        input_layer((1, 4, 6, 6)),
        layer("conv", "Convolution", ["data"], ["conv"],
              fields("convolution_param", dict(num_output=4, kernel_size=3, pad=1))),
        layer("sum", "Eltwise", ["conv", "data"], ["conv"]),
        layer("relu", "ReLU", ["conv"], ["conv"]),
    )
    blobs = [random_weights(rng, (4, 4, 3, 3), 36), random_weights(rng, (4,))]
    oracle(prototxt, layers=[LayerBlobs("conv", "Convolution", blobs, ["data"], ["conv"])])


# -- Flatten, Reshape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        pytest.param((2, 3, 4, 5), dict(), id="default"),
        pytest.param((2, 3, 4, 5), dict(axis=2), id="axis2"),
        pytest.param((2, 3, 4, 5), dict(axis=1, end_axis=2), id="axis1-end2"),
        pytest.param((2, 3, 4, 5), dict(axis=0, end_axis=1), id="axis0-end1"),
        pytest.param((2, 3, 4, 5), dict(axis=-3, end_axis=-2), id="negative-axes"),
    ],
)
def test_flatten(oracle, shape, params):
    text = fields("flatten_param", params) if params else ""
    run = oracle(net(input_layer(shape), layer("flat", "Flatten", ["data"], ["flat"], text)))
    np.testing.assert_array_equal(run.ours["flat"].reshape(-1), run.inputs["data"].reshape(-1))


RESHAPE_CASES = [
    # (input shape, shape dims, other reshape_param fields, what OpenCV gets instead or None)
    pytest.param((2, 3, 4, 5), [0, -1], {}, None, id="0,-1"),
    pytest.param((2, 3, 4, 5), [0, 0, -1], {}, None, id="0,0,-1"),
    pytest.param((2, 3, 4, 5), [0, 2, -1, 5], {}, None, id="0,2,-1,5"),
    pytest.param((2, 3, 4, 5), [-1, 12, 5], {}, None, id="-1,12,5"),
    pytest.param((2, 6, 2, 2), [0, 3, 2, 2, 2], {}, None, id="to-5d"),
    pytest.param((2, 3, 4, 5), [2, 10], dict(axis=2), None, id="axis2"),
    pytest.param((2, 3, 4, 5), [-1], dict(axis=1, num_axes=2), None, id="axis1-2axes"),
    # OpenCV rejects negative axes (Caffe reads axis a < 0 as rank + a + 1) and appending axes
    # after the last one, so those get the same reshape spelled with axis >= 0 / axis 0.
    pytest.param((2, 3, 4, 5), [2, -1], dict(axis=-3), ([2, -1], dict(axis=2)), id="axis-3"),
    pytest.param((2, 3, 4, 5), [1], dict(axis=-1), ([0, 0, 0, 0, 1], {}), id="axis-1-appends"),
    pytest.param((2, 12), [0, 3, 2, 2], {}, None, id="2d-to-4d"),
]


@pytest.mark.parametrize(("shape", "dims", "params", "opencv"), RESHAPE_CASES)
def test_reshape(oracle, shape, dims, params, opencv):
    def prototxt(dims, params):
        text = "reshape_param { shape { " + " ".join(f"dim: {d}" for d in dims) + " } " + " ".join(
            f"{k}: {v}" for k, v in params.items()) + " }"
        # A TanH after the reshape, so the reshaped blob feeds a computing layer.
        return net(input_layer(shape),
                   layer("reshape", "Reshape", ["data"], ["reshaped"], text),
                   layer("act", "TanH", ["reshaped"], ["act"]))

    run = oracle(prototxt(dims, params), opencv_prototxt=opencv and prototxt(*opencv),
                 outputs=["reshaped", "act"],
                 input_scale=2.0)
    np.testing.assert_array_equal(run.ours["reshaped"].reshape(-1),
                                  run.inputs["data"].reshape(-1))


# -- elementwise activations -------------------------------------------------------------------

ACTIVATION_CASES = [
    pytest.param("Sigmoid", "", False, id="sigmoid"),
    pytest.param("TanH", "", False, id="tanh"),
    pytest.param("AbsVal", "", False, id="absval"),
    pytest.param("BNLL", "", False, id="bnll"),
    pytest.param("ELU", "", False, id="elu-default"),
    pytest.param("ELU", fields("elu_param", dict(alpha=0.5)), False, id="elu-alpha0.5"),
    pytest.param("Power", fields("power_param", dict(power=2, scale=0.5, shift=1)), True,
                 id="power2-scale0.5-shift1"),
    pytest.param("Power", fields("power_param", dict(power=1, scale=-2, shift=3)), False,
                 id="power1-affine"),
    pytest.param("Power", fields("power_param", dict(power=0.5, scale=2)), True,
                 id="power0.5"),
    pytest.param("Power", fields("power_param", dict(power=3)), False, id="power3"),
    pytest.param("Power", "", False, id="power-default-identity"),
    pytest.param("Exp", "", False, id="exp-default"),
    pytest.param("Exp", fields("exp_param", dict(base=2, scale=0.5, shift=1)), False,
                 id="exp-base2"),
    pytest.param("Exp", fields("exp_param", dict(base=10, scale=-0.25)), False,
                 id="exp-base10-negative-scale"),
]


@pytest.mark.parametrize("in_place", [False, True], ids=["separate-top", "in-place-after-conv"])
@pytest.mark.parametrize(("type_", "params", "positive"), ACTIVATION_CASES)
def test_activation(oracle, rng, type_, params, positive, in_place):
    shape = (2, 3, 4, 5)
    # Inputs of several magnitudes, so both the linear and the saturated ranges are exercised.
    x = random_input(rng, shape, 8.0, positive)
    x[0, 0, 0, :3] = [20.0, 45.0, 0.5] if positive else [-45.0, 45.0, 0.0]
    if in_place:
        # conv -> act in place: the pattern of real nets, and one OpenCV fuses into the conv.
        conv, conv_blobs = conv1x1(rng, 3, positive)
        run = oracle(net(input_layer(shape), conv, layer("act", type_, ["conv"], ["conv"], params)),
                     layers=[conv_blobs], inputs=x)
        assert run.pins == {"conv": ("act", 0)}
    else:
        oracle(net(input_layer(shape), layer("act", type_, ["data"], ["out"], params)), inputs=x)
