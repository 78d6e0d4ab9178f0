"""Reading an .onnx file with the `onnx` package: decode, opset check, graph order, input shapes.

Everything that is wrong with the file itself is reported here, before any operator is mapped:
a file that does not decode (truncated, not ONNX), an opset outside the range we map, a node
input that nothing produces (a missing initializer), a cycle, and input shapes that contradict
the graph's declared ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecaffe.model.onnx.errors import OnnxError

#: Oldest default-domain opset whose operators we map (Pad, Clip, Resize, Slice take their
#: parameters as inputs from opset 11 on); the newest is what the installed onnx package knows.
MIN_OPSET = 11


def newest_opset() -> int:
    import onnx

    return int(onnx.defs.onnx_opset_version())


def read_model(path: str | Path) -> Any:
    """Decode and check `path`; returns the ModelProto (external data loaded from its folder)."""
    try:
        import onnx
    except ImportError:
        raise OnnxError(f"{path}: reading ONNX needs the onnx package: "
                        "pip install 'edgecaffe[onnx]'") from None
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        raise OnnxError(f"{path}: not a readable ONNX model (truncated or not ONNX?): "
                        f"{error}") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxError(f"{path}: not a readable ONNX model (no graph: truncated or not ONNX?)")
    return model


#: Older opsets are converted up to this one with onnx's version converter before mapping.
CONVERT_TO = 13


def default_opset(model: Any, path: Path) -> int:
    """The default-domain opset, checked against the range the importer maps."""
    versions = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None:
        raise OnnxError(f"{path}: imports no default-domain (ai.onnx) opset")
    if not MIN_OPSET <= opset <= newest_opset():
        raise OnnxError(
            f"{path}: opset {opset} is outside the supported range {MIN_OPSET}..{newest_opset()}; "
            "convert it first: onnx.version_converter.convert_version(model, 13)"
        )
    return int(opset)


def upgrade_opset(model: Any, path: Path) -> tuple[Any, int | None]:
    """A model below MIN_OPSET converted to CONVERT_TO with onnx's version converter (the
    format's own tool); returns (model, the original opset or None when nothing changed)."""
    from onnx import version_converter

    versions = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None or opset >= MIN_OPSET:
        return model, None
    upsampled = {node.output[0] for node in model.graph.node if node.op_type == "Upsample"}
    try:
        converted = version_converter.convert_version(model, CONVERT_TO)
    except Exception as error:  # the converter raises RuntimeError and its own C++ errors
        raise OnnxError(f"{path}: opset {opset} is below {MIN_OPSET} and onnx's version "
                        f"converter could not raise it to {CONVERT_TO}: "
                        f"{str(error).splitlines()[0] if str(error) else error!r}") from None
    # Upsample maps output x to input x / scale (the asymmetric transform); the converter's
    # Resize leaves the default half_pixel, which is another function for linear mode.
    from onnx import helper

    for node in converted.graph.node:
        if node.op_type == "Resize" and node.output[0] in upsampled:
            names = {a.name for a in node.attribute}
            if "coordinate_transformation_mode" not in names:
                node.attribute.append(helper.make_attribute("coordinate_transformation_mode",
                                                            "asymmetric"))
            if "nearest_mode" not in names:
                node.attribute.append(helper.make_attribute("nearest_mode", "floor"))
    return converted, int(opset)


def check_model(model: Any, path: Path) -> None:
    """onnx's own checker (types, attributes, names), errors reported as OnnxError."""
    import onnx

    # Graph outputs without a declared type or shape are valid for runtimes (the shapes come
    # from inference); the checker insists on the fields, so give it empty ones to look at.
    for output in model.graph.output:
        tensor = output.type.tensor_type
        if not tensor.elem_type:
            tensor.elem_type = onnx.TensorProto.FLOAT
        if not tensor.HasField("shape"):
            tensor.shape.SetInParent()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise OnnxError(f"{path}: fails onnx's checker: {first}") from None


