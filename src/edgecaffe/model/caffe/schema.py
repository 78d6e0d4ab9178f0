"""The subset of Caffe's protobuf schema that EdgeCaffe reads and writes.

The schema is written here in .proto syntax (the messages and fields we need; field numbers and
enum values are facts of the Caffe file format; DropoutParameter.scale_train comes from Faster
R-CNN's fork, rbgirshick/caffe-fast-rcnn; BlobProto's raw_data fields and the Type enum from
NVIDIA Caffe, NVIDIA/caffe) and compiled at import into protobuf message
classes with the `protobuf` runtime, so no generated code and no protoc are needed.
Fields we do not model are skipped by the text parser with a warning (see `prototxt.py`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "caffe"

SCHEMA = """
message BlobShape { repeated int64 dim = 1 [packed = true]; }

message BlobProto {
  optional BlobShape shape = 7;
  repeated float data = 5 [packed = true];
  repeated float diff = 6 [packed = true];
  repeated double double_data = 8 [packed = true];
  repeated double double_diff = 9 [packed = true];
  optional Type raw_data_type = 10;
  optional Type raw_diff_type = 11;
  optional bytes raw_data = 12;
  optional bytes raw_diff = 13;
  optional int32 num = 1 [default = 0];
  optional int32 channels = 2 [default = 0];
  optional int32 height = 3 [default = 0];
  optional int32 width = 4 [default = 0];
}

enum Type { DOUBLE = 0; FLOAT = 1; FLOAT16 = 2; INT = 3; UINT = 4; BOOL = 5; }

message NetState {
  optional Phase phase = 1 [default = TEST];
  optional int32 level = 2 [default = 0];
  repeated string stage = 3;
}

message NetStateRule {
  optional Phase phase = 1;
  optional int32 min_level = 2;
  optional int32 max_level = 3;
  repeated string stage = 4;
  repeated string not_stage = 5;
}

message ParamSpec {
  optional string name = 1;
  optional DimCheckMode share_mode = 2;
  enum DimCheckMode { STRICT = 0; PERMISSIVE = 1; }
  optional float lr_mult = 3 [default = 1.0];
  optional float decay_mult = 4 [default = 1.0];
}

message FillerParameter {
  optional string type = 1 [default = "constant"];
  optional float value = 2 [default = 0];
  optional float min = 3 [default = 0];
  optional float max = 4 [default = 1];
  optional float mean = 5 [default = 0];
  optional float std = 6 [default = 1];
  optional int32 sparse = 7 [default = -1];
  enum VarianceNorm { FAN_IN = 0; FAN_OUT = 1; AVERAGE = 2; }
  optional VarianceNorm variance_norm = 8 [default = FAN_IN];
}

message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated int32 input_dim = 4;
  optional bool force_backward = 5 [default = false];
  optional NetState state = 6;
  optional bool debug_info = 7 [default = false];
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}

message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  optional Phase phase = 10;
  repeated float loss_weight = 5;
  repeated ParamSpec param = 6;
  repeated BlobProto blobs = 7;
  repeated bool propagate_down = 11;
  repeated NetStateRule include = 8;
  repeated NetStateRule exclude = 9;
  optional BatchNormParameter batch_norm_param = 139;
  optional BiasParameter bias_param = 141;
  optional ConcatParameter concat_param = 104;
  optional ConvolutionParameter convolution_param = 106;
  optional DropoutParameter dropout_param = 108;
  optional EltwiseParameter eltwise_param = 110;
  optional ELUParameter elu_param = 140;
  optional ExpParameter exp_param = 111;
  optional FlattenParameter flatten_param = 135;
  optional InnerProductParameter inner_product_param = 117;
  optional InputParameter input_param = 143;
  optional LRNParameter lrn_param = 118;
  optional MemoryDataParameter memory_data_param = 119;
  optional PoolingParameter pooling_param = 121;
  optional PowerParameter power_param = 122;
  optional PReLUParameter prelu_param = 131;
  optional ReLUParameter relu_param = 123;
  optional ReshapeParameter reshape_param = 133;
  optional ScaleParameter scale_param = 142;
  optional SigmoidParameter sigmoid_param = 124;
  optional SliceParameter slice_param = 126;
  optional SoftmaxParameter softmax_param = 125;
  optional TanHParameter tanh_param = 127;
}

