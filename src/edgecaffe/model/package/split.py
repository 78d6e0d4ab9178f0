"""`edgecaffe split`: a network and its weights -> a model package, one layer at a time.

Sources: a Caffe prototxt + caffemodel pair, a zoo name, or one of the original EdgeCaffe's
network folders. Only one layer's weights are in memory at once (the caffemodel is streamed), so
splitting a 575 MB model fits a 512 MB device.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecaffe.model.caffe import CaffeModelReader, load_caffe
from edgecaffe.model.caffe.layers import blobs_to_weights
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package.manifest import (
    FORMAT,
    MANIFEST,
    WEIGHTS_DIR,
    PackageError,
    _plain,
    dump_manifest,
    layer_entry,
    stages,
    weight_file_name,
)
from edgecaffe.model.package.original import is_original_folder, read_original
from edgecaffe.model.package.package import ModelPackage, open_package
from edgecaffe.model.package.tensorfile import write_tensors
from edgecaffe.model.synth import synthesize_weights

WeightSource = Callable[[Layer], dict[str, np.ndarray]]
Progress = Callable[[str, int], None]


def write_package(
    network: Network,
    weights_for: WeightSource,
    directory: str | Path,
    *,
    source: dict[str, Any],
    original: dict[str, Any] | None = None,
    original_layers: dict[str, dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> ModelPackage:
    """Write `directory` as a package of `network`, asking `weights_for(layer)` one layer at a
    time. An existing package there is replaced; any other non-empty folder is refused."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / MANIFEST).exists():
        raise PackageError(f"{directory}: exists and is not a model package; refusing to write")
    if (directory / WEIGHTS_DIR).exists():
        shutil.rmtree(directory / WEIGHTS_DIR)
    (directory / WEIGHTS_DIR).mkdir(parents=True)
    stage = stages(network)
    entries = []
    for index, layer in enumerate(network.layers):
        entry = layer_entry(network, layer, stage[layer.name])
        if layer.params:
            arrays = weights_for(layer)
            for name, shape in layer.params.items():
                if tuple(arrays[name].shape) != shape or arrays[name].dtype != np.float32:
                    raise PackageError(f"layer {layer.name!r}: weight {name!r} is "
                                       f"{arrays[name].dtype} {arrays[name].shape}, needs {shape}")
            file = weight_file_name(index, layer.name)
            nbytes, crc = write_tensors(directory / file, {n: arrays[n] for n in layer.params})
            entry["weights"] = {"file": file, "bytes": nbytes, "crc32": crc,
                                "tensors": {n: list(s) for n, s in layer.params.items()},
                                "dtypes": {n: "F32" for n in layer.params}}
            del arrays
            if progress is not None:
                progress(layer.name, layer.weight_bytes)
        if original_layers and layer.name in original_layers:
            entry["original"] = _plain(original_layers[layer.name])
        entries.append(entry)
    input_blob = network.inputs[0]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": network.name,
        "source": source,
        "input": {"blob": input_blob, "shape": list(network.blob_shapes[input_blob])},
        "preprocess": {
            "mean": [float(v) for v in network.meta.get("mean", [0.0, 0.0, 0.0])],
            "scale": float(network.meta.get("scale", 1.0)),
            "channel_order": network.meta.get("channel_order", "BGR"),
            "size": list(network.blob_shapes[input_blob][2:]),
        },
        "labels": list(network.meta.get("labels", [])),
        "totals": {"layers": len(network.layers), "weight_bytes": network.weight_bytes,
                   "flops": network.flops,
                   "max_layer_weight_bytes": max(l.weight_bytes for l in network.layers)},
    }
    if original:
        manifest["original"] = _plain(original)
    manifest["layers"] = entries
    dump_manifest(manifest, directory)
    return open_package(directory)


def _caffe_weights(reader: CaffeModelReader, caffemodel: Path) -> WeightSource:
    def weights_for(layer: Layer) -> dict[str, np.ndarray]:
        if layer.name not in reader.layers:
            raise PackageError(f"{caffemodel}: has no weights for layer {layer.name!r}")
        return blobs_to_weights(layer, reader.read_blobs(layer.name), str(caffemodel))

    return weights_for


