"""The package manifest (`manifest.yaml`): what a network is, layer by layer, and where its
weights are. Plain YAML that people can read and edit; `check_manifest` rejects one that does
not describe a runnable network or does not match its files."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edgecaffe.model.errors import ModelError
from edgecaffe.model.network import Layer, Network, NetworkError

FORMAT = "edgecaffe-package/2"
#: Formats we read: 1 (CRC-32 of the data section only, every tensor F32) and 2 (CRC-32 of the
#: whole weight file, header included; `dtypes` per tensor).
FORMATS = ("edgecaffe-package/1", FORMAT)
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
        if layer.op in ("Dense", "DenseBlock"):
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
    except RecursionError:
        raise PackageError(f"{path}: malformed YAML: nested too deeply") from None
    except UnicodeDecodeError as error:
        raise PackageError(f"{path}: not UTF-8 text: {error.reason}") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PackageError(f"{path}: format is {_short(found)}, expected {FORMAT!r}")
    check_schema(manifest, path)
    return manifest


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_schema(manifest: dict[str, Any], path: Path) -> None:
    """Every key the runtime reads has the right type and range (msgspec, against
    `manifest_schema.ManifestSchema`); raises PackageError naming the file and the field."""
    import msgspec

    from edgecaffe.model.package.manifest_schema import ManifestSchema

    try:
        msgspec.convert(manifest, ManifestSchema, str_keys=True)
    except msgspec.ValidationError as failure:
        text = str(failure)
        expected, _, where = text.partition(" - at `$")
        where = where.rstrip("`")
        layer = re.match(r"\.layers\[(\d+)\]", where)
        name = ""
        if layer:
            entry = manifest["layers"][int(layer.group(1))]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                name = f" (layer {_short(entry['name'])})"
        raise PackageError(f"{path}: {where.lstrip('.') or 'manifest'}{name}: "
                           f"{expected[0].lower() + expected[1:]}") from None


def weight_path(directory: Path, entry: dict[str, Any], manifest_path: Path) -> Path:
    """The layer's weight file, refused unless it stays inside the package folder: no absolute
    path, no `..`, no symlink leading out. Checked by name alone before anything is opened; the
    message is the same whether or not a file exists at the named place."""
    file = entry["weights"]["file"]
    parts = PurePosixPath(file).parts
    inside = bool(parts) and not PurePosixPath(file).is_absolute() and ".." not in parts \
        and "\\" not in file and "\0" not in file
    if inside:
        root = directory.resolve()
        inside = (directory / file).resolve().is_relative_to(root)
    if not inside:
        raise PackageError(f"{manifest_path}: layer {_short(entry['name'])}: weights.file "
                           f"{_short(file)} is refused: weight files must be inside the package "
                           "folder")
    return directory / file


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
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError,
            RecursionError, MemoryError) as error:
        # attrs come from an untrusted file: a value of the wrong type reaches an operator's
        # shape rule as it would from no other source
        raise PackageError(f"{path}: the layers' attrs cannot be used: "
                           f"{type(error).__name__}: {error}") from None
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
