"""Caffe prototxt (+ caffemodel) -> `Network`.

The graph builder applies Caffe's own rules: TEST-phase include/exclude filtering, the legacy
input header becoming an Input layer, explicit Split layers becoming shared blobs, and in-place
layers (`relu1: conv1 -> conv1`) getting single-assignment blob names. The last writer of a Caffe
blob keeps the blob's name, so `forward(x, outputs=["fc7"])` returns what Caffe's `net.blobs["fc7"]`
holds after a forward pass; earlier values are named `<blob>@<layer that wrote them>`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from edgecaffe.model.caffe.caffemodel import CaffeModelReader
from edgecaffe.model.caffe.fields import audit_fields
from edgecaffe.model.caffe.layers import blobs_to_weights, convert, upgrade_v1
from edgecaffe.model.caffe.prototxt import CaffeError, read_prototxt
from edgecaffe.model.errors import ModelError
from edgecaffe.model.network import Layer, Network

_TEST = 1


@dataclass(frozen=True)
class NetState:
    """Caffe's NetState for a deploy net: the TEST phase, a level and a set of stages.

    As Caffe's `Net(file, phase, level, stages)` constructor (net.cpp) builds it: the phase is
    TEST, the caller's stages are added to those of the file's own `state { stage: ... }`, and
    the level is the caller's (Caffe's default 0 replaces the file's `state { level }`).
    """

    level: int = 0
    stages: tuple[str, ...] = ()

    @classmethod
    def of(cls, net, stages: Sequence[str] | None = None, level: int | None = None) -> NetState:
        file_stages = list(net.state.stage) if net.HasField("state") else []
        return cls(level=int(level or 0), stages=tuple(file_stages + list(stages or ())))

    def meets(self, rule) -> bool:
        """Caffe's Net::StateMeetsRule: phase, min/max level, all `stage`, no `not_stage`."""
        if rule.HasField("phase") and rule.phase != _TEST:
            return False
        if rule.HasField("min_level") and self.level < rule.min_level:
            return False
        if rule.HasField("max_level") and self.level > rule.max_level:
            return False
        if any(stage not in self.stages for stage in rule.stage):
            return False
        return not any(stage in self.stages for stage in rule.not_stage)

    def includes(self, layer, source: str) -> bool:
        """Caffe's Net::FilterNet for one layer."""
        if layer.include and layer.exclude:
            raise CaffeError(f"{source}: layer {layer.name!r} has both include and exclude rules "
                             "(Caffe refuses: specify either include rules or exclude rules)")
        if layer.include:
            return any(self.meets(rule) for rule in layer.include)
        return not any(self.meets(rule) for rule in layer.exclude)

    def describe(self) -> str:
        stages = ", ".join(repr(s) for s in self.stages) or "none"
        return f"phase TEST, level {self.level}, stages {stages}"


def _all_layers(net, source: str) -> list:
    if net.layer and net.layers:
        raise CaffeError(f"{source}: the prototxt mixes V2 `layer` and V1 `layers` entries")
    return list(net.layer) if net.layer else [upgrade_v1(v1, source) for v1 in net.layers]


def caffe_layers(net, source: str = "<prototxt>", stages: Sequence[str] | None = None,
                 level: int | None = None) -> list:
    """The net's layers as V2 messages, filtered by Caffe's include/exclude rules for the TEST
    phase with `stages` (added to the file's own) and `level` (see `NetState`)."""
    state = NetState.of(net, stages, level)
    return [layer for layer in _all_layers(net, source) if state.includes(layer, source)]


def _legacy_inputs(net, source: str) -> list[tuple[str, list[int]]]:
    names = list(net.input)
    if not names:
        return []
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise CaffeError(
                f"{source}: {len(names)} input(s) but {len(net.input_shape)} input_shape"
            )
        shapes = [list(shape.dim) for shape in net.input_shape]
    else:
        dims = list(net.input_dim)
        if len(dims) != 4 * len(names):
            raise CaffeError(
                f"{source}: {len(names)} input(s) need {4 * len(names)} input_dim values, "
                f"got {len(dims)}"
            )
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    field = "input_shape" if net.input_shape else "input_dim"
    return [(name, _checked_dims(shape, source, "input", field))
            for name, shape in zip(names, shapes, strict=True)]


InputShape = Mapping[str, Sequence[int]] | Sequence[int]