message V1LayerParameter {
  repeated string bottom = 2;
  repeated string top = 3;
  optional string name = 4;
  repeated NetStateRule include = 32;
  repeated NetStateRule exclude = 33;
  enum LayerType {
    NONE = 0; ABSVAL = 35; ACCURACY = 1; ARGMAX = 30; BNLL = 2; CONCAT = 3;
    CONTRASTIVE_LOSS = 37; CONVOLUTION = 4; DATA = 5; DECONVOLUTION = 39; DROPOUT = 6;
    DUMMY_DATA = 32; EUCLIDEAN_LOSS = 7; ELTWISE = 25; EXP = 38; FLATTEN = 8; HDF5_DATA = 9;
    HDF5_OUTPUT = 10; HINGE_LOSS = 28; IM2COL = 11; IMAGE_DATA = 12; INFOGAIN_LOSS = 13;
    INNER_PRODUCT = 14; LRN = 15; MEMORY_DATA = 29; MULTINOMIAL_LOGISTIC_LOSS = 16; MVN = 34;
    POOLING = 17; POWER = 26; RELU = 18; SIGMOID = 19; SIGMOID_CROSS_ENTROPY_LOSS = 27;
    SILENCE = 36; SOFTMAX = 20; SOFTMAX_LOSS = 21; SPLIT = 22; SLICE = 33; TANH = 23;
    WINDOW_DATA = 24; THRESHOLD = 31;
  }
  optional LayerType type = 5;
  repeated BlobProto blobs = 6;
  repeated string param = 1001;
  repeated float blobs_lr = 7;
  repeated float weight_decay = 8;
  repeated float loss_weight = 35;
  optional ConcatParameter concat_param = 9;
  optional ConvolutionParameter convolution_param = 10;
  optional DropoutParameter dropout_param = 12;
  optional EltwiseParameter eltwise_param = 24;
  optional ExpParameter exp_param = 41;
  optional InnerProductParameter inner_product_param = 17;
  optional LRNParameter lrn_param = 18;
  optional PoolingParameter pooling_param = 19;
  optional PowerParameter power_param = 21;
  optional ReLUParameter relu_param = 30;
  optional SigmoidParameter sigmoid_param = 38;
  optional SliceParameter slice_param = 31;
  optional SoftmaxParameter softmax_param = 39;
  optional TanHParameter tanh_param = 37;
  optional MemoryDataParameter memory_data_param = 22;
  optional V0LayerParameter layer = 1;
}

message V0LayerParameter {
  optional string name = 1;
  optional string type = 2;
}

message MemoryDataParameter {
  optional uint32 batch_size = 1;
  optional uint32 channels = 2;
  optional uint32 height = 3;
  optional uint32 width = 4;
}

message BatchNormParameter {
  optional bool use_global_stats = 1;
  optional float moving_average_fraction = 2 [default = 0.999];
  optional float eps = 3 [default = 1e-5];
}

message BiasParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
}

message ConcatParameter {
  optional int32 axis = 2 [default = 1];
  optional uint32 concat_dim = 1 [default = 1];
}

message ConvolutionParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3;
  repeated uint32 kernel_size = 4;
  repeated uint32 stride = 6;
  repeated uint32 dilation = 18;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_h = 11;
  optional uint32 kernel_w = 12;
  optional uint32 stride_h = 13;
  optional uint32 stride_w = 14;
  optional uint32 group = 5 [default = 1];
  optional FillerParameter weight_filler = 7;
  optional FillerParameter bias_filler = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 15 [default = DEFAULT];
  optional int32 axis = 16 [default = 1];
  optional bool force_nd_im2col = 17 [default = false];
}

