"""The declared schema of `manifest.yaml`: every key the runtime reads, with its type and range.

A package is untrusted input (it may come from anyone), so `load_manifest` checks it against
these types with msgspec before any field is used: strict types (`true` is not a size), sizes
and counts non-negative, times finite. Keys not listed here are kept and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Count = Annotated[int, msgspec.Meta(ge=0)]
Dim = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
Shape = Annotated[list[Dim], msgspec.Meta(max_length=16)]
Ms = Annotated[float, msgspec.Meta(ge=0, le=1e12)]  # NaN and inf fail the range
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
DType = Literal["F32", "F64", "F16", "I64", "I32", "U8"]


class Weights(msgspec.Struct):
    file: Name
    bytes: Annotated[int, msgspec.Meta(ge=8)]
    tensors: dict[Name, Shape]
    crc32: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] | None = None
    #: Format 2: each tensor's safetensors dtype (format 1: all F32).
    dtypes: dict[Name, DType] | None = None


class LayerProfile(msgspec.Struct):
    load_ms: Ms = 0.0
    exec_ms: Ms = 0.0
    exec_ms_single_thread: Ms = 0.0
    weight_bytes: Count = 0
    activation_bytes: Count = 0


class Layer(msgspec.Struct):
    name: Name
    op: Name
    inputs: list[Name]
    outputs: list[Name]
    attrs: dict[str, Any] | None = None
    stage: Literal["conv", "fc"] = "conv"
    output_shapes: list[Shape] | None = None
    output_bytes: Count = 0
    flops: Count = 0
    weights: Weights | None = None
    profile: LayerProfile | None = None


class Preprocess(msgspec.Struct):
    mean: Annotated[list[float], msgspec.Meta(max_length=16)] = []
    scale: float = 1.0
    channel_order: Literal["BGR", "RGB"] = "BGR"
    size: Annotated[list[Dim], msgspec.Meta(max_length=4)] = []


class Profile(msgspec.Struct):
    mean_exec_ms: Ms | None = None
    init_ms: Ms = 0.0
    peak_rss_whole_model_bytes: Count | None = None


class Original(msgspec.Struct):
    """The original description's memory figures (MB) that scheduling reads."""

    max_memory_valgrind: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = msgspec.field(
        default=None, name="max-memory-valgrind")
    max_memory_usage: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = msgspec.field(
        default=None, name="max-memory-usage")
    mean_execution_time: Ms | None = msgspec.field(default=None, name="mean-execution-time")


class ManifestSchema(msgspec.Struct):
    format: str
    name: Name
    layers: Annotated[list[Layer], msgspec.Meta(min_length=1, max_length=100_000)]
    labels: list[str] | None = None
    preprocess: Preprocess | None = None
    profile: Profile | None = None
    original: Original | None = None


MegaBytes = Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None


class DescriptionSchema(msgspec.Struct, rename="kebab"):
    """The keys of the original EdgeCaffe's `description.yaml` that we read (others are kept as
    they are and warned about when unknown)."""

    name: str | int | None = None
    network_file: Name | None = None
    model_file: Name | None = None
    type: str | None = None
    mean_scalar: Annotated[list[float], msgspec.Meta(max_length=4)] | None = None
    input_scale: Annotated[list[Dim], msgspec.Meta(max_length=4)] | None = None
    uses_result_vector: bool | None = None
    result_vector: list[str | int | float] | None = None
    mean_execution_time: Ms | None = None
    max_memory_valgrind: MegaBytes = None
    max_memory_usage: MegaBytes = None
    conv_layers: list[Any] | None = None
    fc_layers: list[Any] | None = None