def _input_shapes(requested: InputShape | None, declared: dict[str, list[int]], source: str
                  ) -> dict[str, list[int]]:
    """The declared input shapes with the caller's replacements, as pycaffe's
    `net.blobs[name].reshape(...)` + `net.reshape()` would set them.

    `requested` maps input blob -> shape, or is one shape for a single-input net; a shape of two
    values (H, W) keeps the declared batch and channels of a 4-d input.
    """
    if requested is None:
        return declared
    if not isinstance(requested, Mapping):
        if len(declared) != 1:
            raise CaffeError(f"{source}: the net has inputs {list(declared)}: give input_shape "
                             "as a mapping from input name to shape")
        requested = {next(iter(declared)): requested}
    unknown = sorted(set(requested) - set(declared))
    if unknown:
        raise CaffeError(f"{source}: input_shape names {unknown}, but the net's inputs are "
                         f"{list(declared)}")
    shapes = dict(declared)
    for name, shape in requested.items():
        shape = [int(d) for d in shape]
        old = declared[name]
        if len(shape) == 2 and len(old) == 4:
            shape = [*old[:2], *shape]
        if len(shape) != len(old) or min(shape, default=1) < 1:
            raise CaffeError(f"{source}: input_shape {shape} for input {name!r} does not fit its "
                             f"declared shape {old} (give all {len(old)} dims, or H and W)")
        shapes[name] = shape
    return shapes


def build_layers(net, source: str, stages: Sequence[str] | None = None, level: int | None = None,
                 input_shape: InputShape | None = None) -> list[Layer]:
    """Translate a NetParameter into IR layers (no weights), keeping the layers Caffe's
    include/exclude rules keep for the TEST phase with `stages` and `level` (see `NetState`),
    with input shapes replaced by `input_shape` (see `_input_shapes`)."""
    state, messages, dropped = _filter(net, source, stages, level)
    owners: dict[str, tuple[str, int]] = {}  # shared param name -> (layer, blob index)
    declared = dict(_legacy_inputs(net, source))
    for message in messages:
        declared.update(_input_layer_shapes(message, source))
    shapes = _input_shapes(input_shape, declared, source)
    layers: list[Layer] = []
    for name in net.input:
        layer_name = "input" if len(net.input) == 1 else f"input/{name}"
        layers.append(Layer(layer_name, "Input", [], [name], {"shape": shapes[name]}))

    # How often each blob is written, so the last write can keep the plain name.
    writes = Counter(top for m in messages if m.type != "Split" for top in m.top)
    written: Counter[str] = Counter()
    current = {name: name for name in net.input}  # Caffe blob name -> IR blob name now
    input_names = set(current)

    def resolve(blob: str, layer_name: str) -> str:
        if blob in current:
            return current[blob]
        why = ""
        if blob in dropped:
            why = (f"; layer {dropped[blob]!r} writes it but its include/exclude rules leave it "
                   f"out in this net state ({state.describe()}): choose the state with "
                   "stages=[...] / level=... (CLI: --stage, --level)")
        raise CaffeError(f"{source}: layer {layer_name!r} reads blob {blob!r}, which no "
                         f"earlier layer or input produces{why}")

    for message in messages:
        if message.type == "Split":
            source_blob = resolve(message.bottom[0] if message.bottom else "", message.name)
            for top in message.top:
                current[top] = source_blob
            continue
        if message.type == "Silence":  # Caffe's sink for unused blobs: computes nothing
            for blob in message.bottom:
                resolve(blob, message.name)
            continue
        if message.type in ("Input", "MemoryData"):
            tops = list(_input_layer_shapes(message, source))
            for top in tops:
                layer_name = message.name if len(tops) == 1 else f"{message.name}/{top}"
                layers.append(Layer(layer_name, "Input", [], [top], {"shape": shapes[top]}))
                current[top] = top
                input_names.add(top)
            continue
        _check_blob_lists(message, source)
        op, attrs = convert(message, source)
        shared = _shared_params(message, owners)
        if shared:
            attrs["shared_params"] = shared
        bottoms = [resolve(blob, message.name) for blob in message.bottom]
        tops = []
        for top in message.top:
            written[top] += 1
            # An input keeps its name (callers feed it by name); layers writing over it in place
            # get suffixed names, as do all but the last writer of any other blob.
            last = written[top] == writes[top] and top not in input_names
            tops.append(top if last else f"{top}@{message.name}")
            current[top] = tops[-1]
        layers.append(Layer(message.name, op, bottoms, tops, attrs))
    return layers


