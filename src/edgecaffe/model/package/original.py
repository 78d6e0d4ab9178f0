"""The original EdgeCaffe's network folders: `description.yaml` + prototxt + caffemodel.

Every key that carries information is kept (top-level keys under `original` in the manifest,
per-layer entries under each layer's `original`); keys we do not know get a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecaffe.model.package.manifest import PackageError
from edgecaffe.yamlfile import read_yaml

DESCRIPTION = "description.yaml"
#: The original's `use-scales` factor: scale_list() (Core/src/BaseNet.cpp) starts at 5.0 and
#: preprocess() uses only scales[0], so the image is enlarged 5x (268 px -> 1340 px).
USE_SCALES_FACTOR = 5.0
TOP_LEVEL_KEYS = {
    "name", "network-file", "model-file", "partials-location", "base-path", "has-input-layer",
    "num-conv-layers", "num-fc-layers", "input-scale", "mean-scalar", "uses-result-vector",
    "result-vector", "use-scales", "mean-execution-time", "max-memory-valgrind",
    "max-memory-rss", "max-memory-valgrind-050", "max-memory-valgrind-075",
    "max-memory-valgrind-125", "max-memory-valgrind-150", "max-memory-usage", "layer-statistics",
    "layer-parameters-stats", "excluded-partials", "type", "conv-layers", "fc-layers", "layers",
}
LAYER_KEYS = {
    "id", "name", "partialFile", "partialFileSize", "estimated_time_loading",
    "estimated_time_execution", "number-of-paramters", "isConvLayer", "hasModelFile",
}


@dataclass
class OriginalNetwork:
    """What a description.yaml says, resolved against its folder."""

    folder: Path
    description: dict[str, Any]
    prototxt: Path
    caffemodel: Path
    #: Caffe layer name -> its entry from conv-layers / fc-layers (plus `list`: which of them).
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.description.get("name") or self.folder.name)

    def top_level(self) -> dict[str, Any]:
        """The description's keys other than per-layer entries (those go on the layers). Lists in
        the legacy format (partial file names, not entries) are kept as they are."""
        kept = {}
        for key, value in self.description.items():
            entries = key in ("conv-layers", "fc-layers")
            if entries and all(isinstance(item, dict) for item in value or []):
                continue
            kept[key] = value
        return kept

    def preprocess(self) -> dict[str, Any]:
        mean = self.description.get("mean-scalar") or [0.0, 0.0, 0.0]
        return {"mean": [float(v) for v in mean], "scale": 1.0, "channel_order": "BGR"}

    @property
    def use_scales(self) -> bool:
        return bool(self.description.get("use-scales"))

    def scaled_input_size(self, image_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The network's input H x W for an image of `image_hw` pixels when `use-scales` is on
        (None when it is off): the image enlarged by USE_SCALES_FACTOR, truncated to whole
        pixels as the original's cv::Size(cols * 5.0, rows * 5.0) does."""
        if not self.use_scales:
            return None
        height, width = image_hw
        return int(height * USE_SCALES_FACTOR), int(width * USE_SCALES_FACTOR)

    def load_options(self, image_hw: tuple[int, int] | None = None) -> dict[str, Any]:
        """`load_caffe` keyword arguments for this network on an image of `image_hw` pixels:
        the scaled input shape when `use-scales` is on, nothing otherwise."""
        size = self.scaled_input_size(image_hw) if image_hw is not None else None
        return {"input_shape": list(size)} if size is not None else {}

    def labels(self) -> list[str]:
        """Class labels, only when the description says to use them (several originals carry a
        copied `result-vector` they do not use)."""
        if not self.description.get("uses-result-vector"):
            return []
        return [str(label) for label in self.description.get("result-vector") or []]


def _check_types(description: dict[str, Any], path: Path) -> None:
    """The keys we read have the types the original wrote (msgspec, `DescriptionSchema`);
    raises PackageError naming the file and the key."""
    import msgspec

    from edgecaffe.model.package.manifest_schema import DescriptionSchema

    try:
        msgspec.convert(description, DescriptionSchema, str_keys=True)
    except msgspec.ValidationError as failure:
        expected, _, where = str(failure).partition(" - at `$")
        raise PackageError(f"{path}: {where.rstrip('`').lstrip('.') or 'description'}: "
                           f"{expected[0].lower() + expected[1:]}") from None


def is_original_folder(path: Path) -> bool:
    return path.is_dir() and (path / DESCRIPTION).is_file()


def read_original(folder: str | Path) -> OriginalNetwork:
    folder = Path(folder)
    path = folder / DESCRIPTION
    description = read_yaml(path, PackageError)
    if not isinstance(description, dict):
        raise PackageError(f"{path}: expected a mapping of keys, got {type(description).__name__}")
    _check_types(description, path)
    unknown = sorted(set(description) - TOP_LEVEL_KEYS)
    if unknown:
        warnings.warn(f"{path}: unknown keys {unknown} (kept in the manifest)", stacklevel=2)
    if description.get("type") == "generated":
        raise PackageError(f"{path}: a 'generated' network has per-layer times but no weights "
                           "or layers to run; it is for simulation only (edgecaffe experiment "
                           "--simulate)")
    for key in ("network-file", "model-file"):
        if not description.get(key):
            raise PackageError(f"{path}: missing required key {key!r}")
    layers: dict[str, dict[str, Any]] = {}
    for list_name in ("conv-layers", "fc-layers"):
        for entry in description.get(list_name) or []:
            if not isinstance(entry, dict):  # the legacy format lists partial file names only
                continue
            extra = sorted(set(entry) - LAYER_KEYS)
            if extra:
                warnings.warn(f"{path}: unknown layer keys {extra} in {list_name} (kept)",
                              stacklevel=2)
            if "name" in entry:
                layers[str(entry["name"])] = {**entry, "list": list_name}
    return OriginalNetwork(folder, description, folder / str(description["network-file"]),
                           folder / str(description["model-file"]), layers)
