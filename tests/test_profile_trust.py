"""Profiles one can trust (issue 13, item 4): what a profile records about how it was taken,
when it counts as stale, and `edgecaffe profile --refresh`."""

from __future__ import annotations

import datetime
import os
import platform

import pytest

from edgecaffe.cli import main
from edgecaffe.model.package import open_package, split
from edgecaffe.model.package.profile import MAX_SPREAD, _doubts, stale_reasons


@pytest.fixture
def package_dir(tmp_path, zoo_model):
    split(list(zoo_model("TinyAlex")), tmp_path / "p")
    return tmp_path / "p"


def test_a_profile_records_host_blas_load_and_spread(package_dir):
    assert main(["profile", str(package_dir), "--runs", "3"]) == 0
    summary = open_package(package_dir).manifest["profile"]
    assert summary["host"] == platform.node()
    assert summary["blas"] != "unknown" and "openblas" in summary["blas"].lower()
    assert len(summary["load_average"]) == 2 and all(v >= 0 for v in summary["load_average"])
    assert summary["spread"] >= 0 and isinstance(summary["warnings"], list)


def fresh(summary: dict) -> dict:
    return {**summary, "host": platform.node(), "warnings": [],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def test_stale_reasons_name_each_cause():
    assert stale_reasons({}) == ["not profiled yet"]
    summary = fresh({"runs": 5, "spread": 0.1, "load_average": [0.1, 0.1]})
    assert stale_reasons({"profile": summary}) == []
    assert "another host (pi4)" in stale_reasons({"profile": {**summary, "host": "pi4"}})[0]
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=90)).isoformat()
    assert "90 days ago" in stale_reasons({"profile": {**summary, "date": old}})[0]
    doubtful = {**summary, "warnings": ["its runs spread"]}
    assert stale_reasons({"profile": doubtful}) == ["its runs spread"]
    assert stale_reasons({"profile": doubtful}, doubts=False) == []


def test_a_large_spread_or_a_busy_machine_is_said():
    quiet = {"runs": 5, "spread": MAX_SPREAD / 2, "load_average": [0.0, 0.0]}
    assert _doubts(quiet) == []
    assert "spread 60%" in _doubts({**quiet, "spread": 0.6})[0]
    busy = _doubts({**quiet, "load_average": [0.1, 4.0 * (os.cpu_count() or 1)]})
    assert busy and "busy" in busy[0]


def test_profile_shows_a_fresh_profile_and_measures_again_with_refresh(package_dir, capsys):
    assert main(["profile", str(package_dir), "--runs", "2"]) == 0
    package = open_package(package_dir)
    package.manifest["profile"] = fresh(package.manifest["profile"])
    package.save_manifest()
    taken = package.manifest["profile"]["date"]
    capsys.readouterr()
    assert main(["profile", str(package_dir), "--runs", "2"]) == 0
    assert "--refresh to measure again" in capsys.readouterr().out
    assert open_package(package_dir).manifest["profile"]["date"] == taken
    assert main(["profile", str(package_dir), "--runs", "2", "--refresh"]) == 0
    assert "--refresh to measure again" not in capsys.readouterr().out
    assert open_package(package_dir).manifest["profile"]["runs"] == 2