def _filter(net, source: str, stages: Sequence[str] | None, level: int | None
            ) -> tuple[NetState, list, dict[str, str]]:
    """(net state, the layers its rules keep, top blob -> name of a layer they leave out); the
    kept layers' fields are audited (`fields.audit_fields`)."""
    state = NetState.of(net, stages, level)
    everything = _all_layers(net, source)
    messages = [m for m in everything if state.includes(m, source)]
    kept = {id(m) for m in messages}
    names = {m.name for m in messages}
    audit_fields(net, [m for m in (net.layers or messages) if m.name in names], source)
    dropped = {top: m.name for m in everything if id(m) not in kept for top in m.top}
    return state, messages, dropped


def _check_blob_lists(message, source: str) -> None:
    """Every computing layer reads at least one blob and writes at least one (Caffe's
    Layer::CheckBlobCounts for the layers we run)."""
    for field in ("bottom", "top"):
        if not getattr(message, field):
            raise CaffeError(f"{source}: layer {message.name!r} ({message.type}) has no {field} "
                             f"blob: field {field} is required")


def _shared_params(message, owners: dict[str, tuple[str, int]]) -> list[list]:
    """[[blob index, owner layer, owner blob index, strict], ...] for the blobs this layer
    shares through `param { name: ... }` with an earlier layer (Caffe's Net::AppendParam);
    records the blobs it owns in `owners`."""
    shared = []
    for index, spec in enumerate(message.param):
        if not spec.name:
            continue
        if spec.name in owners:
            shared.append([index, *owners[spec.name], spec.share_mode == 0])
        else:
            owners[spec.name] = (message.name, index)
    return shared


def _checked_dims(dims, source: str, layer: str, field: str) -> list[int]:
    dims = [int(d) for d in dims]
    if not dims or any(d < 1 for d in dims):
        raise CaffeError(f"{source}: layer {layer!r}: field {field} is {dims}: an input shape "
                         "needs one or more dims, each at least 1")
    return dims


def _input_layer_shapes(message, source: str) -> dict[str, list[int]]:
    """Top -> shape of an Input or MemoryData layer (empty for other layers)."""
    if message.type == "MemoryData":  # pycaffe's in-memory input: data (+ an unused label)
        p = message.memory_data_param
        if not message.top:
            raise CaffeError(f"{source}: layer {message.name!r} (MemoryData) has no top")
        return {message.top[0]: _checked_dims([p.batch_size, p.channels, p.height, p.width],
                                              source, message.name, "memory_data_param")}
    if message.type != "Input":
        return {}
    shapes = [_checked_dims(s.dim, source, message.name, "input_param.shape.dim")
              for s in message.input_param.shape]
    if len(shapes) not in (1, len(message.top)) or not message.top:
        raise CaffeError(f"{source}: input layer {message.name!r} has {len(message.top)} "
                         f"top(s) but {len(shapes)} shape(s)")
    return {top: shapes[index if len(shapes) > 1 else 0] for index, top in enumerate(message.top)}


def load_caffe(
    prototxt: str | Path,
    caffemodel: str | Path | None = None,
    name: str | None = None,
    *,
    stages: Sequence[str] | None = None,
    level: int | None = None,
    input_shape: InputShape | None = None,
) -> Network:
    """Read a Caffe deploy prototxt and (optionally) its weights into a `Network`.

    Without `caffemodel` the network has every shape, size and FLOP count but no weights.
    The caffemodel is read one layer at a time; its layers are matched to the prototxt's by
    name, as Caffe does, and layers it has that the prototxt lacks are ignored.

    `stages` and `level` choose the net state for `include`/`exclude` rules, as pycaffe's
    `caffe.Net(prototxt, caffe.TEST, stages=..., level=...)` (net.cpp's FilterNet). `input_shape`
    reshapes the input(s) before shapes are inferred, as pycaffe's `blobs[name].reshape` +
    `net.reshape()`: a mapping input -> shape, or one shape (all dims, or H and W) for a
    single-input net. Raises `CaffeError` naming the file and layer.
    """
    prototxt = Path(prototxt)
    net_param = read_prototxt(prototxt)
    layers = build_layers(net_param, str(prototxt), stages, level, input_shape)
    try:
        network = Network(name or net_param.name or prototxt.stem, layers)
    except ModelError as error:
        raise CaffeError(f"{prototxt}: {error}") from None
    check_shared_params(network, str(prototxt))
    if caffemodel is not None:
        load_caffe_weights(network, caffemodel)
    return network


