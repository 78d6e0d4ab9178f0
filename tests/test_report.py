"""`edgecaffe report` at scale and what its numbers mean; the CLI saying what outputs are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecaffe.cli import main
from edgecaffe.experiment.report import (
    bound_ratios,
    duration,
    find_runs,
    work_bounds_ms,
    write_report,
)
from edgecaffe.experiment.report_plots import time_unit

ROOT = Path(__file__).resolve().parents[1]


def generated(folder: Path, layers: list[tuple[float, float]], name: str) -> None:
    """A weightless `type: generated` network with (loading, execution) ms per layer and 1 MB
    of weights per layer (so the ledger moves)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "description.yaml").write_text(yaml.safe_dump({
        "type": "generated", "name": name, "num-conv-layers": len(layers), "num-fc-layers": 0,
        "layers": [{"name": f"l{i}", "id": i, "loading-duration": load,
                    "execution-duration": execute, "dependsOn": [i - 1], "weight-bytes": "1M"}
                   for i, (load, execute) in enumerate(layers)]}))


def _simulate(tmp_path: Path, nets: dict[str, list[tuple[float, float]]], output: Path,
              *extra: str) -> int:
    for name, layers in nets.items():
        generated(tmp_path / "nets" / name, layers, name=name)
    return main(["experiment", "--network-path", str(tmp_path / "nets"), "--networks",
                 ",".join(nets), "--simulate", "-o", str(output), *extra])


def test_the_bound_is_a_lower_bound_with_two_workers(tmp_path):
    # Two one-layer networks of one request run side by side on two workers: response 110 ms.
    # max(total load, total exec) = 200 ms would give 0.55; the run's own work over its two
    # workers is 110 ms.
    assert _simulate(tmp_path, {"A": [(10, 100)], "B": [(10, 100)]}, tmp_path / "out",
                     "--mode", "multi-bulk", "--n-arrivals", "1", "--n-workers", "2") == 0
    run = find_runs([tmp_path / "out"])[0]
    assert float(run.requests["response_ms"][0]) == pytest.approx(110, rel=0.01)
    assert bound_ratios(run) == [pytest.approx(1.0, rel=0.01)]


def test_the_bound_holds_for_every_request_of_a_loaded_run(tmp_path):
    assert _simulate(tmp_path, {"A": [(5, 20), (8, 30)], "B": [(3, 40)]}, tmp_path / "out",
                     "--arrival-mode", "poisson", "--n-arrivals", "40",
                     "--mean-gap-ms", "20") == 0
    run = find_runs([tmp_path / "out"])[0]
    ratios = bound_ratios(run)
    assert len(ratios) == 40
    assert min(ratios) >= 1 - 1e-9
    assert max(ratios) > 1.5  # overloaded: requests waited, and the ratio shows it
    bounds = work_bounds_ms(run)
    assert all(b > 0 for b in bounds.values())


def test_a_long_run_is_sampled_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("edgecaffe.experiment.report_plots.GANTT_TASKS", 30)
    monkeypatch.setattr("edgecaffe.experiment.report_plots.CURVE_POINTS", 40)
    for folder in ("a", "b"):  # two runs whose folders end alike
        assert _simulate(tmp_path, {"A": [(5, 20), (8, 30)], "B": [(3, 40)]},
                         tmp_path / folder, "--n-arrivals", "30") == 0
    steps = []
    markdown, page = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report",
                                  steps.append)
    text = markdown.read_text()
    assert len(steps) == 2 * 2 + 2
    assert "the chart shows its first 30" in text
    assert "maximum (shaded) and the time-weighted mean" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings))
    assert "## a/masa-512M: tasks and memory" in text and "## b/masa-512M" in text
    row = next(line for line in text.splitlines() if "masa (sim)" in line).split("|")
    assert row[10].strip() == "n/a"  # peak RSS of a simulated run
    for fact in ("* host: ", "* BLAS: ", "* versions: python", "* date: ", "arrival_mode"):
        assert fact in text
    environment = json.loads((tmp_path / "a" / "masa-512M" / "environment.json").read_text())
    assert environment["versions"]["numpy"] and environment["cpus"] >= 1
    assert page.read_text().count("data:image/png;base64,") == 4


def test_times_read_in_a_short_unit():
    assert duration(950) == "950 ms" and duration(45_000) == "45.0 s"
    assert duration(30 * 60e3) == "30.0 min" and duration(75 * 3600e3) == "75.0 h"
    assert time_unit(5e3) == (1.0, "ms") and time_unit(3e5)[1] == "min"
    assert time_unit(2.7e8)[1] == "h"


def _without_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment whose `import matplotlib` fails, as where it is not installed."""
    fake = tmp_path / "no-matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT / "src")])}


def test_missing_matplotlib_is_said_once_up_front(tmp_path):
    assert _simulate(tmp_path, {"A": [(5, 20)]}, tmp_path / "out", "--n-arrivals", "2") == 0
    env = _without_matplotlib(tmp_path)
    done = subprocess.run([sys.executable, "-m", "edgecaffe", "report", str(tmp_path / "out"),
                           "-o", str(tmp_path / "report")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("pip install 'edgecaffe[plot]'") == 1
    assert "Traceback" not in done.stderr
    assert "matplotlib is not installed" in (tmp_path / "report" / "report.md").read_text()
    # `profile --plot` refuses before it profiles (the manifest keeps no profile).
    assert main(["split", "TinyAlex", "-o", str(tmp_path / "pkg")]) == 0
    done = subprocess.run([sys.executable, "-m", "edgecaffe", "profile", str(tmp_path / "pkg"),
                           "--plot", str(tmp_path / "p.png")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "pip install 'edgecaffe[plot]'" in done.stderr
    assert "Traceback" not in done.stderr and "profile:" not in (
        tmp_path / "pkg" / "manifest.yaml").read_text().split("layers:")[0]


def test_run_says_weights_are_synthetic_and_features_are_not_classes(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    assert main(["run", "TinyAlex", "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert "seeded synthetic (random) weights" in out and "top 5 classes" in out
    assert main(["run", "TinyAlex", "--repeat", "0", "--outputs", "fc3"]) == 0
    out = capsys.readouterr().out
    assert "fc3: shape" in out and "feature vector: min" in out and "1. class" not in out


def test_forced_admissions_fail_the_run_unless_allowed(tmp_path, capsys):
    base = ["--n-arrivals", "1", "--mem-limit", "1K"]
    assert _simulate(tmp_path, {"A": [(5, 20)]}, tmp_path / "out", *base) == 1
    err = capsys.readouterr().err
    assert "admitted over the 1K budget" in err and "--allow-overcommit" in err
    assert _simulate(tmp_path, {"A": [(5, 20)]}, tmp_path / "out", *base,
                     "--allow-overcommit", "--force") == 0


def test_the_demo_says_up_front_that_its_report_has_no_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("edgecaffe.cli.demo_cmd.NETWORKS", ["TinyAlex"])
    monkeypatch.setattr("edgecaffe.experiment.report_plots.matplotlib_available", lambda: False)
    assert main(["demo", "--batches", "1", "--modes", "masa", "-o", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("pip install 'edgecaffe[plot]'") == 1
    assert "matplotlib is not installed" in (tmp_path / "d" / "report" / "report.md").read_text()
    assert not list((tmp_path / "d" / "report").glob("*.png"))
