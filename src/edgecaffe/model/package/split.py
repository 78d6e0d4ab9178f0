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
from edgecaffe.model.caffe.importer import read_layer_weights
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package.cached import cached_package
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
from edgecaffe.model.sources import explain_source
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
    max_block_bytes: int | None = None,
) -> ModelPackage:
    """Write `directory` as a package of `network`, asking `weights_for(layer)` one layer at a
    time. An existing package there is replaced; any other non-empty folder is refused.
    `max_block_bytes`: Dense/Conv layers with more weight bytes become blocks
    (`blocks.block_network`)."""
    directory = Path(directory)
    if max_block_bytes is not None:
        from edgecaffe.model.package.blocks import block_network, blocked_source

        blocked, sources = block_network(network, max_block_bytes)
        if sources:
            weights_for = blocked_source(network, sources, weights_for)
            network = blocked
            source = {**source, "max_block_bytes": int(max_block_bytes)}
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
        "preprocess": _preprocess(network, input_blob),
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


def _preprocess(network: Network, input_blob: str) -> dict[str, Any]:
    layout = network.meta.get("layout", "NCHW")
    shape = network.blob_shapes[input_blob]
    preprocess = {
        "mean": [float(v) for v in network.meta.get("mean", [0.0, 0.0, 0.0])],
        "scale": float(network.meta.get("scale", 1.0)),
        "channel_order": network.meta.get("channel_order", "BGR"),
        "size": list(shape[1:3] if layout == "NHWC" else shape[2:]),
    }
    if layout != "NCHW":
        preprocess["layout"] = layout
    if network.meta.get("output"):
        preprocess["output"] = network.meta["output"]
    return preprocess


def split_onnx(path: str | Path, directory: str | Path, *,
               input_shape: Sequence[int] | None = None,
               progress: Progress | None = None,
               max_block_bytes: int | None = None) -> ModelPackage:
    """Make a package from an .onnx file (its side file's labels and preprocessing included).
    The whole model is read first (ONNX initializers are not streamed), then written one layer
    file at a time."""
    from edgecaffe.model.onnx import load_onnx

    network = load_onnx(path, input_shape=input_shape)
    record: dict[str, Any] = {"kind": "onnx", "onnx": str(path),
                              "opset": network.meta["source"]["opset"]}
    if input_shape is not None:
        record["input_shape"] = [int(d) for d in input_shape]
    return write_package(network, lambda layer: network.weights[layer.name], directory,
                         source=record, progress=progress, max_block_bytes=max_block_bytes)


def onnx_package(path: str | Path, input_shape: Sequence[int] | None = None) -> ModelPackage:
    """The package of an .onnx file, split into the cache on first use (keyed by the file's
    path, size and modification time, and the input shape)."""
    import hashlib

    from edgecaffe.model.zoo import cache_dir

    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such ONNX file")
    stat = path.stat()
    side = Path(f"{path}.yaml")
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{input_shape}"
    if side.is_file():
        key += f"|{side.stat().st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    target = cache_dir() / "onnx" / f"{path.stem}-{digest}"
    return cached_package(target, lambda folder: split_onnx(path, folder,
                                                            input_shape=input_shape))


def _caffe_weights(reader: CaffeModelReader, network: Network) -> WeightSource:
    def weights_for(layer: Layer) -> dict[str, np.ndarray]:
        return read_layer_weights(reader, network, layer)

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
    stages: Sequence[str] | None = None,
    level: int | None = None,
    input_shape: Sequence[int] | None = None,
    image_size: tuple[int, int] | None = None,
    max_block_bytes: int | None = None,
) -> ModelPackage:
    """Make a package from `source`: [zoo name], [original folder], [prototxt, caffemodel] or
    [model.onnx] (`input_shape` fills an ONNX graph's symbolic dims).

    `synthetic` fills the weights from `seed` instead of reading a caffemodel (for networks
    whose trained weights are not at hand); zoo networks always are synthetic. `stages` and
    `level` choose Caffe's net state, `input_shape` reshapes the input (all dims, or H and W)
    before shapes, bytes and FLOPs are inferred. `image_size` (H, W) is the image an original
    folder with `use-scales: true` will run on: its input becomes the image enlarged 5x, as the
    original does (see `OriginalNetwork.scaled_input_size`). `max_block_bytes`: Dense and
    group-1 Conv layers with more weight bytes are split into blocks (`blocks.py`).
    """
    from edgecaffe.model.zoo import ZOO, get_zoo_model, zoo_files

    paths = [Path(s) for s in source]
    if len(paths) == 1 and paths[0].suffix.lower() == ".onnx":
        return split_onnx(paths[0], directory, input_shape=input_shape, progress=progress,
                          max_block_bytes=max_block_bytes)
    meta: dict[str, Any] = {}
    original = original_layers = None
    if len(paths) == 1 and is_original_folder(paths[0]):
        folder = read_original(paths[0])
        prototxt, caffemodel = folder.prototxt, folder.caffemodel
        name, meta = folder.name, {**folder.preprocess(), "labels": folder.labels()}
        original, original_layers = folder.top_level(), folder.layers
        kind = "original-edgecaffe"
        if input_shape is None and image_size is not None:
            input_shape = folder.load_options(image_size).get("input_shape")
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
    elif len(paths) == 1 and (reason := explain_source(str(source[0]), "split")) is not None:
        raise PackageError(reason)
    else:
        raise PackageError(
            f"cannot split {' '.join(map(str, source))}: give a zoo name, a folder with "
            "description.yaml, or a prototxt and its caffemodel"
        )
    network = load_caffe(prototxt, name=name, stages=stages, level=level,
                         input_shape=input_shape)
    network.meta.update(meta)
    if original_layers:
        _keep_unmatched(original, original_layers, network, prototxt)
    record: dict[str, Any] = {"kind": kind, "prototxt": str(prototxt)}
    if stages or level:
        record.update(stages=list(stages or []), level=int(level or 0))
    if input_shape is not None:
        record["input_shape"] = list(network.input_shape)
    if kind == "zoo" or synthetic:
        record.update(seed=seed, synthetic=True)
    if synthetic or caffemodel is None:
        return write_package(network, lambda layer: synthesize_weights(layer, seed), directory,
                             source=record, original=original, original_layers=original_layers,
                             progress=progress, max_block_bytes=max_block_bytes)
    if not caffemodel.exists():
        raise PackageError(
            f"{caffemodel}: caffemodel not found (trained weights are not bundled with the "
            f"original's folders); add --synthetic to use seeded synthetic weights, or "
            f"`edgecaffe synth {prototxt} -o {caffemodel}`"
        )
    record["caffemodel"] = str(caffemodel)
    with CaffeModelReader(caffemodel) as reader:
        return write_package(network, _caffe_weights(reader, network), directory,
                             source=record, original=original, original_layers=original_layers,
                             progress=progress, max_block_bytes=max_block_bytes)
