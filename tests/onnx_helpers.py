"""Build small ONNX models with onnx.helper, run them in onnxruntime and through load_onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, save, shape_inference

import edgecaffe


def make_model(nodes, initializers: dict | None = None, shapes: dict | None = None,
               opset: int = 17, outputs=("y",), symbolic: dict | None = None):
    """A model with float inputs `shapes` (name -> shape), constant `initializers` and
    `outputs`; `symbolic` replaces dims by names (input name -> {axis: 'N'})."""
    inputs = []
    for name, shape in (shapes or {"x": (1, 3, 8, 8)}).items():
        dims = list(shape)
        for axis, label in (symbolic or {}).get(name, {}).items():
            dims[axis] = label
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(
        nodes, "test", inputs,
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # onnx's checker wants typed graph outputs: take them from onnx's shape inference.
    inferred = shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def write(model, path: Path) -> Path:
    save(model, str(path))
    return path


def onnxruntime_run(model_or_path, feeds: dict) -> dict:
    source = model_or_path if isinstance(model_or_path, str | Path) else \
        model_or_path.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def compare(model, path: Path, feeds: dict | None = None, tol: float = 1e-5, seed: int = 0,
            input_shape=None):
    """Import `model` (saved at `path`), run both on the same random inputs; returns the
    network. Agreement: `tol` of each output's scale."""
    write(model, path)
    net = edgecaffe.load_onnx(path, input_shape=input_shape)
    rng = np.random.default_rng(seed)
    feeds = feeds or {name: rng.standard_normal(net.blob_shapes[name]).astype(np.float32)
                      for name in net.inputs}
    ours = net.forward({k: v.copy() for k, v in feeds.items()})
    theirs = onnxruntime_run(model, feeds)
    assert set(ours) == set(theirs), (set(ours), set(theirs))
    for name, reference in theirs.items():
        assert ours[name].shape == reference.shape, (name, ours[name].shape, reference.shape)
        scale = max(1.0, float(np.abs(reference).max()))
        error = float(np.abs(ours[name] - reference).max())
        assert error <= tol * scale, f"{name}: max error {error:.3g} > {tol * scale:.3g}"
    return net
