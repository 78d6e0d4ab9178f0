"""The original's synthetic "generated" networks: per-layer times, no weights (§8.5).

    type: generated
    name: GeneratedNet
    num-conv-layers: 5
    num-fc-layers: 3
    layers:
      - {name: conv1, id: 0, loading-duration: 120, execution-duration: 40}   # ms
      ...

As in the original, layers form a chain and every layer has a load. Unlike the original they
follow the mode's task graph (init, loads, execs) rather than one fixed chain, and may state
memory, which the original left out: per layer `weight-bytes` and `output-bytes`, per network
`input-bytes` and `init-duration` (ms); sizes take units (`4M`). Without them a generated network
reserves nothing and only time is simulated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgecaffe.sched import LayerInfo, NetworkInfo, parse_bytes
from edgecaffe.sim.device import DeviceError
from edgecaffe.yamlfile import read_yaml


def is_generated_folder(path: str | Path) -> bool:
    from edgecaffe.model.package.original import DESCRIPTION  # the original's file name

    description = Path(path) / DESCRIPTION
    if not description.is_file():
        return False
    try:
        raw = yaml.safe_load(description.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and raw.get("type") == "generated"


def _number(source: str, where: str, value: Any, size: bool = False) -> float:
    try:
        if size:
            return 0 if value in (0, "0") else parse_bytes(value)
        number = float(value)
    except (TypeError, ValueError):
        kind = "a size such as 4M" if size else "a number of ms"
        raise DeviceError(f"{source}: {where} must be {kind}, got {value!r}") from None
    if number < 0:
        raise DeviceError(f"{source}: {where} must not be negative, got {value!r}")
    return number


def read_generated(folder: str | Path) -> NetworkInfo:
    """A NetworkInfo from a `type: generated` description.yaml (or the file itself)."""
    path = Path(folder)
    from edgecaffe.model.package.original import DESCRIPTION

    source = path / DESCRIPTION if path.is_dir() else path
    raw = read_yaml(source, DeviceError)
    if not isinstance(raw, dict) or raw.get("type") != "generated":
        raise DeviceError(f"{source}: not a generated network (needs `type: generated`)")
    entries = raw.get("layers")
    if not isinstance(entries, list) or not entries:
        raise DeviceError(f"{source}: `layers` must be a non-empty list of {{name, "
                          "loading-duration, execution-duration}}")
    conv = int(raw.get("num-conv-layers", len(entries)) or 0)
    layers, buffers = [], {}
    previous = "data"
    input_bytes = int(_number(source, "input-bytes", raw.get("input-bytes", 0), size=True))
    buffers[previous] = input_bytes
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise DeviceError(f"{source}: layers[{index}] needs a name, loading-duration and "
                              "execution-duration")
        name = str(entry["name"])
        where = f"layers[{index}] ({name})"
        for key in ("loading-duration", "execution-duration"):
            if key not in entry:
                raise DeviceError(f"{source}: {where} has no {key} (ms)")
        output = f"{name}:out"
        buffers[output] = int(_number(source, f"{where}.output-bytes",
                                      entry.get("output-bytes", 0), size=True))
        layers.append(LayerInfo(
            name=name, op="Generated",
            weight_bytes=int(_number(source, f"{where}.weight-bytes",
                                     entry.get("weight-bytes", 0), size=True)),
            output_bytes=buffers[output], reads=(previous,), writes=(output,),
            stage="conv" if index < conv else "fc",
            load_ms=_number(source, f"{where}.loading-duration", entry["loading-duration"]),
            exec_ms=_number(source, f"{where}.execution-duration", entry["execution-duration"]),
            has_weights=True,
        ))
        previous = output
    name = str(raw.get("name") or path.name)
    info = NetworkInfo(name, layers, ("data",), input_bytes, frozenset({previous}), buffers,
                       mean_exec_ms=sum(layer.exec_ms or 0.0 for layer in layers),
                       meta={"generated": str(source)},
                       init_ms=_number(source, "init-duration", raw.get("init-duration", 0)))
    info.peak_bytes = info.weight_bytes + info.peak_activation_bytes
    return info
