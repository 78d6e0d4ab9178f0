"""`edgecaffe synth`: any deploy prototxt + seeded synthetic weights -> a real caffemodel."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edgecaffe.model.caffe.caffemodel import LayerBlobs, write_caffemodel
from edgecaffe.model.caffe.importer import InputShape, build_layers, caffe_layers
from edgecaffe.model.caffe.layers import weights_to_blobs
from edgecaffe.model.caffe.prototxt import CaffeError, read_prototxt
from edgecaffe.model.errors import ModelError
from edgecaffe.model.network import Network
from edgecaffe.model.synth import synthesize_weights


def synthesize_caffemodel(
    prototxt: str | Path,
    output: str | Path,
    seed: int = 0,
    progress: Callable[[str, int], None] | None = None,
    *,
    stages: Sequence[str] | None = None,
    level: int | None = None,
    input_shape: InputShape | None = None,
) -> Network:
    """Write `output` (.caffemodel) with weights for every weight-bearing layer of `prototxt`.

    Layers are generated and written one at a time, so peak memory is about the largest layer.
    Returns the network's structure (without weights). `progress(layer_name, bytes)` is called
    after each layer. `stages`, `level` and `input_shape` are those of `load_caffe`.
    """
    prototxt = Path(prototxt)
    net_param = read_prototxt(prototxt)
    try:
        network = Network(net_param.name or prototxt.stem, build_layers(
            net_param, str(prototxt), stages, level, input_shape))
    except ModelError as error:
        raise CaffeError(f"{prototxt}: {error}") from None
    messages = {m.name: m for m in caffe_layers(net_param, str(prototxt), stages, level)}

    def layers() -> Iterator[LayerBlobs]:
        for layer in network.layers:
            if not layer.params:
                continue
            message = messages[layer.name]
            weights = synthesize_weights(layer, seed)
            yield LayerBlobs(layer.name, message.type, weights_to_blobs(layer, weights),
                             list(message.bottom), list(message.top))
            if progress is not None:
                progress(layer.name, layer.weight_bytes)

    write_caffemodel(output, network.name, layers())
    return network
