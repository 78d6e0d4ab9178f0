"""Every field of our Caffe schema, classified: used with Caffe's meaning, refused, or ignored
because it cannot change an inference result (and then the warning says why).

`audit_fields` walks the fields a prototxt actually sets. Fields outside the schema (other forks,
solver or data-layer options) are reported by the text parser (`prototxt.py`). The test suite
checks that every field of `schema.SCHEMA` appears in exactly one of the tables below, so a field
added to the schema cannot be read and silently ignored.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict

from edgecaffe.model.caffe.prototxt import CaffeError

_TRAINING = "only affects training"
_ENGINE = "chooses Caffe's CPU or cuDNN implementation, which compute the same values"
_FILLER = ("initializes weights before training; at inference the weights come from the "
           "caffemodel")

#: (message, field) -> why ignoring it cannot change an inference result.
IGNORED: dict[tuple[str, str], str] = {
    ("NetParameter", "force_backward"): _TRAINING + " (backward passes)",
    **{("BlobProto", f): _TRAINING + " (gradients)"
       for f in ("diff", "double_diff", "raw_diff", "raw_diff_type")},
    ("NetParameter", "debug_info"): "only adds Caffe's debug logging",
    ("NetState", "phase"): "the phase is always TEST at inference (Caffe's Net constructor "
                           "replaces it)",
    ("NetState", "level"): "Caffe's Net constructor replaces it with the caller's level "
                           "(load_caffe(level=...), --level; default 0)",
    ("LayerParameter", "phase"): "Caffe sets every layer's phase from the net state",
    ("LayerParameter", "loss_weight"): _TRAINING + " (weights a loss; blob values are the same)",
    ("LayerParameter", "propagate_down"): _TRAINING + " (backward passes)",
    ("V1LayerParameter", "blobs_lr"): _TRAINING + " (learning rate)",
    ("V1LayerParameter", "weight_decay"): _TRAINING + " (weight decay)",
    ("V1LayerParameter", "loss_weight"): _TRAINING + " (weights a loss)",
    ("ParamSpec", "lr_mult"): _TRAINING + " (learning rate)",
    ("ParamSpec", "decay_mult"): _TRAINING + " (weight decay)",
    ("ConvolutionParameter", "weight_filler"): _FILLER,
    ("ConvolutionParameter", "bias_filler"): _FILLER,
    ("ConvolutionParameter", "engine"): _ENGINE,
    ("ConvolutionParameter", "force_nd_im2col"): "chooses Caffe's N-d im2col code path, which "
                                                 "computes the same values",
    ("InnerProductParameter", "weight_filler"): _FILLER,
    ("InnerProductParameter", "bias_filler"): _FILLER,
    ("ScaleParameter", "filler"): _FILLER,
    ("ScaleParameter", "bias_filler"): _FILLER,
    ("BiasParameter", "filler"): _FILLER,
    ("PReLUParameter", "filler"): _FILLER,
    ("BatchNormParameter", "moving_average_fraction"): _TRAINING + " (updates the stored "
                                                       "statistics)",
    ("EltwiseParameter", "stable_prod_grad"): _TRAINING + " (gradient of PROD)",
    ("LRNParameter", "engine"): _ENGINE,
    ("PoolingParameter", "engine"): _ENGINE,
    ("ReLUParameter", "engine"): _ENGINE,
    ("SigmoidParameter", "engine"): _ENGINE,
    ("SoftmaxParameter", "engine"): _ENGINE,
    ("TanHParameter", "engine"): _ENGINE,
}

#: (message, field) -> why it is refused (a CaffeError names file, layer and field).
REFUSED: dict[tuple[str, str], str] = {
    ("LayerParameter", "blobs"): "weights written inside the prototxt are not read; put them "
                                 "in a caffemodel",
    ("V1LayerParameter", "blobs"): "weights written inside the prototxt are not read; put them "
                                   "in a caffemodel",
}

#: Fields read with Caffe's meaning (by the importer, `layers.py` or the caffemodel reader).
USED: set[tuple[str, str]] = {
    ("BlobShape", "dim"),
    *(("BlobProto", f) for f in ("shape", "data", "double_data", "num", "channels", "height",
                                 "width", "raw_data_type", "raw_data")),
    ("NetState", "stage"),
    *(("NetStateRule", f) for f in ("phase", "min_level", "max_level", "stage", "not_stage")),
    ("ParamSpec", "name"), ("ParamSpec", "share_mode"),
    *(("FillerParameter", f) for f in ("type", "value", "min", "max", "mean", "std", "sparse",
                                       "variance_norm")),  # only inside ignored fillers
    *(("NetParameter", f) for f in ("name", "input", "input_shape", "input_dim", "state",
                                    "layer", "layers")),
    *(("LayerParameter", f) for f in ("name", "type", "bottom", "top", "param", "include",
                                      "exclude")),
    *(("V1LayerParameter", f) for f in ("bottom", "top", "name", "include", "exclude", "type",
                                        "param", "layer")),
    ("V0LayerParameter", "name"), ("V0LayerParameter", "type"),
    *(("MemoryDataParameter", f) for f in ("batch_size", "channels", "height", "width")),
    ("BatchNormParameter", "use_global_stats"), ("BatchNormParameter", "eps"),
    ("BiasParameter", "axis"), ("BiasParameter", "num_axes"),
    ("ConcatParameter", "axis"), ("ConcatParameter", "concat_dim"),
    *(("ConvolutionParameter", f) for f in ("num_output", "bias_term", "pad", "kernel_size",
                                            "stride", "dilation", "pad_h", "pad_w", "kernel_h",
                                            "kernel_w", "stride_h", "stride_w", "group", "axis")),
    ("DropoutParameter", "dropout_ratio"), ("DropoutParameter", "scale_train"),
    ("EltwiseParameter", "operation"), ("EltwiseParameter", "coeff"),
    ("ELUParameter", "alpha"),
    ("ExpParameter", "base"), ("ExpParameter", "scale"), ("ExpParameter", "shift"),
    ("FlattenParameter", "axis"), ("FlattenParameter", "end_axis"),
    *(("InnerProductParameter", f) for f in ("num_output", "bias_term", "axis", "transpose")),
    ("InputParameter", "shape"),
    *(("LRNParameter", f) for f in ("local_size", "alpha", "beta", "norm_region", "k")),
    *(("PoolingParameter", f) for f in ("pool", "pad", "pad_h", "pad_w", "kernel_size",
                                        "kernel_h", "kernel_w", "stride", "stride_h", "stride_w",
                                        "global_pooling", "round_mode")),
    ("PowerParameter", "power"), ("PowerParameter", "scale"), ("PowerParameter", "shift"),
    ("PReLUParameter", "channel_shared"),
    ("ReLUParameter", "negative_slope"),
    ("ReshapeParameter", "shape"), ("ReshapeParameter", "axis"), ("ReshapeParameter", "num_axes"),
    ("ScaleParameter", "axis"), ("ScaleParameter", "num_axes"), ("ScaleParameter", "bias_term"),
    ("SliceParameter", "axis"), ("SliceParameter", "slice_point"), ("SliceParameter", "slice_dim"),
    ("SoftmaxParameter", "axis"),
}

# -- the layer types of schema.LAYER_TYPES_SCHEMA (Deconvolution, Crop, the SSD family, ...) ----
IGNORED.update({
    ("NormalizeParameter", "scale_filler"): _FILLER,
    ("DetectionOutputParameter", "visualize"): "only draws the detections in a window (the "
                                               "SSD fork's debugging aid)",
    ("DetectionOutputParameter", "visualize_threshold"): "only used when visualizing",
    ("DetectionOutputParameter", "save_file"): "only names a file the SSD fork writes; the "
                                               "output blob is the same",
})
USED.update({
    ("ArgMaxParameter", "out_max_val"), ("ArgMaxParameter", "top_k"), ("ArgMaxParameter", "axis"),
    ("ClipParameter", "min"), ("ClipParameter", "max"),
    ("CropParameter", "axis"), ("CropParameter", "offset"),
    ("LogParameter", "base"), ("LogParameter", "scale"), ("LogParameter", "shift"),
    *(("MVNParameter", f) for f in ("normalize_variance", "across_channels", "eps")),
    *(("ReductionParameter", f) for f in ("operation", "axis", "coeff")),
    ("SwishParameter", "beta"),
    ("ThresholdParameter", "threshold"),
    ("TileParameter", "axis"), ("TileParameter", "tiles"),
    *(("NormalizeParameter", f) for f in ("across_spatial", "channel_shared", "eps")),
    ("PermuteParameter", "order"),
    *(("PriorBoxParameter", f) for f in ("min_size", "max_size", "aspect_ratio", "flip", "clip",
                                         "variance", "img_size", "img_h", "img_w", "step",
                                         "step_h", "step_w", "offset")),
    *(("NonMaximumSuppressionParameter", f) for f in ("nms_threshold", "top_k", "eta")),
    *(("DetectionOutputParameter", f) for f in ("num_classes", "share_location",
                                                "background_label_id", "nms_param", "code_type",
                                                "variance_encoded_in_target", "keep_top_k",
                                                "confidence_threshold")),
    # pad_beg/pad_end are read and refused unless 0 (layers.py).
    *(("InterpParameter", f) for f in ("height", "width", "zoom_factor", "shrink_factor",
                                       "pad_beg", "pad_end")),
    ("UpsampleParameter", "scale"),
})

#: Layer type -> the one `*_param` block it reads, where the name is not the type in snake case.
PARAM_OF_TYPE = {
    "PReLU": "prelu_param", "ReLU": "relu_param", "ELU": "elu_param", "LRN": "lrn_param",
    "TanH": "tanh_param", "Deconvolution": "convolution_param", "Normalize": "norm_param",
    "ArgMax": "argmax_param", "MVN": "mvn_param", "BNLL": "bnll_param",
}


def param_field_of(layer_type: str) -> str:
    """The `*_param` field a layer of `layer_type` reads (Caffe's layer factory convention)."""
    if layer_type in PARAM_OF_TYPE:
        return PARAM_OF_TYPE[layer_type]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", layer_type).lower() + "_param"


def is_param_block(message_name: str, field_name: str) -> bool:
    """A layer's `*_param` block: used by the layer type it belongs to, ignored (with a
    warning) on any other type."""
    return message_name in ("LayerParameter", "V1LayerParameter") and field_name.endswith(
        "_param")


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.29 deprecates `label`
        return bool(field.is_repeated)
    return field.label == field.LABEL_REPEATED


def _type_name(layer) -> str:
    if layer.DESCRIPTOR.name == "V1LayerParameter":
        from edgecaffe.model.caffe.layers import V1_TYPES

        enum = layer.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number
        name = enum[layer.type].name if layer.type in enum else str(layer.type)
        return V1_TYPES.get(name, name)
    return layer.type


def _walk(message, layer: str, path: str, found: dict, source: str) -> None:
    kind = message.DESCRIPTOR.name
    for field, value in message.ListFields():
        key = (kind, field.name)
        where = f"{path}{field.name}"
        if key in REFUSED:
            raise CaffeError(f"{source}: layer {layer!r}: field {where}: {REFUSED[key]}")
        if key in IGNORED:
            found[(where, IGNORED[key])].append(layer)
            continue
        if is_param_block(*key) and field.name != param_field_of(_type_name(message)):
            found[(where, f"a layer of type {_type_name(message)} does not read it")].append(
                layer)
            continue
        if field.message_type is None or kind in ("NetStateRule", "BlobShape"):
            continue
        if field.name in ("layer", "layers", "include", "exclude", "input_shape"):
            continue  # layers are walked one by one; rules and shapes carry no ignored fields
        repeated = _is_repeated(field)
        for index, item in enumerate(value if repeated else [value]):
            suffix = f"[{index}]." if repeated else "."
            _walk(item, layer, where + suffix, found, source)


def audit_fields(net, layers, source: str) -> None:
    """Refuse the fields we cannot honour and warn, once per file, about the fields that cannot
    change an inference result, saying why. `layers` are the net's (V1 or V2) layer messages."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    _walk(net, "(net)", "", found, source)
    for layer in layers:
        _walk(layer, layer.name, "", found, source)
    if not found:
        return
    by_reason: dict[str, tuple[dict, dict]] = defaultdict(lambda: ({}, {}))
    for (field, why), names in sorted(found.items()):
        fields, layers = by_reason[why]
        fields[re.sub(r"\[\d+\]", "", field)] = None
        layers.update(dict.fromkeys(names))
    parts = []
    for why, (fields, layers) in by_reason.items():
        shown = ", ".join(list(layers)[:3]) + (f", ... ({len(layers)} layers)"
                                               if len(layers) > 3 else "")
        parts.append(f"{', '.join(fields)}: {why} (in {shown})")
    warnings.warn(f"{source}: fields ignored at inference: " + "; ".join(parts), stacklevel=3)
