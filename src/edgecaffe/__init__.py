"""EdgeCaffe for Python: memory-aware multi-DNN inference for edge devices.

The top-level import stays light: numpy and protobuf load when a model is first read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from os import PathLike

    from edgecaffe.model.network import Network
    from edgecaffe.model.package import ModelPackage


def load_caffe(
    prototxt: str | PathLike[str],
    caffemodel: str | PathLike[str] | None = None,
    name: str | None = None,
    **options: Any,
) -> Network:
    """Read a Caffe deploy prototxt and its caffemodel into a runnable `Network`.

    `options`: `stages=[...]`, `level=N` (Caffe's NetState for include/exclude rules) and
    `input_shape=...` (reshape the input); see `edgecaffe.model.caffe.load_caffe`.
    """
    from edgecaffe.model.caffe import load_caffe as _load

    return _load(prototxt, caffemodel, name, **options)


def load_onnx(
    path: str | PathLike[str],
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
    fold_transposes: bool = True,
) -> Network:
    """Read an ONNX model into a runnable `Network` (needs the `onnx` extra).

    `input_shape` fills symbolic dims (`N`, `batch`; default 1): one shape, or input name ->
    shape. A side file `<path>.yaml` adds labels and preprocessing. `fold_transposes` cancels
    the Transpose pairs of NHWC exports. Raises `OnnxError`.
    """
    from edgecaffe.model.onnx import load_onnx as _load

    return _load(path, input_shape, name, fold_transposes)


def open_package(directory: str | PathLike[str]) -> ModelPackage:
    """Open a model package folder (from `edgecaffe split`) without reading any weights."""
    from edgecaffe.model.package import open_package as _open

    return _open(directory)


def __getattr__(name: str):
    if name in {"Network", "Layer", "NetworkError"}:
        from edgecaffe.model import network

        return getattr(network, name)
    if name in {"Engine", "RequestError"}:
        from edgecaffe import engine

        return getattr(engine, name)
    if name in {"ModelError"}:
        from edgecaffe.model.errors import ModelError

        return ModelError
    if name in {"OnnxError"}:
        from edgecaffe.model.onnx.errors import OnnxError

        return OnnxError
    if name in {"CaffeError"}:
        from edgecaffe.model.caffe import CaffeError

        return CaffeError
    raise AttributeError(f"module 'edgecaffe' has no attribute {name!r}")


__all__ = [
    "CaffeError",
    "Engine",
    "Layer",
    "ModelError",
    "Network",
    "NetworkError",
    "OnnxError",
    "RequestError",
    "load_caffe",
    "load_onnx",
    "open_package",
]
