"""Results go only where the user said and are never silently overwritten (issue 11, item 5)."""

from __future__ import annotations

import pytest

from edgecaffe.cli import main
from edgecaffe.experiment.config import set_name_of
from edgecaffe.model.package import split


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_matrix_of_absolute_network_paths_writes_under_output(tmp_path, zoo_model, capsys):
    package = split(list(zoo_model("TinyAlex")), tmp_path / "packages" / "TinyAlex").directory
    before = _files(package)
    config = tmp_path / "matrix.yaml"
    config.write_text(f"matrix: {{sets: [[{package}]], modes: [masa]}}\nn-arrivals: 1\n")
    assert main(["experiment", str(config), "-o", str(tmp_path / "out")]) == 0
    assert _files(package) == before  # nothing written into the package folder
    runs = list((tmp_path / "out").rglob("requests.csv"))
    assert len(runs) == 1 and runs[0].parent.parent.parent.parent == tmp_path / "out"
    assert runs[0].parts[-4].startswith("TinyAlex-")  # the set's name: last part + a hash


def test_set_names_are_plain_names_and_tell_lists_apart():
    assert set_name_of(["AgeNet", "GenderNet"]) == "AgeNet+GenderNet"
    first, second = set_name_of(["/a/VGG"]), set_name_of(["/b/VGG"])
    assert first != second and "/" not in first + second
    assert ".." not in set_name_of(["..", "../.."])


def test_a_second_run_into_the_same_folder_is_refused_without_force(tmp_path, capsys):
    common = ["--n-arrivals", "1", "--mode", "masa", "--mem-limit", "512M", "-o",
              str(tmp_path / "out")]
    assert main(["experiment", "--networks", "TinyAlex", *common]) == 0
    folder = tmp_path / "out" / "masa-512M"
    first = (folder / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["experiment", "--networks", "TinyResidual", *common]) == 1
    err = capsys.readouterr().err
    assert f"results folder {folder} already holds a run (networks TinyAlex, mode masa)" in err
    assert "pass --force to replace it" in err
    assert (folder / "config.yaml").read_text() == first  # untouched
    (folder / "notes.txt").write_text("mine")
    assert main(["experiment", "--networks", "TinyResidual", *common, "--force"]) == 0
    assert "TinyResidual" in (folder / "config.yaml").read_text()
    assert (folder / "notes.txt").read_text() == "mine"  # only the run's own files replaced


def test_a_run_name_cannot_leave_the_output_folder(tmp_path, capsys):
    assert main(["experiment", "--networks", "TinyAlex", "--n-arrivals", "1", "-o",
                 str(tmp_path / "out"), "--output-prefix", "../elsewhere"]) == 1
    assert "is outside the output folder" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_split_refuses_to_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "pkg"
    assert main(["split", "TinyAlex", "-o", str(target)]) == 0
    manifest = (target / "manifest.yaml").read_text()
    assert main(["split", "TinyResidual", "-o", str(target)]) == 1
    assert "already exists and is not empty; refusing to overwrite it (pass --force" in \
        capsys.readouterr().err
    assert (target / "manifest.yaml").read_text() == manifest
    assert main(["split", "TinyResidual", "-o", str(target), "--force"]) == 0
    assert "name: TinyResidual" in (target / "manifest.yaml").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    assert main(["split", "TinyAlex", "-o", str(other), "--force"]) == 1  # not a package
    assert (other / "thesis.tex").read_text() == "keep me"


def test_zoo_write_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert main(["zoo", "write", "TinyAlex", "-o", str(tmp_path), "--seed", "1"]) == 0
    weights = (tmp_path / "TinyAlex.caffemodel").read_bytes()
    assert main(["zoo", "write", "TinyAlex", "-o", str(tmp_path), "--seed", "2"]) == 1
    assert "already exist(s); refusing to overwrite (pass --force" in capsys.readouterr().err
    assert (tmp_path / "TinyAlex.caffemodel").read_bytes() == weights
    assert main(["zoo", "write", "TinyAlex", "-o", str(tmp_path), "--seed", "2", "--force"]) == 0
    assert (tmp_path / "TinyAlex.caffemodel").read_bytes() != weights


def test_a_matrix_naming_one_run_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("matrix: {sets: [[TinyAlex], [TinyAlex]], modes: [masa]}\nn-arrivals: 1\n")
    assert main(["experiment", str(config), "-o", str(tmp_path / "out")]) == 1
    assert "the matrix has several runs named TinyAlex/512M/masa-w2-r0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
