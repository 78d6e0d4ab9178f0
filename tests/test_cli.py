"""The `edgecaffe` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import edgecaffe
from edgecaffe.cli import main
from tests.helpers import real_photo


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ["AgeNet", "ObjectNet", "SoS_GoogleNet", "TinyYolo"]:
        assert name in out
    assert "574.7" in out  # VGG-19's weight megabytes
    assert "TinyAlex" not in out
    assert main(["zoo", "list", "--all"]) == 0
    assert "TinyAlex" in capsys.readouterr().out


def test_zoo_write_is_deterministic_per_seed(tmp_path, capsys):
    for folder, seed in [("a", 1), ("b", 1), ("c", 2)]:
        assert main(["zoo", "write", "TinyAlex", "-o", str(tmp_path / folder), "--seed",
                     str(seed)]) == 0
    data = {f: (tmp_path / f / "TinyAlex.caffemodel").read_bytes() for f in "abc"}
    assert data["a"] == data["b"] != data["c"]
    assert (tmp_path / "a" / "TinyAlex.prototxt").exists()


def test_zoo_write_batch(tmp_path):
    assert main(["zoo", "write", "TinyInception", "-o", str(tmp_path), "--batch", "3"]) == 0
    net = edgecaffe.load_caffe(tmp_path / "TinyInception.prototxt",
                               tmp_path / "TinyInception.caffemodel")
    assert net.input_shape[0] == 3


def test_unknown_zoo_name_is_an_error(capsys):
    assert main(["zoo", "write", "NoSuchNet", "-o", "x"]) == 1
    err = capsys.readouterr().err
    assert "NoSuchNet" in err and "AgeNet" in err


def test_synth_then_run_prototxt_and_caffemodel(tmp_path, capsys):
    main(["zoo", "write", "TinyAlex", "-o", str(tmp_path)])
    prototxt = tmp_path / "TinyAlex.prototxt"
    out = tmp_path / "synth.caffemodel"
    assert main(["synth", str(prototxt), "-o", str(out), "--seed", "5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["run", str(prototxt), str(out), "--input", str(real_photo()), "--top", "3",
                 "--outputs", "prob,fc3"]) == 0
    out_text = capsys.readouterr().out
    assert "prob: shape 1x5" in out_text and "fc3: shape 1x32" in out_text
    assert "3. class" in out_text and "forward" in out_text


def test_run_zoo_name_prints_top5_with_labels(capsys):
    assert main(["run", "AgeNet", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "prob: shape 1x8" in out and "5. " in out
    assert any(label in out for label in ["0-2", "25-32", "60-100"])


def test_run_npy_input(tmp_path, capsys):
    main(["zoo", "write", "TinyResidual", "-o", str(tmp_path)])
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    files = [str(tmp_path / "TinyResidual.prototxt"), str(tmp_path / "TinyResidual.caffemodel")]
    assert main(["run", *files, "--input", str(tmp_path / "x.npy")]) == 0
    assert "prob: shape 1x4" in capsys.readouterr().out


def test_run_bad_image_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    assert main(["run", "TinyAlex", "--input", str(bad)]) == 1
    assert "not-an-image.jpg" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "edgecaffe", "--version"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("edgecaffe ")


def test_import_is_light():
    """`import edgecaffe` alone pulls in neither numpy nor protobuf."""
    script = ("import sys, edgecaffe; print(sorted(m for m in ('numpy', 'google.protobuf') "
              "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