def check_shared_params(network: Network, source: str) -> None:
    """Caffe's Net::AppendParam checks: blobs shared by name must have the same shape
    (share_mode STRICT, the default) or the same number of values (PERMISSIVE)."""
    for layer in network.layers:
        for index, owner_name, owner_index, strict in layer.attrs.get("shared_params") or []:
            owner = network.layer_by_name[owner_name]
            if index >= len(layer.params) or owner_index >= len(owner.params):
                raise CaffeError(f"{source}: layer {layer.name!r}: param {index} shares a blob "
                                 f"with layer {owner_name!r}, but one of them has no such blob")
            mine = list(layer.params.values())[index]
            theirs = list(owner.params.values())[owner_index]
            if (mine != theirs) if strict else (prod(mine) != prod(theirs)):
                raise CaffeError(
                    f"{source}: layer {layer.name!r}: param {index} (shape {mine}) shares a blob "
                    f"with layer {owner_name!r} (shape {theirs}); share_mode "
                    f"{'STRICT needs the same shape' if strict else 'PERMISSIVE the same count'}")


def load_caffe_weights(network: Network, caffemodel: str | Path) -> None:
    """Fill `network.weights` from a caffemodel, checking every blob against the prototxt."""
    with CaffeModelReader(caffemodel) as model:
        for layer in network.layers:
            if layer.params:
                network.weights[layer.name] = read_layer_weights(model, network, layer)


def read_layer_weights(model: CaffeModelReader, network: Network, layer: Layer
                       ) -> dict[str, np.ndarray]:
    """One layer's named weights from a caffemodel, matched by layer name as Caffe does.

    Blobs shared through `param { name: ... }` (Caffe's Net::AppendParam) are one blob in
    Caffe, and CopyTrainedLayersFrom writes into it once per sharing layer the caffemodel holds:
    the last of those in file order wins, for every layer sharing it. Raises CaffeError naming
    the file and layer when weights are missing or do not fit.
    """
    source = str(model.path)
    names = list(layer.params)
    own = (blobs_to_weights(layer, model.read_blobs(layer.name), source)
           if layer.name in model.layers else None)
    groups = _share_groups(network)
    weights = {}
    for index, name in enumerate(names):
        group = groups.get((layer.name, index))
        if group is None:
            if own is None:
                raise CaffeError(
                    f"{source}: has no weights for layer {layer.name!r} ({layer.op}) of the "
                    f"prototxt; its layers are: {', '.join(list(model.layers)[:40])}")
            weights[name] = own[name]
            continue
        order = {layer_name: position for position, layer_name in enumerate(model.layers)}
        present = [member for member in group if member[0] in order]
        if not present:
            raise CaffeError(f"{source}: has no weights for layer {layer.name!r} nor for any "
                             f"layer sharing its param {index}: {[m[0] for m in group]}")
        holder_name, holder_index = max(present, key=lambda member: order[member[0]])
        holder = network.layer_by_name[holder_name]
        array = blobs_to_weights(holder, model.read_blobs(holder_name), source)[
            list(holder.params)[holder_index]]
        shape = layer.params[name]
        if array.size != prod(shape):
            raise CaffeError(
                f"{source}: layer {layer.name!r} shares param {index} with layer "
                f"{holder_name!r}, whose blob has shape {tuple(array.shape)}; this layer "
                f"needs {shape}")
        weights[name] = array.reshape(shape)
    return weights


def _share_groups(network: Network) -> dict[tuple[str, int], list[tuple[str, int]]]:
    """(layer, blob index) -> every (layer, blob index) sharing that blob, owner first."""
    groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for layer in network.layers:
        for index, owner, owner_index, _strict in layer.attrs.get("shared_params") or []:
            group = groups.setdefault((owner, owner_index), [(owner, owner_index)])
            group.append((layer.name, index))
            groups[(layer.name, index)] = group
    return groups
