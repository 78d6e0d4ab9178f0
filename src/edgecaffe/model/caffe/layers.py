"""Caffe layer types -> operators of `edgecaffe.ops`, and Caffe weight blobs <-> named weights.

Everything Caffe-specific about a layer lives here: parameter messages and their defaults, the V1
type enum, the order of weight blobs, BatchNorm's scale-factor blob.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import numpy as np

from edgecaffe.model.caffe.prototxt import CaffeError
from edgecaffe.model.caffe.schema import message_class
from edgecaffe.model.network import Layer

V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

TRAINING_ONLY = {
    "Data", "ImageData", "HDF5Data", "WindowData", "DummyData", "Accuracy",
    "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "ContrastiveLoss",
    "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss", "HDF5Output",
}


def upgrade_v1(v1, source: str = "<prototxt>") -> Any:
    """A V1 `layers { type: CONVOLUTION ... }` entry as a V2 `LayerParameter`."""
    if v1.HasField("layer"):
        raise CaffeError(
            f"{source}: layer {v1.layer.name!r} uses Caffe's V0 format (`layers {{ layer {{ type: "
            f"\"{v1.layer.type}\" }} }}`, before 2014), which EdgeCaffe does not read; upgrade the "
            "file with Caffe's upgrade_net_proto_text tool"
        )
    layer = message_class("LayerParameter")(name=v1.name)
    enum_name = v1.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[v1.type].name
    layer.type = V1_TYPES.get(enum_name, enum_name)
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    for name in v1.param:  # Caffe's UpgradeV1LayerParameter: V1 param names -> ParamSpec
        layer.param.add(name=name)
    for field, value in v1.ListFields():
        if field.name.endswith("_param"):
            getattr(layer, field.name).CopyFrom(value)
    return layer


def _pair(single: Sequence[int], h_w: tuple[int, int] | None, default: int, what: str) -> list[int]:
    """Caffe's (repeated value | value_h + value_w) spatial parameter as [h, w]."""
    if h_w is not None:
        return list(h_w)
    if len(single) == 0:
        return [default, default]
    if len(single) > 2:
        raise ValueError(f"{what} has {len(single)} values; only 2-d layers are supported")
    return [single[0], single[-1]]


def _conv(layer) -> tuple[str, dict]:
    p = layer.convolution_param
    if p.axis != 1:
        raise ValueError(f"convolution axis {p.axis}: only axis 1 (NCHW) is supported")
    if not p.HasField("num_output") or p.num_output == 0:
        raise ValueError("convolution_param.num_output is missing")
    # base_conv_layer.cpp LayerSetUp: kernel/stride/pad as h + w or as the repeated field.
    for single, h, w in (("kernel_size", "kernel_h", "kernel_w"), ("stride", "stride_h",
                                                                    "stride_w")):
        if p.HasField(h) != p.HasField(w):
            raise ValueError(f"{h} and {w} must be given together (Caffe refuses one alone)")
        if p.HasField(h) and len(getattr(p, single)):
            raise ValueError(f"give {single} or {h} and {w}, not both (Caffe refuses both)")
    if (p.HasField("pad_h") or p.HasField("pad_w")) and len(p.pad):
        raise ValueError("give pad or pad_h and pad_w, not both (Caffe refuses both)")
    if not p.kernel_size and not p.HasField("kernel_h"):
        raise ValueError("convolution_param needs kernel_size or kernel_h and kernel_w")
    two = lambda h, w: (getattr(p, h), getattr(p, w)) if p.HasField(h) or p.HasField(w) else None  # noqa: E731
    return "Conv", {
        "out_channels": p.num_output,
        "kernel": _pair(p.kernel_size, two("kernel_h", "kernel_w"), 1, "kernel_size"),
        "stride": _pair(p.stride, two("stride_h", "stride_w"), 1, "stride"),
        "pad": _pair(p.pad, two("pad_h", "pad_w"), 0, "pad"),
        "dilation": _pair(p.dilation, None, 1, "dilation"),
        "group": p.group,
        "bias": p.bias_term,
    }