message DropoutParameter {
  optional float dropout_ratio = 1 [default = 0.5];
  optional bool scale_train = 2 [default = true];
}

message EltwiseParameter {
  enum EltwiseOp { PROD = 0; SUM = 1; MAX = 2; }
  optional EltwiseOp operation = 1 [default = SUM];
  repeated float coeff = 2;
  optional bool stable_prod_grad = 3 [default = true];
}

message ELUParameter { optional float alpha = 1 [default = 1]; }

message ExpParameter {
  optional float base = 1 [default = -1.0];
  optional float scale = 2 [default = 1.0];
  optional float shift = 3 [default = 0.0];
}

message FlattenParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 end_axis = 2 [default = -1];
}

message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  optional FillerParameter weight_filler = 3;
  optional FillerParameter bias_filler = 4;
  optional int32 axis = 5 [default = 1];
  optional bool transpose = 6 [default = false];
}

message InputParameter { repeated BlobShape shape = 1; }

message LRNParameter {
  optional uint32 local_size = 1 [default = 5];
  optional float alpha = 2 [default = 1.0];
  optional float beta = 3 [default = 0.75];
  enum NormRegion { ACROSS_CHANNELS = 0; WITHIN_CHANNEL = 1; }
  optional NormRegion norm_region = 4 [default = ACROSS_CHANNELS];
  optional float k = 5 [default = 1.0];
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 6 [default = DEFAULT];
}

message PoolingParameter {
  enum PoolMethod { MAX = 0; AVE = 1; STOCHASTIC = 2; }
  optional PoolMethod pool = 1 [default = MAX];
  optional uint32 pad = 4 [default = 0];
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_size = 2;
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride = 3 [default = 1];
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 11 [default = DEFAULT];
  optional bool global_pooling = 12 [default = false];
  enum RoundMode { CEIL = 0; FLOOR = 1; }
  optional RoundMode round_mode = 13 [default = CEIL];
}

message PowerParameter {
  optional float power = 1 [default = 1.0];
  optional float scale = 2 [default = 1.0];
  optional float shift = 3 [default = 0.0];
}

message PReLUParameter {
  optional FillerParameter filler = 1;
  optional bool channel_shared = 2 [default = false];
}

message ReLUParameter {
  optional float negative_slope = 1 [default = 0];
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 2 [default = DEFAULT];
}

message ReshapeParameter {
  optional BlobShape shape = 1;
  optional int32 axis = 2 [default = 0];
  optional int32 num_axes = 3 [default = -1];
}

message ScaleParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
  optional bool bias_term = 4 [default = false];
  optional FillerParameter bias_filler = 5;
}

message SigmoidParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

message SliceParameter {
  optional int32 axis = 3 [default = 1];
  repeated uint32 slice_point = 2;
  optional uint32 slice_dim = 1 [default = 1];
}

message SoftmaxParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
  optional int32 axis = 2 [default = 1];
}

message TanHParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

