"""An engine's `RequestResult` as the JSON the service answers with.

Per network: status, error, timings (ms on the engine's clock: queued, init, load, exec,
response), forced reservations, and per output blob its shape and either its top-k classes (a
classifier's scores: a Softmax output, or one label per value; as `edgecaffe run` shows them)
or its raw values (anything else, or every output with `raw`). Values are the engine's float32
numbers written as JSON floats: read back as float32 they are the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecaffe.model.classes import top_classes

if TYPE_CHECKING:
    from edgecaffe.engine import NetworkResult, RequestResult
    from edgecaffe.model.package import ModelPackage


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def values(array: np.ndarray) -> list:
    """Nested lists of the array's numbers; non-finite numbers (which JSON cannot hold) as
    null."""
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        cleaned = np.where(np.isfinite(array), array, np.nan).astype(object)
        cleaned[~np.isfinite(array)] = None
        return cleaned.tolist()
    return array.tolist()


class OutputFormat:
    """How one network's outputs are shown: which blobs hold class scores, with which labels."""

    def __init__(self, package: ModelPackage) -> None:
        layers = package.network.layers
        self.softmax = {blob for layer in layers if layer.op == "Softmax"
                        for blob in layer.outputs}
        self.labels = [str(label) for label in package.meta.get("labels", [])]
        self.labelled = package.meta.get("output")  # the blob the labels name, if one

    def blob(self, name: str, array: np.ndarray, top_k: int, raw: bool) -> dict[str, Any]:
        labels = self.labels if self.labelled in (None, name) else []
        entry: dict[str, Any] = {"shape": list(array.shape)}
        classes = top_classes(array, labels, top_k, name in self.softmax) if top_k else None
        if classes is not None:
            entry["top"] = classes
        if classes is None or raw:
            entry["values"] = values(array)
        return entry


def timings_json(network: NetworkResult) -> dict[str, float | None]:
    """A network's timings (ms on the engine's clock, rounded to the microsecond)."""
    return {"queued_ms": _round(network.queued_ms), "init_ms": _round(network.init_ms),
            "load_ms": _round(network.load_ms), "exec_ms": _round(network.exec_ms),
            "response_ms": _round(network.response_ms)}


def network_json(network: NetworkResult, output_format: OutputFormat, top_k: int,
                 raw: bool) -> dict[str, Any]:
    """One network of a request: status, error, timings, forced count, outputs."""
    entry: dict[str, Any] = {
        "network": network.network,
        "status": network.status,
        "timings": timings_json(network),
        "forced": network.forced,
    }
    if network.error:
        entry["error"] = network.error.splitlines()[0]
    if network.outputs is not None:
        entry["outputs"] = {blob: output_format.blob(blob, np.asarray(array), top_k, raw)
                            for blob, array in network.outputs.items()}
    return entry


def request_json(what: str, result: RequestResult, formats: Mapping[str, OutputFormat],
                 top_k: int, raw: bool) -> dict[str, Any]:
    """One input's request: id, status, response time and its networks by result key."""
    return {
        "input": what,
        "request_id": result.request_id,
        "status": result.status,
        "response_ms": _round(result.response_ms),
        "networks": {key: network_json(network, formats[network.network], top_k, raw)
                     for key, network in result.networks.items()},
    }