def node_label(node: Any, index: int, opset: int | None = None) -> str:
    """How errors name a node: its name (or its index), op type and opset."""
    name = node.name or f"#{index}"
    domain = f"{node.domain}." if node.domain and node.domain != "ai.onnx" else ""
    at = f", opset {opset}" if opset is not None else ""
    return f"node {name!r} ({domain}{node.op_type}{at})"


def topological_order(graph: Any, path: Path) -> list[Any]:
    """The graph's nodes in an order where every input is produced first (Kahn's algorithm).

    Raises OnnxError naming a node whose input nothing produces (not a graph input, an
    initializer or another node's output), or the nodes on a cycle.
    """
    available = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    available.add("")  # an omitted optional input
    producer: dict[str, int] = {}
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        if node.op_type in ("If", "Loop", "Scan"):
            raise OnnxError(f"{path}: {node_label(node, index)} has subgraphs (control flow), "
                            "which the layer-by-layer IR does not represent")
        for output in node.output:
            if output in producer or (output in available and output):
                raise OnnxError(f"{path}: {node_label(node, index)} writes {output!r}, which "
                                "another node, input or initializer already defines")
            if output:
                producer[output] = index
    waiting: list[int] = []
    dependents: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        pending = set()
        for name in node.input:
            if name in available:
                continue
            if name not in producer:
                raise OnnxError(
                    f"{path}: {node_label(node, index)} reads {name!r}, which no node produces "
                    "and which is neither a graph input nor an initializer (missing initializer?)"
                )
            pending.add(producer[name])
        waiting.append(len(pending))
        for source in pending:
            dependents.setdefault(source, []).append(index)
    # A heap keeps the file's order wherever it is already valid.
    ready = [index for index, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for dependent in dependents.get(index, []):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) != len(nodes):
        stuck = [node_label(nodes[i], i) for i in range(len(nodes)) if waiting[i] > 0][:5]
        raise OnnxError(f"{path}: the graph has a cycle through {', '.join(stuck)}")
    for output in graph.output:
        if output.name not in producer and output.name not in available:
            raise OnnxError(f"{path}: graph output {output.name!r} is produced by no node")
    return [nodes[i] for i in order]


def input_shapes(
    graph: Any, path: Path, given: Sequence[int] | Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph's real inputs (initializers listed as inputs excluded).

    Fixed dims come from the file; symbolic or unknown dims (`N`, `batch`) from `given`
    (a shape for a single-input graph, or input name -> shape), default 1.
    """
    import onnx

    initializers = {t.name for t in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if not inputs:
        raise OnnxError(f"{path}: the graph has no inputs")
    if given is not None and not isinstance(given, Mapping):
        if len(inputs) != 1:
            raise OnnxError(f"{path}: the graph has inputs {[v.name for v in inputs]}; give "
                            "input shapes as a dict of name -> shape")
        given = {inputs[0].name: given}
    given = dict(given or {})
    unknown = sorted(set(given) - {value.name for value in inputs})
    if unknown:
        raise OnnxError(f"{path}: no graph input(s) {unknown}; inputs are "
                        f"{[v.name for v in inputs]}")
    shapes = {}
    for value in inputs:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise OnnxError(f"{path}: input {value.name!r} is not a tensor")
        if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.UNDEFINED):
            kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
            raise OnnxError(f"{path}: input {value.name!r} is {kind}; only float inputs are "
                            "supported (the IR computes in float32)")
        declared = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if value.name in given:
            shape = tuple(int(d) for d in given[value.name])
            if tensor.HasField("shape") and (
                len(shape) != len(declared)
                or any(d is not None and d != s for d, s in zip(declared, shape, strict=True))
            ):
                raise OnnxError(
                    f"{path}: input {value.name!r} is declared "
                    f"{['?' if d is None else d for d in declared]}; the given shape "
                    f"{list(shape)} does not fit it")
        elif not tensor.HasField("shape"):
            raise OnnxError(f"{path}: input {value.name!r} has no declared shape; give one "
                            "with input_shape")
        else:
            shape = tuple(1 if d is None else d for d in declared)
        if any(d <= 0 for d in shape):
            raise OnnxError(f"{path}: input {value.name!r} shape {list(shape)} has a dim <= 0")
        shapes[value.name] = shape
    return shapes
