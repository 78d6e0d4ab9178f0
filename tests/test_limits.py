"""Runs under real memory limits: a cgroup equal to the budget, optional swap, always cleaned up.
Needs root and a memory cgroup; skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgecaffe.cli import main
from edgecaffe.experiment.limits import LimitError, MemoryCgroup
from edgecaffe.leftovers import cgroup_dirs

try:
    MemoryCgroup(2**30)
    AVAILABLE, WHY = True, ""
except LimitError as error:
    AVAILABLE, WHY = False, str(error)

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"no real memory limits here: {WHY}")


@pytest.fixture(autouse=True)
def run_dir(tmp_path, monkeypatch):
    """Run records in the test's own folder, not /run/edgecaffe."""
    from edgecaffe import leftovers

    monkeypatch.setattr(leftovers, "RUN_DIR", tmp_path / "runs")
    monkeypatch.setenv("EDGECAFFE_RUN_DIR", str(tmp_path / "runs"))


def cgroups_left() -> list[str]:
    """edgecaffe cgroups in this process's own memory cgroup (where runs started from here
    create theirs; other checkouts on a shared machine have their own)."""
    return [str(path) for folder in cgroup_dirs() if folder.is_dir()
            for path in folder.glob("edgecaffe-*")]


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))

    def run(*extra: str) -> int:
        return main(["experiment", "--networks", "TinyAlex,TinyResidual", "--n-arrivals", "2",
                     "-o", str(tmp_path / "out"), "--output-prefix", "run", "--enforce-memory",
                     *extra])

    return run, tmp_path / "out" / "run"


def test_a_run_inside_a_cgroup_records_its_peak(experiment):
    run, folder = experiment
    assert run("--mem-limit", "512M") == 0
    limits = json.loads((folder / "limits.json").read_text())
    assert limits["limit_bytes"] == 512 * 2**20 and not limits["oom_killed"]
    assert 10 * 2**20 < limits["peak_bytes"] <= 512 * 2**20
    assert (folder / "requests.csv").exists()
    assert cgroups_left() == []


def test_the_oom_killer_is_reported(experiment, capsys):
    run, _ = experiment
    assert run("--mem-limit", "24M") == 1
    assert "OOM killer" in capsys.readouterr().err
    assert cgroups_left() == []


def test_a_swap_file_is_created_and_removed(experiment, capsys):
    run, _ = experiment
    try:
        code = run("--mem-limit", "512M", "--swap", "64M")
    except LimitError as error:  # a container may refuse swapon
        pytest.skip(str(error))
    if code != 0 and "cannot set up the swap file" in capsys.readouterr().err:
        pytest.skip("swapon refused here")
    assert code == 0
    # this run's own names only: other checkouts on a shared machine may have swap active
    assert f"edgecaffe-{os.getpid()}-" not in Path("/proc/swaps").read_text()
    assert not list(Path("/var/tmp").glob(f"edgecaffe-{os.getpid()}-*"))
    assert cgroups_left() == []


def test_swap_without_a_limit_is_refused(capsys):
    assert main(["experiment", "--swap", "1G"]) == 1
    assert "--swap needs --enforce-memory" in capsys.readouterr().err


def test_an_interrupted_run_leaves_nothing_behind(tmp_path):
    """SIGTERM (as Ctrl-C) mid-run: the child stops, the cgroup and swap file are removed."""
    import signal
    import sys
    import time

    env = {**os.environ, "EDGECAFFE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "edgecaffe", "experiment", "--networks", "TinyAlex",
               "--n-arrivals", "100000", "--mem-limit", "256M", "--enforce-memory", "--swap",
               "32M", "-o", str(tmp_path / "out")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not cgroups_left() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    if process.poll() is not None:
        pytest.skip(f"the run ended early: {process.stderr.read().decode()[-300:]}")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    assert cgroups_left() == []
    assert not list(Path("/var/tmp").glob(f"edgecaffe-{process.pid}-*"))
    assert f"edgecaffe-{process.pid}-" not in Path("/proc/swaps").read_text()