def _pool(layer) -> tuple[str, dict]:
    """Caffe's PoolingLayer::LayerSetUp checks: kernel_size or kernel_h + kernel_w, pad or
    pad_h + pad_w, stride or stride_h + stride_w, no kernel with global_pooling."""
    p = layer.pooling_param
    methods = {0: "max", 1: "avg"}
    if p.pool not in methods:
        raise ValueError("STOCHASTIC pooling is a training-time method and is not supported")
    for single, h, w in (("kernel_size", "kernel_h", "kernel_w"), ("pad", "pad_h", "pad_w"),
                         ("stride", "stride_h", "stride_w")):
        if p.HasField(h) != p.HasField(w):
            raise ValueError(f"{h} and {w} must be given together (Caffe refuses one alone)")
        if p.HasField(h) and p.HasField(single):
            raise ValueError(f"give {single} or {h} and {w}, not both (Caffe refuses both)")
    pair = lambda h, w: (getattr(p, h), getattr(p, w)) if p.HasField(h) else None  # noqa: E731
    attrs: dict[str, Any] = {"method": methods[p.pool], "global": p.global_pooling,
                             "ceil": p.round_mode == 0}
    stride = list(pair("stride_h", "stride_w") or (p.stride, p.stride))
    pad = list(pair("pad_h", "pad_w") or (p.pad, p.pad))
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h"):
            raise ValueError("global_pooling takes no kernel size (Caffe refuses one)")
        if pad != [0, 0] or stride != [1, 1]:
            raise ValueError(f"global_pooling needs pad 0 and stride 1, got pad {pad} and "
                             f"stride {stride} (Caffe refuses others)")
        attrs.update(kernel=[0, 0], stride=[1, 1], pad=[0, 0])
        return "Pool", attrs
    kernel = pair("kernel_h", "kernel_w")
    if kernel is None and not p.HasField("kernel_size"):
        raise ValueError("pooling_param needs kernel_size, kernel_h/kernel_w or global_pooling")
    attrs.update(kernel=list(kernel or (p.kernel_size, p.kernel_size)), stride=stride, pad=pad)
    if min(attrs["kernel"]) < 1 or min(attrs["stride"]) < 1:
        raise ValueError(
            f"pooling kernel {attrs['kernel']} and stride {attrs['stride']} must be >= 1"
        )
    if attrs["pad"][0] >= attrs["kernel"][0] or attrs["pad"][1] >= attrs["kernel"][1]:
        raise ValueError(f"pooling pad {attrs['pad']} must be smaller than the kernel "
                         f"{attrs['kernel']} (Caffe's CHECK_LT(pad, kernel))")
    return "Pool", attrs


def _lrn(layer):
    p = layer.lrn_param
    region = "across" if p.norm_region == 0 else "within"
    return "LRN", {"size": p.local_size, "alpha": p.alpha, "beta": p.beta, "k": p.k,
                   "region": region}


def _inner_product(layer):
    p = layer.inner_product_param
    if not p.num_output:
        raise ValueError("inner_product_param.num_output is missing")
    return "Dense", {"out_features": p.num_output, "axis": p.axis, "bias": p.bias_term,
                     "transpose": p.transpose}


def _exp(layer):
    """Caffe's exp_layer.cpp: base -1 means e; any other base must be positive."""
    p = layer.exp_param
    if p.base != -1 and not p.base > 0:
        raise ValueError(f"exp_param.base {p.base} must be positive (or -1 for e)")
    return "Exp", {"base": p.base, "scale": p.scale, "shift": p.shift}


def _dropout(layer):
    """BVLC Caffe: the identity at TEST. Faster R-CNN's fork (dropout_layer.cpp) adds
    scale_train: false, which leaves training unscaled and scales by 1 - ratio at TEST: a Power
    layer with that scale (not a view of its input, unlike the identity)."""
    p = layer.dropout_param
    if not 0.0 <= p.dropout_ratio < 1.0:
        raise ValueError(f"dropout_ratio {p.dropout_ratio} must be in [0, 1)")
    if not p.scale_train:
        keep = float(np.float32(1.0) / np.float32(1.0 / (1.0 - np.float32(p.dropout_ratio))))
        return "Power", {"power": 1.0, "scale": keep, "shift": 0.0}
    return "Dropout", {"ratio": p.dropout_ratio}


def _batch_norm(layer):
    """Caffe's batch_norm_layer.cpp: in the TEST phase the stored statistics are used unless
    use_global_stats is given as false; then each forward pass normalizes with the batch's own
    mean and (biased) variance over the batch and spatial axes. moving_average_fraction only
    updates the statistics during training."""
    p = layer.batch_norm_param
    global_stats = p.use_global_stats if p.HasField("use_global_stats") else True
    return "BatchNorm", {"eps": p.eps, "use_global_stats": global_stats}


def _scale(layer):
    p = layer.scale_param
    return "Scale", {"axis": p.axis, "num_axes": p.num_axes, "bias": p.bias_term}


