"""The SSD family (Normalize, Permute, PriorBox, DetectionOutput) against OpenCV DNN, which
implements them for the res10 face detector.

pycaffe 1.0.0 (BVLC) has none of these layers, so the SSD fork's source (weiliu89/caffe, branch
ssd) is the specification our kernels follow, and OpenCV is the independent second opinion.
Where OpenCV 4.14 departs from the fork, the test says so and asks OpenCV about an equivalent
net, or checks the rule by hand:
* PriorBox: OpenCV's proto defaults `clip` to true (the fork: false), and it ignores img_size /
  img_h / img_w (the fork uses them instead of the image's size);
* Normalize: OpenCV refuses a shared scale without across_spatial and a per-channel scale with it;
* Permute: OpenCV wants every axis in `order` (the fork completes a short order);
* DetectionOutput: OpenCV pads its output with zero rows up to keep_top_k (the fork outputs the
  kept detections only), orders rows by score across labels (the fork: by label, then score),
  ignores nms_param.eta, lacks CORNER_SIZE, needs one-channel priors with
  variance_encoded_in_target, and corrupts its heap with keep_top_k: -1.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close, input_layer, inputs_layer, opencv_forward
from edgecaffe.model.caffe import LayerBlobs, load_caffe
from test_ops_opencv import fields, layer, net

# -- Normalize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("across_spatial", [False, True])
@pytest.mark.parametrize("channel_shared", [False, True])
@pytest.mark.parametrize("shape", [(1, 6, 5, 7), (2, 3, 4, 4)])
def test_normalize(oracle, rng, shape, across_spatial, channel_shared):
    scale = rng.uniform(5, 25, 1 if channel_shared else shape[1]).astype(np.float32)

    def proto(shared: bool) -> str:
        params = fields("norm_param", dict(across_spatial=across_spatial, channel_shared=shared))
        return net(input_layer(shape), layer("norm", "Normalize", ["data"], ["norm"], params))

    extra = {}
    if across_spatial and not channel_shared:
        # OpenCV asserts a single scale across the spatial axes: Normalize with scale 1 then
        # a Scale layer (named like ours, so it is what OpenCV reports) is the equivalent.
        unit = fields("norm_param", dict(across_spatial=True, channel_shared=True))
        extra = dict(
            opencv_prototxt=net(input_layer(shape),
                                layer("unit", "Normalize", ["data"], ["unit"], unit),
                                layer("norm", "Scale", ["unit"], ["norm"])),
            opencv_layers=[LayerBlobs("unit", "Normalize", [np.float32([1.0])], ["data"],
                                      ["unit"]),
                           LayerBlobs("norm", "Scale", [scale], ["unit"], ["norm"])])
    if channel_shared and not across_spatial:
        # OpenCV asserts one scale per channel here (normalize_bbox_layer.cpp): the same
        # layer with the shared scale repeated per channel is its equivalent.
        extra = dict(opencv_prototxt=proto(False), opencv_layers=[LayerBlobs(
            "norm", "Normalize", [np.repeat(scale, shape[1])], ["data"], ["norm"])])
    oracle(proto(channel_shared),
           layers=[LayerBlobs("norm", "Normalize", [scale], ["data"], ["norm"])], **extra)


def test_normalize_eps(oracle, rng):
    # Tiny inputs make eps (added under the square root, before it) matter.
    params = fields("norm_param", dict(across_spatial=False, channel_shared=True, eps=1e-3))
    oracle(net(input_layer((1, 3, 4, 4)), layer("norm", "Normalize", ["data"], ["norm"], params)),
           layers=[LayerBlobs("norm", "Normalize", [np.float32([2.0])], ["data"], ["norm"])],
           input_scale=0.01)


# -- Permute -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [[0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2], [0, 2], [1, 0, 2, 3]])
def test_permute(oracle, order):
    def proto(order):
        return net(input_layer((2, 3, 4, 5)), layer("perm", "Permute", ["data"], ["perm"],
                                                     fields("permute_param", {"order": order})))

    full = order + [a for a in range(4) if a not in order]
    # OpenCV wants every axis listed; the SSD fork completes a short order (permute_layer.cpp).
    run = oracle(proto(order), opencv_prototxt=proto(full) if full != order else None)
    np.testing.assert_array_equal(run.ours["perm"], run.inputs["data"].transpose(full))


# -- PriorBox ----------------------------------------------------------------------------------

RES10_PRIOR = dict(min_size=30.0, max_size=60.0, aspect_ratio=2, flip=True, clip=False,
                   variance=[0.1, 0.1, 0.2, 0.2], step=8, offset=0.5)
PRIOR_CASES = [
    pytest.param((5, 5), (40, 40), RES10_PRIOR, id="res10-conv4_3"),
    pytest.param((3, 4), (300, 300), dict(min_size=162.0, max_size=213.0, aspect_ratio=[2, 3],
                                          clip=False, variance=[0.1, 0.1, 0.2, 0.2], step=100),
                 id="two-ratios-flip"),
    pytest.param((4, 4), (64, 48), dict(min_size=20.0, aspect_ratio=[2, 3], flip=False,
                                        clip=True, variance=0.1), id="no-flip-clip-no-max"),
    pytest.param((6, 5), (60, 50), dict(min_size=[10.0, 25.0], max_size=[20.0, 40.0],
                                        aspect_ratio=2, clip=False,
                                        variance=[0.1, 0.1, 0.2, 0.2]),
                 id="two-min-sizes-step-from-image"),
    pytest.param((3, 3), (90, 90), dict(min_size=33.0, aspect_ratio=[2, 0.5, 2.0], offset=0.0,
                                        clip=False, variance=[0.1, 0.2, 0.3, 0.4], step=30),
                 id="duplicate-ratios-offset0"),
    pytest.param((2, 3), (50, 70), dict(min_size=15.0, max_size=31.0, step_h=20, step_w=25,
                                        variance=0.2, clip=False), id="step-hw"),
    pytest.param((3, 3), (30, 30), dict(min_size=12.0, max_size=20.0, aspect_ratio=3,
                                        clip=True, variance=[0.1, 0.1, 0.2, 0.2]), id="clip"),
]


@pytest.mark.parametrize(("feature", "image", "params"), PRIOR_CASES)
def test_prior_box(oracle, feature, image, params):
    proto = net(inputs_layer({"feat": (1, 2, *feature), "data": (1, 3, *image)}),
                layer("prior", "PriorBox", ["feat", "data"], ["prior"],
                      fields("prior_box_param", params)))
    run = oracle(proto)
    assert run.ours["prior"].shape[:2] == (1, 2)


# -- DetectionOutput ---------------------------------------------------------------------------


def _ssd_head(n: int, classes: int, share_location: bool, params: dict) -> str:
    """Feature map + image -> PriorBox; raw loc and conf inputs; conf softmax'd per prior."""
    feature, image = (1, 2, 4, 5), (1, 3, 40, 50)
    priors = 4 * 5 * 4  # min, max, ratios 2 and 1/2 per location
    loc_classes = 1 if share_location else classes
    return net(
        inputs_layer({"feat": feature, "data": image, "loc": (n, priors * loc_classes * 4),
                      "conf_raw": (n, priors, classes)}),
        layer("prior", "PriorBox", ["feat", "data"], ["prior"], fields("prior_box_param", dict(
            min_size=12.0, max_size=24.0, aspect_ratio=2, clip=False,
            variance=[0.1, 0.1, 0.2, 0.2]))),
        layer("conf_prob", "Softmax", ["conf_raw"], ["conf_prob"], "softmax_param { axis: 2 }"),
        layer("conf", "Flatten", ["conf_prob"], ["conf"]),
        layer("det", "DetectionOutput", ["loc", "conf", "prior"], ["det"],
              fields("detection_output_param", dict(
                  num_classes=classes, share_location=share_location, **params))),
    )


