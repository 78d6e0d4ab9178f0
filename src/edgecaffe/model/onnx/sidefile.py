"""The side file: labels and preprocessing that travel with an .onnx model.

`model.onnx.yaml` next to `model.onnx` (the name plus `.yaml`) holds what the file itself cannot:

    labels: [female, male]          # class names, in output order
    mean: [122.78, 117.0, 104.3]    # per channel, in the network's channel order
    scale: 0.00390625               # multiplied after the mean is subtracted
    channel_order: RGB              # RGB or BGR
    layout: NCHW                    # NCHW or NHWC (TensorFlow exports)
    output: probabilities           # the output blob whose classes `labels` names (optional)

Every key is optional. `split` copies them into the package manifest, so a package carries them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecaffe.model.onnx.errors import OnnxError

KEYS = {"labels", "mean", "scale", "channel_order", "layout", "output", "name"}


def side_file_path(model: str | Path) -> Path:
    return Path(f"{model}.yaml")


def read_side_file(model: str | Path) -> dict[str, Any]:
    """The side file's keys (empty when there is none); OnnxError naming file and key."""
    from edgecaffe.yamlfile import read_yaml

    path = side_file_path(model)
    if not path.is_file():
        return {}
    data = read_yaml(path, OnnxError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OnnxError(f"{path}: expected a mapping of {sorted(KEYS)}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise OnnxError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    checks = {
        "labels": lambda v: isinstance(v, list) and all(isinstance(x, str | int | float)
                                                        for x in v),
        "mean": lambda v: isinstance(v, list) and all(isinstance(x, int | float) for x in v),
        "scale": lambda v: isinstance(v, int | float),
        "channel_order": lambda v: v in ("RGB", "BGR"),
        "layout": lambda v: v in ("NCHW", "NHWC"),
        "output": lambda v: isinstance(v, str),
        "name": lambda v: isinstance(v, str),
    }
    for key, value in data.items():
        if not checks[key](value):
            raise OnnxError(f"{path}: key {key!r} has an invalid value {value!r}")
    if "labels" in data:
        data["labels"] = [str(x) for x in data["labels"]]
    return data


def apply_side_file(network: Any, model: str | Path) -> None:
    """Put the model's labels and preprocessing into `network.meta`: those of a known model
    (`known.py`), overridden by the side file's."""
    from edgecaffe.model.onnx.known import known_meta

    data = {**known_meta(model), **read_side_file(model)}
    data.pop("name", None)
    network.meta.update(data)
