"""The package manifest (`manifest.yaml`): what a network is, layer by layer, and where its
weights are. Plain YAML that people can read and edit; `check_manifest` rejects one that does
not describe a runnable network or does not match its files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from edgecaffe.model.errors import ModelError
from edgecaffe.model.network import Layer, Network, NetworkError

FORMAT = "edgecaffe-package/1"
MANIFEST = "manifest.yaml"
WEIGHTS_DIR = "weights"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class PackageError(ModelError):
    """A model package that cannot be opened: the message names the folder, file and layer."""


def weight_file_name(index: int, layer_name: str) -> str:
    """A file name for a layer's weights: index first (unique, sorted), then a readable name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer_name).strip("._") or "layer"
    return f"{WEIGHTS_DIR}/{index:03d}_{safe}.safetensors"


def stages(network: Network) -> dict[str, str]:
    """DeepEye's split: layers from the first fully connected (Dense) layer on are 'fc'."""
    result, stage = {}, "conv"
    for layer in network.layers:
        if layer.op == "Dense":
            stage = "fc"
        result[layer.name] = stage
    return result


def layer_entry(network: Network, layer: Layer, stage: str) -> dict[str, Any]:
    shapes = [list(network.blob_shapes[blob]) for blob in layer.outputs]
    return {
        "name": layer.name,
        "op": layer.op,
        "inputs": list(layer.inputs),
        "outputs": list(layer.outputs),
        "attrs": _plain(layer.attrs),
        "stage": stage,
        "output_shapes": shapes,
        "output_bytes": sum(network.blob_bytes(blob) for blob in layer.outputs),
        "flops": layer.flops,
    }


def _plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python numbers, so YAML stays plain."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def dump_manifest(manifest: dict[str, Any], directory: Path) -> None:
    text = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     width=100)
    tmp = directory / (MANIFEST + ".partial")
    tmp.write_text(f"# EdgeCaffe model package ({FORMAT})\n" + text)
    tmp.replace(directory / MANIFEST)


def load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise PackageError(f"{directory}: no such package folder")
    if not path.exists():
        raise PackageError(f"{directory}: not a model package (no {MANIFEST}); make one with "
                           "`edgecaffe split`")
    try:
        manifest = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise PackageError(f"{path}: malformed YAML: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PackageError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    for key in ("name", "layers"):
        if key not in manifest:
            raise PackageError(f"{path}: missing key {key!r}")
    return manifest


def network_from_manifest(manifest: dict[str, Any], path: Path) -> Network:
    """Rebuild the network and check it against every shape and weight the manifest records."""
    try:
        layers = [
            Layer(entry["name"], entry["op"], list(entry["inputs"]), list(entry["outputs"]),
                  dict(entry.get("attrs") or {}))
            for entry in manifest["layers"]
        ]
    except (KeyError, TypeError) as error:
        raise PackageError(f"{path}: a layer entry lacks {error}") from None
    try:
        network = Network(manifest["name"], layers, meta=manifest.get("preprocess") or {})
    except NetworkError as error:
        raise PackageError(f"{path}: the layers do not form a valid network: {error}") from None
    for entry, layer in zip(manifest["layers"], network.layers, strict=True):
        shapes = [list(network.blob_shapes[blob]) for blob in layer.outputs]
        if entry.get("output_shapes") not in (None, shapes):
            raise PackageError(
                f"{path}: layer {layer.name!r} records output shapes {entry['output_shapes']} "
                f"but its inputs and attrs give {shapes}"
            )
        recorded = (entry.get("weights") or {}).get("tensors") or {}
        expected = {name: list(shape) for name, shape in layer.params.items()}
        if {k: list(v) for k, v in recorded.items()} != expected:
            raise PackageError(
                f"{path}: layer {layer.name!r} records weights {recorded} but needs {expected}"
            )
    labels = manifest.get("labels") or []
    network.meta.update({"labels": list(labels)})
    return network
