"""Caffe prototxt (+ caffemodel) -> `Network`.

The graph builder applies Caffe's own rules: TEST-phase include/exclude filtering, the legacy
input header becoming an Input layer, explicit Split layers becoming shared blobs, and in-place
layers (`relu1: conv1 -> conv1`) getting single-assignment blob names. The last writer of a Caffe
blob keeps the blob's name, so `forward(x, outputs=["fc7"])` returns what Caffe's `net.blobs["fc7"]`
holds after a forward pass; earlier values are named `<blob>@<layer that wrote them>`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgecaffe.model.caffe.caffemodel import CaffeModelReader
from edgecaffe.model.caffe.layers import blobs_to_weights, convert, upgrade_v1
from edgecaffe.model.caffe.prototxt import CaffeError, read_prototxt
from edgecaffe.model.errors import ModelError
from edgecaffe.model.network import Layer, Network

_TEST = 1


def _meets(rule, level: int = 0) -> bool:
    """Caffe's NetStateRule check against the TEST phase with no stages."""
    if rule.HasField("phase") and rule.phase != _TEST:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return not rule.stage  # a rule that requires stages is not met: we set none


def _included(layer) -> bool:
    if layer.include:
        return any(_meets(rule) for rule in layer.include)
    return not any(_meets(rule) for rule in layer.exclude)


def caffe_layers(net, source: str = "<prototxt>") -> list:
    """The net's layers as V2 messages, TEST phase only."""
    if net.layer and net.layers:
        raise ValueError("the prototxt mixes V2 `layer` and V1 `layers` entries")
    layers = list(net.layer) if net.layer else [upgrade_v1(v1, source) for v1 in net.layers]
    return [layer for layer in layers if _included(layer)]


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
    return list(zip(names, shapes, strict=True))


def build_layers(net, source: str) -> list[Layer]:
    """Translate a NetParameter into IR layers (no weights)."""
    try:
        messages = caffe_layers(net, source)
    except CaffeError:
        raise
    except ValueError as error:
        raise CaffeError(f"{source}: {error}") from None
    inputs = _legacy_inputs(net, source)
    layers: list[Layer] = []
    for name, shape in inputs:
        layer_name = "input" if len(inputs) == 1 else f"input/{name}"
        layers.append(Layer(layer_name, "Input", [], [name], {"shape": shape}))

    # How often each blob is written, so the last write can keep the plain name.
    writes = Counter(top for m in messages if m.type != "Split" for top in m.top)
    written: Counter[str] = Counter()
    current = {name: name for name, _ in inputs}  # Caffe blob name -> IR blob name now
    input_names = set(current)

    def resolve(blob: str, layer_name: str) -> str:
        if blob not in current:
            raise CaffeError(f"{source}: layer {layer_name!r} reads blob {blob!r}, which no "
                             "earlier layer or input produces")
        return current[blob]

    for message in messages:
        if message.type == "Split":
            source_blob = resolve(message.bottom[0], message.name)
            for top in message.top:
                current[top] = source_blob
            continue
        if message.type == "MemoryData":  # pycaffe's in-memory input: data (+ an unused label)
            p = message.memory_data_param
            shape = [p.batch_size, p.channels, p.height, p.width]
            layers.append(Layer(message.name, "Input", [], [message.top[0]], {"shape": shape}))
            current[message.top[0]] = message.top[0]
            input_names.add(message.top[0])
            continue
        if message.type == "Input":
            shapes = [list(s.dim) for s in message.input_param.shape]
            if len(shapes) not in (1, len(message.top)):
                raise CaffeError(f"{source}: input layer {message.name!r} has {len(message.top)} "
                                 f"top(s) but {len(shapes)} shape(s)")
            for index, top in enumerate(message.top):
                layer_name = message.name if len(message.top) == 1 else f"{message.name}/{top}"
                shape = shapes[index if len(shapes) > 1 else 0]
                layers.append(Layer(layer_name, "Input", [], [top], {"shape": shape}))
                current[top] = top
                input_names.add(top)
            continue
        op, attrs = convert(message, source)
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


def load_caffe(
    prototxt: str | Path, caffemodel: str | Path | None = None, name: str | None = None
) -> Network:
    """Read a Caffe deploy prototxt and (optionally) its weights into a `Network`.

    Without `caffemodel` the network has every shape, size and FLOP count but no weights.
    The caffemodel is read one layer at a time; its layers are matched to the prototxt's by
    name, as Caffe does, and layers it has that the prototxt lacks are ignored.
    """
    prototxt = Path(prototxt)
    net_param = read_prototxt(prototxt)
    layers = build_layers(net_param, str(prototxt))
    try:
        network = Network(name or net_param.name or prototxt.stem, layers)
    except ModelError as error:
        raise CaffeError(f"{prototxt}: {error}") from None
    if caffemodel is not None:
        load_caffe_weights(network, caffemodel)
    return network


def load_caffe_weights(network: Network, caffemodel: str | Path) -> None:
    """Fill `network.weights` from a caffemodel, checking every blob against the prototxt."""
    with CaffeModelReader(caffemodel) as model:
        for layer in network.layers:
            if not layer.params:
                continue
            if layer.name not in model.layers:
                raise CaffeError(
                    f"{caffemodel}: has no weights for layer {layer.name!r} ({layer.op}) of the "
                    f"prototxt; its layers are: {', '.join(list(model.layers)[:40])}"
                )
            blobs = model.read_blobs(layer.name)
            network.weights[layer.name] = blobs_to_weights(layer, blobs, str(caffemodel))
