"""ONNX models in and out of the format-neutral IR (needs the `onnx` extra)."""

from edgecaffe.model.onnx.errors import OnnxError


def load_onnx(path, input_shape=None, name=None, fold_transposes=True):
    """See `edgecaffe.model.onnx.importer.load_onnx`."""
    from edgecaffe.model.onnx.importer import load_onnx as _load

    return _load(path, input_shape, name, fold_transposes)


__all__ = ["OnnxError", "load_onnx"]