DETECTION_CASES = [
    pytest.param(1, 2, True, dict(code_type="CENTER_SIZE", keep_top_k=200,
                                  confidence_threshold=0.01, nms=(0.45, 400)), id="res10-like"),
    pytest.param(2, 3, True, dict(code_type="CENTER_SIZE", keep_top_k=7,
                                  confidence_threshold=0.3, nms=(0.3, 20)),
                 id="batch2-3-classes-keep7"),
    # keep_top_k stays >= 1 in every case: OpenCV 4.14 corrupts its heap with keep_top_k -1.
    pytest.param(1, 4, False, dict(code_type="CENTER_SIZE", keep_top_k=500,
                                   confidence_threshold=0.35, nms=(0.5, 10)),
                 id="per-class-locations"),
    pytest.param(1, 2, True, dict(code_type="CORNER", keep_top_k=50,
                                  confidence_threshold=0.2, nms=(0.4, 100)), id="corner"),
    pytest.param(1, 3, True, dict(code_type="CENTER_SIZE", keep_top_k=40,
                                  confidence_threshold=0.2, nms=(0.45, 60),
                                  background_label_id=2), id="background-label-2"),
]


def _by_label(rows: np.ndarray) -> np.ndarray:
    """Rows (k, 7) sorted by image, label, descending score: OpenCV orders rows by score
    across labels, the SSD fork by label (a std::map), then by score."""
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def run_detection(tmp_path, rng, n, classes, share, params):
    """(ours, OpenCV's) DetectionOutput on random loc/conf over real PriorBox priors."""
    params = {"background_label_id": 0, **params}
    nms_threshold, top_k = params.pop("nms")
    eta = params.pop("eta", None)
    nms = f"nms_threshold: {nms_threshold} top_k: {top_k}" + (f" eta: {eta}" if eta else "")
    proto = _ssd_head(n, classes, share, params).replace(
        "detection_output_param {", f"detection_output_param {{ nms_param {{ {nms} }}")
    path = tmp_path / "det.prototxt"
    path.write_text(proto)
    network = load_caffe(path)
    inputs = {name: rng.uniform(-1, 1, network.blob_shapes[name]).astype(np.float32)
              for name in network.inputs}
    inputs["conf_raw"] *= 3  # spread the class probabilities
    ours = network.forward(inputs)["det"]
    theirs = opencv_forward(path, None, inputs, {"det": ("det", 0)})["det"]
    return ours, theirs


