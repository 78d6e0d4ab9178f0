"""Bad ONNX input gets OnnxError (a ModelError) naming file and node: truncated files, cycles,
missing initializers, wrong input shapes, unsupported operators and opsets."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import edgecaffe
from edgecaffe.model.errors import ModelError
from edgecaffe.model.onnx import OnnxError
from tests.onnx_helpers import make_model, write

node = helper.make_node


def relu_model(**kwargs):
    return make_model([node("Relu", ["x"], ["y"], name="act")], **kwargs)


def test_truncated_file(tmp_path):
    good = write(make_model([node("Conv", ["x", "w"], ["y"], name="conv1")],
                            {"w": np.ones((4, 3, 3, 3), np.float32)}), tmp_path / "good.onnx")
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OnnxError, match="truncated.onnx.*not a readable ONNX model"):
        edgecaffe.load_onnx(bad)
    assert issubclass(OnnxError, ModelError)


def test_not_onnx_and_missing_file(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(OnnxError, match="notes.onnx"):
        edgecaffe.load_onnx(text)
    with pytest.raises(OnnxError, match="no such ONNX file"):
        edgecaffe.load_onnx(tmp_path / "absent.onnx")


def test_cycle(tmp_path):
    model = make_model([node("Relu", ["x"], ["a"], name="first")])
    model.graph.node.extend([node("Add", ["a", "c"], ["b"], name="loop_add"),
                             node("Relu", ["b"], ["c"], name="loop_relu")])
    del model.graph.output[:]
    model.graph.output.extend([helper.make_empty_tensor_value_info("c")])
    path = write(model, tmp_path / "cycle.onnx")
    with pytest.raises(OnnxError, match=r"cycle.onnx: the graph has a cycle through .*loop_add"):
        edgecaffe.load_onnx(path)


def test_missing_initializer(tmp_path):
    model = make_model([node("Conv", ["x", "w"], ["y"], name="conv1")],
                       {"w": np.ones((4, 3, 3, 3), np.float32)})
    del model.graph.initializer[:]
    path = write(model, tmp_path / "missing.onnx")
    with pytest.raises(OnnxError, match=r"missing.onnx: node 'conv1' \(Conv\) reads 'w'.*"
                                        "missing initializer"):
        edgecaffe.load_onnx(path)


def test_wrong_input_shapes(tmp_path):
    path = write(relu_model(symbolic={"x": {0: "N"}}), tmp_path / "relu.onnx")
    assert edgecaffe.load_onnx(path, input_shape=(4, 3, 8, 8)).input_shape == (4, 3, 8, 8)
    with pytest.raises(OnnxError, match=r"relu.onnx: input 'x' is declared \['\?', 3, 8, 8\]"):
        edgecaffe.load_onnx(path, input_shape=(1, 3, 9, 8))
    with pytest.raises(OnnxError, match="does not fit"):
        edgecaffe.load_onnx(path, input_shape=(3, 8, 8))
    with pytest.raises(OnnxError, match=r"no graph input\(s\) \['image'\]"):
        edgecaffe.load_onnx(path, input_shape={"image": (1, 3, 8, 8)})
    net = edgecaffe.load_onnx(path)
    with pytest.raises(edgecaffe.NetworkError, match="must have shape"):
        net.forward(np.zeros((1, 3, 4, 4), np.float32))


def test_shape_mismatch_names_the_node(tmp_path):
    model = make_model([node("Conv", ["x", "w"], ["y"], name="conv1")],
                       {"w": np.ones((4, 5, 3, 3), np.float32)})
    path = write(model, tmp_path / "channels.onnx")
    with pytest.raises(OnnxError, match=r"channels.onnx: node 'conv1' \(Conv, opset 17\)"):
        edgecaffe.load_onnx(path)


def test_unsupported_operator_is_named_at_import(tmp_path):
    model = make_model([node("Relu", ["x"], ["r"]),
                        node("Einsum", ["r", "r"], ["y"], name="mix", equation="ij,ij->ij")],
                       shapes={"x": (2, 3)})
    path = write(model, tmp_path / "einsum.onnx")
    with pytest.raises(OnnxError, match=r"einsum.onnx: node 'mix' \(Einsum, opset 17\) is not "
                                        r"supported.*replace it"):
        edgecaffe.load_onnx(path)


def test_integer_activation_is_named(tmp_path):
    from onnx import TensorProto

    model = make_model([node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT64),
                        node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)])
    path = write(model, tmp_path / "cast.onnx")
    with pytest.raises(OnnxError, match=r"node 'to_int' \(Cast, opset 17\): Cast of an "
                                        "activation"):
        edgecaffe.load_onnx(path)


def test_opset_out_of_range(tmp_path):
    import onnx

    newest = onnx.defs.onnx_opset_version()
    path = write(relu_model(opset=newest + 1), tmp_path / "new.onnx")
    with pytest.raises(OnnxError, match=rf"new.onnx: opset {newest + 1} is outside the "
                                        rf"supported range 11\.\.{newest}"):
        edgecaffe.load_onnx(path)
    # An old opset is raised with onnx's version converter and recorded.
    old = write(relu_model(opset=9), tmp_path / "old.onnx")
    assert edgecaffe.load_onnx(old).meta["source"]["converted_from_opset"] == 9


def test_bad_side_file(tmp_path):
    path = write(relu_model(), tmp_path / "relu.onnx")
    side = tmp_path / "relu.onnx.yaml"
    side.write_text("labels: [a, b]\nlayout: NWHC\n")
    with pytest.raises(OnnxError, match=r"relu.onnx.yaml: key 'layout' has an invalid value"):
        edgecaffe.load_onnx(path)
    side.write_text("lables: [a]\n")
    with pytest.raises(OnnxError, match=r"unknown key\(s\) \['lables'\]"):
        edgecaffe.load_onnx(path)
    side.write_text("labels: [cat, dog]\nmean: [1, 2, 3]\nscale: 0.5\nchannel_order: RGB\n")
    meta = edgecaffe.load_onnx(path).meta
    assert (meta["labels"], meta["mean"], meta["scale"], meta["channel_order"]) == \
        (["cat", "dog"], [1, 2, 3], 0.5, "RGB")
