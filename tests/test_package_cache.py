"""Packages split into the cache survive a split cut short: the next use builds them whole
instead of failing for good on the half-written folder (`model/package/cached.py`)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgecaffe.model.package import split
from edgecaffe.model.package.cached import cached_package
from edgecaffe.model.package.manifest import MANIFEST


def _half_written(source, target) -> None:
    """What a split killed before its manifest leaves: some weight files, no manifest."""
    shutil.copytree(source / "weights", target / "weights")
    next(iter(sorted((target / "weights").iterdir()))).write_bytes(b"cut short")


def test_a_split_cut_short_is_redone_not_refused(tmp_path, zoo_model):
    prototxt, caffemodel = zoo_model("TinyAlex")
    whole = split([prototxt, caffemodel], tmp_path / "whole")
    target = tmp_path / "cache" / "TinyAlex-abc"
    _half_written(whole.directory, target)
    with pytest.raises(Exception, match="exists and is not a model package"):
        split([prototxt, caffemodel], target)  # what the cache did before
    package = cached_package(target, lambda folder: split([prototxt, caffemodel], folder))
    assert package.directory == target and (target / MANIFEST).is_file()
    x = np.random.default_rng(0).standard_normal(package.input_shape).astype(np.float32)
    np.testing.assert_array_equal(package.forward(x)["prob"], whole.forward(x)["prob"])
    assert sorted(p.name for p in target.parent.iterdir()) == ["TinyAlex-abc"]
    # Whole now: opened, not built again.
    assert cached_package(target, lambda folder: pytest.fail("built again")).directory == target


def test_a_failed_build_leaves_nothing_and_stale_partials_are_removed(tmp_path):
    target = tmp_path / "cache" / "Net-123"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = target.parent / f".Net-123.partial-{done.stdout.strip()}-x1"  # its process ended
    (stale / "weights").mkdir(parents=True)
    mine = target.parent / ".Net-123.partial-1-x2"  # pid 1 is alive: another process's

    mine.mkdir()

    def failing(folder):
        (folder / "weights").mkdir()
        raise ValueError("layer conv1: bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        cached_package(target, failing)
    assert sorted(p.name for p in target.parent.iterdir()) == [mine.name]


def test_a_repository_model_whose_cached_split_was_cut_short_is_served(
        tmp_path, zoo_model, monkeypatch):
    """The service's start after a kill during the split of a Caffe pair: ready, not failed."""
    from edgecaffe.serve.repository import _cache_folder, scan

    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "models"
    folder.mkdir()
    prototxt, caffemodel = zoo_model("TinyAlex")
    shutil.copy(prototxt, folder / "Alex.prototxt")
    shutil.copy(caffemodel, folder / "Alex.caffemodel")
    whole = split([prototxt, caffemodel], tmp_path / "whole")
    target = _cache_folder("caffe", folder / "Alex.prototxt", folder / "Alex.caffemodel")
    _half_written(whole.directory, target)
    repository = scan(folder)
    repository.build()
    assert repository.entries["Alex"].error is None
    assert repository.packages["Alex"].directory == target
