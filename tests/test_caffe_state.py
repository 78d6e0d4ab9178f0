"""Net state rules (include/exclude with phase, stage, not_stage, min/max level, the file's own
state), the way Caffe's net.cpp applies them, and the --stage/--level/--input-size flags.

The pycaffe fixtures `stage_rules*` (tests/test_caffe_oracle.py) check the same rules against
Caffe itself; these tests cover what a fixture cannot: errors and the command line.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecaffe.cli import main
from edgecaffe.model.caffe import CaffeError, load_caffe

DEPLOY = """
name: "staged"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        include { stage: "deploy" } convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "deep" type: "ReLU" bottom: "pool" top: "pool" include { min_level: 1 } }
"""


@pytest.fixture()
def staged(tmp_path):
    path = tmp_path / "staged.prototxt"
    path.write_text(DEPLOY)
    return path


def test_stage_chosen_by_caller(staged):
    net = load_caffe(staged, stages=["deploy"])
    assert [layer.name for layer in net.layers] == ["data", "conv", "pool"]
    assert net.blob_shapes["pool"] == (1, 3, 3, 3)
    assert [layer.name for layer in load_caffe(staged, stages=["deploy"], level=1).layers][-1] \
        == "deep"


def test_missing_stage_names_the_rule(staged):
    with pytest.raises(CaffeError) as caught:
        load_caffe(staged)
    message = str(caught.value)
    assert "'conv'" in message and "include/exclude" in message and "stages" in message
    assert str(staged) in message


def test_file_state_stages_add_to_callers(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('state { stage: "deploy" }\n' + DEPLOY)
    assert "conv" in load_caffe(path).layer_by_name
    assert "conv" in load_caffe(path, stages=["other"]).layer_by_name


def test_include_and_exclude_together_refused(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(DEPLOY.replace('include { stage: "deploy" }',
                                   'include { stage: "deploy" } exclude { phase: TRAIN }'))
    with pytest.raises(CaffeError, match="both include and exclude"):
        load_caffe(path, stages=["deploy"])


def test_input_shape_reshapes_before_inference(staged):
    net = load_caffe(staged, stages=["deploy"], input_shape=(20, 14))
    assert net.blob_shapes["data"] == (1, 2, 20, 14)
    assert net.blob_shapes["pool"] == (1, 3, 9, 6)
    net = load_caffe(staged, stages=["deploy"], input_shape={"data": [2, 2, 10, 10]})
    assert net.blob_shapes["pool"] == (2, 3, 4, 4)
    for bad in ([1, 2, 3], {"nope": [1, 2]}, [0, 5]):
        with pytest.raises(CaffeError, match="input"):
            load_caffe(staged, stages=["deploy"], input_shape=bad)


def test_cli_stage_level_input_size(staged, tmp_path, capsys):
    model = tmp_path / "w.caffemodel"
    assert main(["synth", str(staged), "-o", str(model), "--stage", "deploy"]) == 0
    assert main(["run", str(staged), str(model), "--stage", "deploy", "--level", "1",
                 "--input-size", "16x12", "--input", str(_npy(tmp_path, (1, 2, 16, 12))),
                 "--repeat", "1"]) == 0
    assert "pool: shape 1x3x7x5" in capsys.readouterr().out
    assert main(["synth", str(staged), "-o", str(model)]) != 0
    assert "--stage" in capsys.readouterr().err


def _npy(folder, shape):
    path = folder / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))
    return path