@pytest.mark.parametrize(("n", "classes", "share", "params"), DETECTION_CASES)
def test_detection_output(tmp_path, rng, n, classes, share, params):
    ours, theirs = run_detection(tmp_path, rng, n, classes, share, params)
    rows = ours.shape[2]
    assert ours.shape == (1, 1, rows, 7) and rows >= 1
    assert np.all(ours[0, 0, :, 1] >= 0), "the case should detect something in every image"
    # OpenCV pads to keep_top_k with zero rows; Caffe (and we) give only the kept ones.
    assert theirs.shape[2] >= rows
    assert not np.any(theirs[0, 0, rows:]), "OpenCV found more detections than we did"
    assert_close(_by_label(ours[0, 0]), _by_label(theirs[0, 0, :rows]), "detections")
    # Within a label, ours are in descending score order (the fork's output order).
    for image, label in {(r[0], r[1]) for r in ours[0, 0]}:
        scores = ours[0, 0][(ours[0, 0, :, 0] == image) & (ours[0, 0, :, 1] == label), 2]
        assert np.all(np.diff(scores) <= 0)


def test_detection_output_keep_all_equals_large_keep(tmp_path, rng):
    """keep_top_k -1 (keep all; not compared with OpenCV, which crashes on it) gives the rows a
    keep_top_k larger than the detection count gives."""
    from edgecaffe.ops import get_op

    op = get_op("DetectionOutput")
    attrs = dict(num_classes=3, share_location=True, background_label_id=0,
                 code_type="center_size", variance_encoded_in_target=False, nms_threshold=0.5,
                 top_k=20, eta=1.0, keep_top_k=-1, confidence_threshold=0.3)
    priors = np.concatenate([np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=2)
                             .transpose(0, 2, 1).reshape(-1), np.full(200, 0.1)])
    inputs = [rng.uniform(-1, 1, (1, 200)).astype(np.float32),
              rng.dirichlet(np.ones(3), 50).reshape(1, 150).astype(np.float32),
              priors.reshape(1, 2, 200).astype(np.float32)]
    (everything,) = op.run(inputs, {}, attrs)
    (large,) = op.run(inputs, {}, {**attrs, "keep_top_k": 1000})
    (three,) = op.run(inputs, {}, {**attrs, "keep_top_k": 3})
    np.testing.assert_array_equal(everything, large)
    assert everything.shape[2] > 3 and three.shape[2] == 3
    # keep_top_k keeps the best three over all labels.
    best = np.sort(everything[0, 0, :, 2])[::-1][:3]
    np.testing.assert_array_equal(np.sort(three[0, 0, :, 2])[::-1], best)


def test_detection_output_nothing_found(tmp_path):
    """No score above the threshold: one row per image, [image, -1, -1, ...] (the fork's rule)."""
    from edgecaffe.ops import get_op

    attrs = dict(num_classes=2, share_location=True, background_label_id=0,
                 code_type="center_size", variance_encoded_in_target=False, nms_threshold=0.5,
                 top_k=20, eta=1.0, keep_top_k=10, confidence_threshold=0.99)
    priors = np.tile(np.float32([0.1, 0.1, 0.3, 0.3]), 4)
    inputs = [np.zeros((2, 16), np.float32), np.full((2, 8), 0.5, np.float32),
              np.concatenate([priors, np.full(16, 0.1, np.float32)]).reshape(1, 2, 16)]
    (out,) = get_op("DetectionOutput").run(inputs, {}, attrs)
    np.testing.assert_array_equal(out[0, 0], [[0, -1, -1, -1, -1, -1, -1],
                                             [1, -1, -1, -1, -1, -1, -1]])


