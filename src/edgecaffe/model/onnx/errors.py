"""The ONNX importer's and exporter's error type."""

from edgecaffe.model.errors import ModelError


class OnnxError(ModelError):
    """An ONNX file that cannot be read, checked or mapped onto the IR; the message names the file
    and, where one is at fault, the node (name, op type, opset)."""
