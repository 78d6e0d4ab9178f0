"""The CLI tells user errors (one line) from bugs (internal error, traceback, --debug)."""

from __future__ import annotations

import pytest

from edgecaffe.cli import main, zoo_cmd
from edgecaffe.errors import EdgeCaffeError, UsageError
from edgecaffe.experiment.config import ConfigError
from edgecaffe.experiment.limits import LimitError
from edgecaffe.model.caffe import CaffeError
from edgecaffe.model.errors import ModelError
from edgecaffe.model.package.tensorfile import WeightFileError
from edgecaffe.ops.base import OpError
from edgecaffe.sim.device import DeviceError


def test_the_project_errors_share_one_base():
    for kind in (ModelError, CaffeError, WeightFileError, OpError, ConfigError, LimitError,
                 DeviceError, UsageError):
        assert issubclass(kind, EdgeCaffeError), kind
    assert issubclass(EdgeCaffeError, ValueError)  # callers catching ValueError keep working


def _failing(error: BaseException):
    def handler(args):
        raise error
    return handler


@pytest.mark.parametrize("error", [KeyError("layers"), ValueError("bug in a kernel"),
                                   TypeError("unsupported operand"), IndexError("list index")])
def test_a_bug_is_reported_as_an_internal_error(monkeypatch, capsys, error):
    monkeypatch.setattr(zoo_cmd, "list_zoo", _failing(error))
    assert main(["zoo", "list"]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and type(error).__name__ in err
    assert "Traceback" in err and "test_cli_errors.py" in err  # where it happened
    assert "--debug" in err


def test_debug_prints_the_whole_traceback(monkeypatch, capsys):
    monkeypatch.setattr(zoo_cmd, "list_zoo", _failing(KeyError("layers")))
    assert main(["--debug", "zoo", "list"]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" in err
    assert "cli/__init__.py" in err  # the full stack, from main down
    assert "rerun with --debug" not in err


@pytest.mark.parametrize("error", [ModelError("net.prototxt: layer 'fc': bad"),
                                   OpError("Conv: kernel 0"), UsageError("--batch must be 1"),
                                   FileNotFoundError(2, "No such file", "x.yaml")])
def test_a_user_error_is_one_line(monkeypatch, capsys, error):
    monkeypatch.setattr(zoo_cmd, "list_zoo", _failing(error))
    assert main(["zoo", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgecaffe zoo: error: ")
    assert "Traceback" not in err


def test_a_real_user_error_from_a_command(capsys, tmp_path):
    assert main(["zoo", "write", "TinyAlex", "--batch", "0", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "edgecaffe zoo: error: --batch must be 1 or more"


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "TinyAlex", "--mean", "1,2"], "mean has 2 values; the network's input has 3"),
    (["demo", "--workers", "0"], "--workers 0 is not allowed"),
    (["demo", "--budget", "lots"], "--budget: 'lots' is not allowed"),
    (["experiment", "--policy", "x"], "--policy: 'x' is not allowed"),
    (["graph", "masa", "TinyAlex", "-o", "x.dot", "--requests", "0"], "--requests must be 1"),
])
def test_user_mistakes_are_not_internal_errors(tmp_path, monkeypatch, capsys, argv, message):
    """Input the commands once passed on unchecked (a ValueError deep inside numpy or the
    engine, which the old catch-all ValueError handler happened to print as one line)."""
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err and err.count("\n") == 1


def _mistakes(folder):
    """Files a newcomer passes to the wrong place: an image, a lone prototxt, a lone caffemodel,
    a folder that is not a package, a YAML file that does not parse."""
    (folder / "face.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    (folder / "lone.prototxt").write_text('name: "x"\ninput: "data"\n')
    (folder / "lone.caffemodel").write_bytes(bytes(8))
    (folder / "solo.prototxt").write_text('name: "x"\ninput: "data"\n')  # no weights beside
    (folder / "models").mkdir()
    (folder / "bad.yaml").write_text("a: [1,\nb: 2\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["experiment", "face.jpg"], "face.jpg: not a YAML file (binary data"),
    (["experiment", "lone.prototxt"], "lone.prototxt: a model, not an experiment config"),
    (["experiment", "bad.yaml"], "bad.yaml: malformed YAML: line 3, column 1"),
    (["experiment", "--networks", "lone.prototxt", "--simulate"],
     "'lone.prototxt': a Caffe file; experiments run packages"),
    (["run", "lone.prototxt"], "lone.prototxt: a Caffe description needs its weights"),
    (["run", "lone.caffemodel"], "lone.caffemodel: Caffe weights need their description"),
    (["run", "face.jpg"], "face.jpg: an image, not a model; give the model first"),
    (["run", "models"], "models: a folder, but neither a package (no manifest.yaml"),
    (["run", "no/such"], "no/such: no such file or folder"),
    (["run", "AgeNt"], "no zoo network 'AgeNt'; did you mean AgeNet?"),
    (["split", "solo.prototxt", "-o", "p"], "or pass --synthetic"),
    (["run", "solo.prototxt"], "(no solo.caffemodel beside it; `edgecaffe synth"),
    (["split", "face.jpg", "-o", "p"], "face.jpg: an image, not a model"),
    (["profile", "lone.prototxt"], "profile takes a package folder or an .onnx file"),
    (["run", "TinyAlex", "--batch", "0"], "--batch must be 1 or more"),
    (["export", "TinyAlex", "-o", "gone/a.onnx"],
     "gone/a.onnx: cannot write it: the folder gone does not exist"),
])
def test_a_file_in_the_wrong_place_is_named_with_what_was_expected(
        tmp_path, monkeypatch, capsys, argv, message):
    """Issue 19 item 7: each usual mistake names the file or flag and what was expected, on
    one line, never as an internal error or a bare "no zoo network"."""
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _mistakes(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert "internal error" not in err and err.count("\n") == 1


def test_a_detections_draw_with_all_weights_zero_is_a_config_error(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "c.yaml"
    config.write_text("networks: [TinyAlex, TinyResidual]\ngated: {TinyResidual: TinyAlex}\n"
                      "detections: {1: 0}\narrival-mode: poisson\nn-arrivals: 3\n")
    assert main(["experiment", str(config), "--simulate", "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "detections: counts must be whole numbers >= 1 with weights >= 0 (not all 0)" in err
    assert "internal error" not in err and err.count("\n") == 1


def test_a_zoo_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "TinyAlex").mkdir()  # e.g. where `zoo write TinyAlex -o TinyAlex` wrote
    assert main(["run", "TinyAlex"]) == 0
    assert "a folder, but neither" not in capsys.readouterr().err