enum Phase { TRAIN = 0; TEST = 1; }
"""

# -- layer types beyond the core set (Deconvolution, Crop, the SSD family, ...) -----------------
# Kept as a block of its own: a message declared again here adds its fields to the one above.
# Field numbers come from the caffe.proto that defines each layer: BVLC Caffe (master) for
# ArgMax, Clip, Crop, Log, MVN, Reduction, Swish, Threshold, Tile; the SSD fork (weiliu89/caffe,
# branch ssd) for Normalize, Permute, PriorBox, DetectionOutput; the YOLOv3 forks for Upsample
# (149). DeepLab's Interp uses 143, which BVLC gave to input_param; prototxt files name fields,
# so Interp gets a free number here (2143) and the caffemodel reader reads only names and blobs.
LAYER_TYPES_SCHEMA = """
message LayerParameter {
  optional ArgMaxParameter argmax_param = 103;
  optional ClipParameter clip_param = 148;
  optional CropParameter crop_param = 144;
  optional DetectionOutputParameter detection_output_param = 204;
  optional InterpParameter interp_param = 2143;
  optional LogParameter log_param = 134;
  optional MVNParameter mvn_param = 120;
  optional NormalizeParameter norm_param = 206;
  optional PermuteParameter permute_param = 202;
  optional PriorBoxParameter prior_box_param = 203;
  optional ReductionParameter reduction_param = 136;
  optional SwishParameter swish_param = 147;
  optional ThresholdParameter threshold_param = 128;
  optional TileParameter tile_param = 138;
  optional UpsampleParameter upsample_param = 149;
}

message V1LayerParameter {
  optional ArgMaxParameter argmax_param = 23;
  optional MVNParameter mvn_param = 34;
  optional ThresholdParameter threshold_param = 25;
}

message ArgMaxParameter {
  optional bool out_max_val = 1 [default = false];
  optional uint32 top_k = 2 [default = 1];
  optional int32 axis = 3;
}

message ClipParameter {
  optional float min = 1;
  optional float max = 2;
}

message CropParameter {
  optional int32 axis = 1 [default = 2];
  repeated uint32 offset = 2;
}

message LogParameter {
  optional float base = 1 [default = -1.0];
  optional float scale = 2 [default = 1.0];
  optional float shift = 3 [default = 0.0];
}

message MVNParameter {
  optional bool normalize_variance = 1 [default = true];
  optional bool across_channels = 2 [default = false];
  optional float eps = 3 [default = 1e-9];
}

message ReductionParameter {
  enum ReductionOp { SUM = 1; ASUM = 2; SUMSQ = 3; MEAN = 4; }
  optional ReductionOp operation = 1 [default = SUM];
  optional int32 axis = 2 [default = 0];
  optional float coeff = 3 [default = 1.0];
}

message SwishParameter { optional float beta = 1 [default = 1]; }

message ThresholdParameter { optional float threshold = 1 [default = 0]; }

message TileParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 tiles = 2;
}

message NormalizeParameter {
  optional bool across_spatial = 1 [default = true];
  optional FillerParameter scale_filler = 2;
  optional bool channel_shared = 3 [default = true];
  optional float eps = 4 [default = 1e-10];
}

message PermuteParameter { repeated uint32 order = 1; }

message PriorBoxParameter {
  repeated float min_size = 1;
  repeated float max_size = 2;
  repeated float aspect_ratio = 3;
  optional bool flip = 4 [default = true];
  optional bool clip = 5 [default = false];
  repeated float variance = 6;
  optional uint32 img_size = 7;
  optional uint32 img_h = 8;
  optional uint32 img_w = 9;
  optional float step = 10;
  optional float step_h = 11;
  optional float step_w = 12;
  optional float offset = 13 [default = 0.5];
}

message NonMaximumSuppressionParameter {
  optional float nms_threshold = 1 [default = 0.3];
  optional int32 top_k = 2;
  optional float eta = 3 [default = 1.0];
}

message DetectionOutputParameter {
  enum CodeType { CORNER = 1; CENTER_SIZE = 2; CORNER_SIZE = 3; }
  optional uint32 num_classes = 1;
  optional bool share_location = 2 [default = true];
  optional int32 background_label_id = 3 [default = 0];
  optional NonMaximumSuppressionParameter nms_param = 4;
  optional CodeType code_type = 6 [default = CORNER];
  optional bool variance_encoded_in_target = 8 [default = false];
  optional int32 keep_top_k = 7 [default = -1];
  optional float confidence_threshold = 9;
  optional bool visualize = 10 [default = false];
  optional float visualize_threshold = 11;
  optional string save_file = 12;
}