def _bias(layer):
    p = layer.bias_param
    return "Bias", {"axis": p.axis, "num_axes": p.num_axes}


def _concat(layer):
    p = layer.concat_param
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise ValueError("give concat_param.axis or the legacy concat_dim, not both (Caffe "
                         "refuses both)")
    axis = p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis
    return "Concat", {"axis": axis}


def _eltwise(layer):
    p = layer.eltwise_param
    operation = {0: "prod", 1: "sum", 2: "max"}[p.operation]
    return "Eltwise", {"operation": operation, "coeffs": list(p.coeff)}


def _slice(layer):
    p = layer.slice_param
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise ValueError("give slice_param.axis or the legacy slice_dim, not both (Caffe "
                         "refuses both)")
    axis = p.slice_dim if p.HasField("slice_dim") and not p.HasField("axis") else p.axis
    return "Slice", {"axis": axis, "points": list(p.slice_point), "num_outputs": len(layer.top)}


def _reshape(layer):
    p = layer.reshape_param
    if any(d < -1 for d in p.shape.dim):
        raise ValueError(f"reshape_param.shape.dim {list(p.shape.dim)}: each dim is -1 (infer), "
                         "0 (copy) or positive")
    return "Reshape", {"shape": list(p.shape.dim), "axis": p.axis, "num_axes": p.num_axes}


CONVERTERS: dict[str, Callable[[Any], tuple[str, dict]]] = {
    "Convolution": _conv,
    "Pooling": _pool,
    "LRN": _lrn,
    "InnerProduct": _inner_product,
    "ReLU": lambda l: ("ReLU", {"negative_slope": l.relu_param.negative_slope}),
    "PReLU": lambda l: ("PReLU", {"channel_shared": l.prelu_param.channel_shared}),
    "Dropout": _dropout,
    "Softmax": lambda l: ("Softmax", {"axis": l.softmax_param.axis}),
    "BatchNorm": _batch_norm,
    "Scale": _scale,
    "Bias": _bias,
    "Concat": _concat,
    "Slice": _slice,
    "Eltwise": _eltwise,
    "Flatten": lambda l: ("Flatten", {"axis": l.flatten_param.axis,
                                      "end_axis": l.flatten_param.end_axis}),
    "Reshape": _reshape,
    "Sigmoid": lambda l: ("Sigmoid", {}),
    "TanH": lambda l: ("TanH", {}),
    "AbsVal": lambda l: ("AbsVal", {}),
    "BNLL": lambda l: ("BNLL", {}),
    "ELU": lambda l: ("ELU", {"alpha": l.elu_param.alpha}),
    "Power": lambda l: ("Power", {"power": l.power_param.power, "scale": l.power_param.scale,
                                  "shift": l.power_param.shift}),
    "Exp": _exp,
}

# -- layer types beyond the core set: Deconvolution, Crop, the SSD family, forks' resizes ------
# (field semantics from each layer's source: BVLC Caffe's *_layer.cpp, the SSD fork's
# normalize/prior_box/detection_output layers, DeepLab's interp_layer.cpp, YOLOv3 forks'
# upsample_layer.cpp)


def _deconv(layer) -> tuple[str, dict]:
    """Deconvolution shares ConvolutionParameter; its weight blob is (C_in, C_out/group, kh, kw)
    (deconv_layer.cpp), exactly ConvTranspose's."""
    _, attrs = _conv(layer)
    ph, pw = attrs.pop("pad")
    return "ConvTranspose", {**attrs, "pads": [ph, pw, ph, pw], "output_padding": [0, 0]}


def _crop(layer):
    p = layer.crop_param
    if len(layer.bottom) != 2:
        raise ValueError(f"Crop needs two bottoms (data, reference), got {len(layer.bottom)}")
    return "Crop", {"axis": p.axis, "offsets": list(p.offset)}


def _argmax(layer):
    p = layer.argmax_param
    return "ArgMax", {"out_max_val": p.out_max_val, "top_k": p.top_k,
                      "axis": p.axis if p.HasField("axis") else None}


def _log(layer):
    p = layer.log_param
    return "Log", {"base": p.base, "scale": p.scale, "shift": p.shift}


def _reduction(layer):
    """Caffe's Reduction: every axis from `axis` on, dropped from the shape, times coeff."""
    p = layer.reduction_param
    operation = {1: "sum", 2: "asum", 3: "sumsq", 4: "mean"}[p.operation]
    return "Reduce", {"operation": operation, "from_axis": p.axis, "keepdims": False,
                      "coeff": p.coeff}


