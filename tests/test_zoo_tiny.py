"""The tiny zoo networks (fast stand-ins for the full-size ones) against OpenCV DNN.

Each is written as prototxt + synthesized caffemodel and compared on its output and logits with
OpenCV as it normally runs (layers fused), and on every blob Caffe would hold after the forward
pass (each blob's final value: the output of the last layer writing it) with OpenCV's fusion
off, so that a mismatch points at the first layer that disagrees.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compare_with_opencv, random_input
from edgecaffe.model.caffe import load_caffe
from edgecaffe.model.zoo import ZOO

TINY = [name for name, model in ZOO.items() if model.tiny]


def test_the_tiny_zoo():
    assert TINY == ["TinyAlex", "TinyInception", "TinyResidual"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_network_matches_opencv(tmp_path, name, batch):
    model = ZOO[name]
    prototxt = model.prototxt(batch)
    # The structure alone (no weights) names the blobs to compare.
    structure = tmp_path / "structure.prototxt"
    structure.write_text(prototxt)
    network = load_caffe(structure)
    assert network.input_shape[0] == batch
    # Every blob Caffe keeps under its own name, in layer order, outputs included.
    final_blobs = [blob for layer in network.layers if layer.op != "Input"
                   for blob in layer.outputs if "@" not in blob]
    assert set(network.outputs) <= set(final_blobs)
    # The logits: a softmax of synthetic logits saturates to 0 / 1, which would hide errors.
    logits = [layer.inputs[0] for layer in network.layers if layer.op == "Softmax"]
    assert logits
    x = random_input(np.random.default_rng(batch), network.input_shape, 50.0)
    run = compare_with_opencv(tmp_path / "fused", prototxt, synth_seed=11, inputs=x,
                              outputs=network.outputs + logits, name=name)
    compare_with_opencv(tmp_path / "unfused", prototxt, synth_seed=11, inputs=x,
                        outputs=final_blobs, name=name, opencv_fusion=False)
    for blob in network.outputs:
        out = run.ours[blob]
        assert out.shape[0] == batch
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    for blob in logits:
        assert float(np.ptp(run.ours[blob])) > 1.0
    if batch > 1:
        # Samples are independent: the first sample alone gives the first row.
        single = compare_with_opencv(tmp_path / "single", model.prototxt(1), synth_seed=11,
                                     inputs=x[:1], name=name)
        for blob in network.outputs:
            np.testing.assert_allclose(run.ours[blob][:1], single.ours[blob], rtol=1e-5,
                                       atol=1e-6)