def _keep_unmatched(original: dict[str, Any], entries: dict[str, dict[str, Any]],
                    network: Network, prototxt: Path) -> None:
    """Description entries with no layer here: Caffe's automatic Split layers (blobs read by
    several layers are shared, not split) or stale entries. Their figures are kept all the same."""
    unmatched = sorted(set(entries) - set(network.layer_by_name))
    if not unmatched:
        return
    original["unmatched-layers"] = [entries[name] for name in unmatched]
    unexpected = [name for name in unmatched if not name.endswith("_split")]
    if unexpected:
        warnings.warn(f"{prototxt.parent / 'description.yaml'}: layer entries {unexpected} match "
                      "no layer of the prototxt (kept under original.unmatched-layers)",
                      stacklevel=3)


def split(
    source: Sequence[str | Path],
    directory: str | Path,
    *,
    seed: int = 0,
    batch: int = 1,
    synthetic: bool = False,
    progress: Progress | None = None,
) -> ModelPackage:
    """Make a package from `source`: [zoo name], [original folder] or [prototxt, caffemodel].

    `synthetic` fills the weights from `seed` instead of reading a caffemodel (for networks
    whose trained weights are not at hand); zoo networks always are synthetic.
    """
    from edgecaffe.model.zoo import ZOO, get_zoo_model, zoo_files

    paths = [Path(s) for s in source]
    meta: dict[str, Any] = {}
    original = original_layers = None
    if len(paths) == 1 and is_original_folder(paths[0]):
        folder = read_original(paths[0])
        prototxt, caffemodel = folder.prototxt, folder.caffemodel
        name, meta = folder.name, {**folder.preprocess(), "labels": folder.labels()}
        original, original_layers = folder.top_level(), folder.layers
        kind = "original-edgecaffe"
    elif len(paths) == 1 and (paths[0].suffix == ".prototxt" and synthetic):
        prototxt, caffemodel, name, kind = paths[0], None, None, "caffe"
    elif len(paths) == 1 and str(source[0]).lower() in {n.lower() for n in ZOO}:
        model = get_zoo_model(str(source[0]))
        prototxt, caffemodel = zoo_files(model.name, seed=seed, batch=batch)
        name, meta, kind = model.name, model.meta, "zoo"
        if model.original_mean_exec_ms is not None:
            # The original's Raspberry Pi figure: Masa's shortest-network-first key until the
            # package is profiled on this machine.
            original = {"mean-execution-time": model.original_mean_exec_ms}
    elif len(paths) == 2:
        prototxt, caffemodel, name, kind = paths[0], paths[1], None, "caffe"
    else:
        raise PackageError(
            f"cannot split {' '.join(map(str, source))}: give a zoo name, a folder with "
            "description.yaml, or a prototxt and its caffemodel"
        )
    network = load_caffe(prototxt, name=name)
    network.meta.update(meta)
    if original_layers:
        _keep_unmatched(original, original_layers, network, prototxt)
    record: dict[str, Any] = {"kind": kind, "prototxt": str(prototxt)}
    if kind == "zoo" or synthetic:
        record.update(seed=seed, synthetic=True)
    if synthetic or caffemodel is None:
        return write_package(network, lambda layer: synthesize_weights(layer, seed), directory,
                             source=record, original=original, original_layers=original_layers,
                             progress=progress)
    if not caffemodel.exists():
        raise PackageError(
            f"{caffemodel}: caffemodel not found (trained weights are not bundled with the "
            f"original's folders); add --synthetic to use seeded synthetic weights, or "
            f"`edgecaffe synth {prototxt} -o {caffemodel}`"
        )
    record["caffemodel"] = str(caffemodel)
    with CaffeModelReader(caffemodel) as reader:
        return write_package(network, _caffe_weights(reader, caffemodel), directory,
                             source=record, original=original, original_layers=original_layers,
                             progress=progress)