def test_adaptive_nms_eta_by_hand():
    """ApplyNMSFast's eta (bbox_util.cpp): after each kept box, a threshold above 0.5 is
    multiplied by eta. OpenCV 4.14 ignores eta, so this is checked by hand."""
    from edgecaffe.ops.detection import nms

    boxes = np.float32([[0, 0, 1, 1], [0, 0, 1, 0.55], [2, 2, 3, 3]])  # IoU(A, B) = 0.55
    scores = np.float32([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.1, 0.6, 1.0, -1) == [0, 1, 2]
    assert nms(boxes, scores, 0.1, 0.6, 0.9, -1) == [0, 2]  # threshold 0.54 after A
    assert nms(boxes, scores, 0.1, 0.6, 1.0, 2) == [0, 1]  # top_k candidates only
    assert nms(boxes, scores, 0.75, 0.6, 1.0, -1) == [0, 1]  # score > threshold


def test_decode_code_types_by_hand():
    """DecodeBBox (bbox_util.cpp) for one prior, every code type, worked out by hand."""
    from edgecaffe.ops.detection import decode_boxes

    prior = np.float32([[0.2, 0.4, 0.6, 0.6]])  # width 0.4, height 0.2, centre (0.4, 0.5)
    var = np.float32([[0.1, 0.1, 0.2, 0.2]])
    loc = np.float32([[1.0, -2.0, 0.5, np.log(2.0) / 0.2]])
    corner = decode_boxes(loc, prior, var, "corner", False)
    np.testing.assert_allclose(corner, [[0.3, 0.2, 0.7, 0.6 + np.log(2.0)]], rtol=1e-6)
    corner_size = decode_boxes(loc, prior, var, "corner_size", False)
    np.testing.assert_allclose(corner_size, [[0.24, 0.36, 0.64, 0.6 + 0.2 * np.log(2.0)]],
                               rtol=1e-6)
    # centre (0.4 + 0.1*1*0.4, 0.5 + 0.1*-2*0.2) = (0.44, 0.46); w = 0.4 e^0.1, h = 0.2 * 2
    center = decode_boxes(loc, prior, var, "center_size", False)
    half_w = 0.2 * np.exp(0.1)
    np.testing.assert_allclose(center, [[0.44 - half_w, 0.26, 0.44 + half_w, 0.66]], rtol=1e-6)
    # variance_encoded_in_target: the variances are 1 (the prior's second channel is unused).
    encoded = decode_boxes(loc * var, prior, var, "center_size", True)
    np.testing.assert_allclose(encoded, center, rtol=1e-6)


def test_prior_box_img_size_replaces_image_size(tmp_path, oracle):
    """img_h/img_w stand for the image's size (prior_box_layer.cpp). OpenCV 4.14 ignores them,
    so OpenCV is asked about a net whose image really has that size."""
    params = dict(min_size=15.0, max_size=31.0, step_h=20, step_w=25, variance=0.2, clip=False)
    ours_path = tmp_path / "ours.prototxt"
    ours_path.write_text(net(inputs_layer({"feat": (1, 2, 2, 3), "data": (1, 3, 50, 70)}),
                             layer("prior", "PriorBox", ["feat", "data"], ["prior"],
                                   fields("prior_box_param", dict(img_h=100, img_w=120,
                                                                  **params)))))
    network = load_caffe(ours_path)
    feat, image = np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 3, 50, 70), np.float32)
    ours = network.forward({"feat": feat, "data": image})["prior"]
    cv_path = tmp_path / "opencv.prototxt"
    cv_path.write_text(net(inputs_layer({"feat": (1, 2, 2, 3), "data": (1, 3, 100, 120)}),
                           layer("prior", "PriorBox", ["feat", "data"], ["prior"],
                                 fields("prior_box_param", params))))
    theirs = opencv_forward(cv_path, None, {"feat": feat, "data": np.zeros((1, 3, 100, 120),
                                                                           np.float32)},
                            {"prior": ("prior", 0)})["prior"]
    assert_close(ours, theirs, "priors")