message InterpParameter {
  optional int32 height = 1 [default = 0];
  optional int32 width = 2 [default = 0];
  optional int32 zoom_factor = 3 [default = 1];
  optional int32 shrink_factor = 4 [default = 1];
  optional int32 pad_beg = 5 [default = 0];
  optional int32 pad_end = 6 [default = 0];
}

message UpsampleParameter { optional int32 scale = 1 [default = 1]; }
"""

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64, "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED}
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][\w.]*|-?[\d.]+(?:e-?\d+)?|[{}=;\[\],]')


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items = _TOKEN.findall(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self, expected: str | None = None) -> str:
        token = self.items[self.pos]
        if expected is not None and token != expected:
            raise SyntaxError(f"schema: expected {expected!r}, got {token!r}")
        self.pos += 1
        return token


def _parse_enum(tokens: _Tokens) -> descriptor_pb2.EnumDescriptorProto:
    enum = descriptor_pb2.EnumDescriptorProto(name=tokens.take())
    tokens.take("{")
    while tokens.peek() != "}":
        name = tokens.take()
        tokens.take("=")
        enum.value.add(name=name, number=int(tokens.take()))
        tokens.take(";")
    tokens.take("}")
    return enum


def _parse_message(tokens: _Tokens, enum_names: set[str]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=tokens.take())
    tokens.take("{")
    while tokens.peek() != "}":
        keyword = tokens.take()
        if keyword == "enum":
            message.enum_type.append(_parse_enum(tokens))
            continue
        type_name, name = tokens.take(), tokens.take()
        tokens.take("=")
        field = message.field.add(name=name, number=int(tokens.take()), label=_LABELS[keyword])
        if type_name in _SCALARS:
            field.type = _SCALARS[type_name]
        else:
            field.type_name = type_name  # resolved below, once nested enums are known
        if tokens.peek() == "[":
            tokens.take("[")
            while True:
                option = tokens.take()
                tokens.take("=")
                value = tokens.take()
                if option == "packed":
                    field.options.packed = value == "true"
                else:
                    field.default_value = value.strip('"')
                if tokens.take() == "]":
                    break
        tokens.take(";")
    tokens.take("}")
    nested = {e.name for e in message.enum_type}
    for field in message.field:
        if field.type_name:
            name = field.type_name
            field.type = _F.TYPE_ENUM if name in nested | enum_names else _F.TYPE_MESSAGE
            scope = f".{PACKAGE}.{message.name}." if name in nested else f".{PACKAGE}."
            field.type_name = scope + name
    return message


@cache
def _classes() -> dict[str, Any]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="edgecaffe_caffe_subset.proto", package=PACKAGE, syntax="proto2"
    )
    text = SCHEMA + LAYER_TYPES_SCHEMA
    enum_names = set(re.findall(r"^enum (\w+)", text, flags=re.M))
    tokens = _Tokens(text)
    declared: dict[str, descriptor_pb2.DescriptorProto] = {}
    while tokens.peek() is not None:
        keyword = tokens.take()
        if keyword == "message":
            message = _parse_message(tokens, enum_names)
            if message.name in declared:  # a later block adding fields to a message
                declared[message.name].field.extend(message.field)
                continue
            file_proto.message_type.append(message)
            declared[message.name] = file_proto.message_type[-1]  # append stored a copy
        elif keyword == "enum":
            file_proto.enum_type.append(_parse_enum(tokens))
        else:
            raise SyntaxError(f"schema: unexpected {keyword!r}")
    pool = descriptor_pool.DescriptorPool()
    file_desc = pool.Add(file_proto) and pool.FindFileByName(file_proto.name)
    return {
        name: message_factory.GetMessageClass(desc)
        for name, desc in file_desc.message_types_by_name.items()
    }


def message_class(name: str) -> Any:
    """The protobuf class of a Caffe message, e.g. `message_class("NetParameter")`."""
    return _classes()[name]