def _tile(layer):
    p = layer.tile_param
    if not p.HasField("tiles") or p.tiles < 1:
        raise ValueError("tile_param.tiles must be given and positive")
    return "Tile", {"axis": p.axis, "tiles": p.tiles}


def _mvn(layer):
    p = layer.mvn_param
    return "MVN", {"normalize_variance": p.normalize_variance,
                   "across_channels": p.across_channels, "eps": p.eps}


def _clip(layer):
    p = layer.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise ValueError("clip_param needs both min and max (required fields in caffe.proto)")
    return "Clip", {"min": p.min, "max": p.max}


def _normalize(layer):
    p = layer.norm_param
    return "Normalize", {"across_spatial": p.across_spatial, "channel_shared": p.channel_shared,
                         "eps": p.eps}


def _permute(layer):
    """SSD's Permute: `order` lists the first output axes; the rest follow in input order."""
    order = list(layer.permute_param.order)
    if len(set(order)) != len(order):
        raise ValueError(f"permute_param.order {order} repeats an axis")
    return "Transpose", {"perm": order, "fill_perm": True}


def _prior_box(layer):
    p = layer.prior_box_param
    if len(layer.bottom) != 2:
        raise ValueError(f"PriorBox needs two bottoms (feature map, image), got "
                         f"{len(layer.bottom)}")
    if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
        raise ValueError("give either img_size or img_h/img_w, not both")
    if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
        raise ValueError("give either step or step_h/step_w, not both")
    for pair in (("img_h", "img_w"), ("step_h", "step_w")):
        given = [p.HasField(f) and getattr(p, f) > 0 for f in pair]
        if any(p.HasField(f) for f in pair) and not all(given):
            raise ValueError(f"prior_box_param needs both {pair[0]} and {pair[1]}, positive")
    img = (p.img_size, p.img_size) if p.HasField("img_size") else (p.img_h, p.img_w)
    step = (p.step, p.step) if p.HasField("step") else (p.step_h, p.step_w)
    if (p.HasField("img_size") and p.img_size == 0) or (p.HasField("step") and p.step <= 0):
        raise ValueError("prior_box_param img_size and step must be positive")
    return "PriorBox", {
        "min_sizes": list(p.min_size), "max_sizes": list(p.max_size),
        "aspect_ratios": list(p.aspect_ratio), "flip": p.flip, "clip": p.clip,
        "variances": list(p.variance), "img_h": img[0], "img_w": img[1],
        "step_h": step[0], "step_w": step[1], "offset": p.offset,
    }


def _detection_output(layer):
    p = layer.detection_output_param
    if not p.HasField("num_classes"):
        raise ValueError("detection_output_param.num_classes is missing")
    if len(layer.bottom) != 3:
        raise ValueError(f"DetectionOutput needs three bottoms (loc, conf, priors), got "
                         f"{len(layer.bottom)} (the fourth, ARM confidence, is not supported)")
    nms = p.nms_param
    return "DetectionOutput", {
        "num_classes": p.num_classes, "share_location": p.share_location,
        "background_label_id": p.background_label_id,
        "code_type": {1: "corner", 2: "center_size", 3: "corner_size"}[p.code_type],
        "variance_encoded_in_target": p.variance_encoded_in_target,
        "nms_threshold": nms.nms_threshold, "top_k": nms.top_k if nms.HasField("top_k") else -1,
        "eta": nms.eta, "keep_top_k": p.keep_top_k,
        "confidence_threshold": p.confidence_threshold
        if p.HasField("confidence_threshold") else None,
    }


def _interp(layer):
    """DeepLab/PSPNet's Interp: bilinear with align_corners; the size from shrink/zoom factors
    (interp_layer.cpp: shrink first, then zoom) or height + width."""
    p = layer.interp_param
    if p.pad_beg or p.pad_end:
        raise ValueError("interp_param pad_beg/pad_end (cropping) is not supported")
    if len(layer.bottom) != 1:
        raise ValueError("Interp with a second bottom (size taken from it) is not supported")
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    sized = p.HasField("height") and p.HasField("width")
    if not (shrink or zoom or sized):
        raise ValueError("interp_param needs shrink_factor, zoom_factor, or height and width")
    # interp_layer.cpp's order: one factor alone, else height + width, else both factors.
    factors = shrink != zoom or not sized
    if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
        raise ValueError("interp_param shrink_factor and zoom_factor must be >= 1")
    return "Resize", {"mode": "linear", "coordinate_transformation_mode": "align_corners",
                      "interp": {"shrink": p.shrink_factor if shrink else 1,
                                 "zoom": p.zoom_factor if zoom else 1,
                                 "height": p.height, "width": p.width,
                                 "factors": factors}}


def _upsample(layer):
    """The YOLOv3 forks' Upsample: nearest, out[i] = in[i // scale] (upsample_layer.cpp)."""
    if len(layer.bottom) != 1:
        raise ValueError("Upsample with two bottoms (SegNet's max-unpooling with a mask) is not "
                         "supported")
    scale = layer.upsample_param.scale
    if scale < 1:
        raise ValueError(f"upsample_param.scale must be >= 1, got {scale}")
    return "Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                      "nearest_mode": "floor", "scales": [float(scale), float(scale)]}


CONVERTERS.update({
    "Deconvolution": _deconv,
    "Crop": _crop,
    "ArgMax": _argmax,
    "Threshold": lambda l: ("Threshold", {"threshold": l.threshold_param.threshold}),
    "Log": _log,
    "Reduction": _reduction,
    "Tile": _tile,
    "MVN": _mvn,
    "Clip": _clip,
    "Swish": lambda l: ("Swish", {"beta": l.swish_param.beta}),
    "Normalize": _normalize,
    "Permute": _permute,
    "PriorBox": _prior_box,
    "DetectionOutput": _detection_output,
    "Interp": _interp,
    "Upsample": _upsample,
})

#: Types handled by the graph builder itself rather than converted to an operator.
STRUCTURAL = {"Input", "MemoryData", "Split", "Silence"}


def supported_types() -> list[str]:
    return sorted(set(CONVERTERS) | STRUCTURAL)


def convert(layer, source: str) -> tuple[str, dict]:
    """The operator name and attributes of one (V2) Caffe layer."""
    converter = CONVERTERS.get(layer.type)
    if converter is None:
        hint = (" (a training-only layer: use the deploy prototxt)"
                if layer.type in TRAINING_ONLY else "")
        raise CaffeError(
            f"{source}: layer {layer.name!r} has type {layer.type!r}, which EdgeCaffe does not "
            f"support{hint}; supported types: {', '.join(supported_types())}"
        )
    try:
        return converter(layer)
    except ValueError as error:
        raise CaffeError(f"{source}: layer {layer.name!r} ({layer.type}): {error}") from None


# -- weights ----------------------------------------------------------------------------------


def blobs_to_weights(layer: Layer, blobs: list[np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Caffe's blobs of one layer -> the operator's named weights, checked against the prototxt.

    Blob counts and element counts must match; a legacy 4-d blob (1 x 1 x O x K) is reshaped.
    BatchNorm's third blob (the moving-average scale factor) is folded into mean and variance.
    """
    expected = list(layer.params.items())
    caffe_count = len(expected) + (1 if layer.op == "BatchNorm" else 0)
    if len(blobs) != caffe_count:
        raise CaffeError(
            f"{source}: layer {layer.name!r} ({layer.op}) has {len(blobs)} weight blob(s) but the "
            f"prototxt implies {caffe_count} ({', '.join(n for n, _ in expected)}"
            f"{', scale factor' if layer.op == 'BatchNorm' else ''})"
        )
    weights = {}
    for index, ((name, shape), blob) in enumerate(zip(expected, blobs, strict=False)):
        if blob.size != prod(shape):
            raise CaffeError(
                f"{source}: layer {layer.name!r} blob {index} ({name}) has shape "
                f"{tuple(blob.shape)} ({blob.size} values) but the prototxt implies {shape} "
                f"({prod(shape)} values)"
            )
        weights[name] = blob.reshape(shape)
    if layer.op == "BatchNorm":
        factor = float(blobs[2].reshape(-1)[0]) if blobs[2].size else 1.0
        inverse = np.float32(0.0 if factor == 0 else 1.0 / factor)
        weights["mean"] = weights["mean"] * inverse
        weights["var"] = weights["var"] * inverse
    return weights


def weights_to_blobs(layer: Layer, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The inverse of `blobs_to_weights`, for writing caffemodels (BatchNorm factor 1)."""
    # np.array keeps 0-d blobs 0-d (a shared PReLU slope, a Scale with num_axes 0): Caffe
    # refuses a (1,) blob where it expects a scalar.
    blobs = [np.array(weights[name], dtype=np.float32, order="C") for name in layer.params]
    if layer.op == "BatchNorm":
        blobs.append(np.ones(1, dtype=np.float32))
    return blobs
