"""Workloads, the results folder, and the demo command."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future

import numpy as np
import pytest
import yaml

from conftest import read_csv
from edgecaffe.cli import main
from edgecaffe.experiment import run_once
from edgecaffe.model.package import split
from edgecaffe.workload import batches, drive, poisson

NETS = ["TinyAlex", "TinyResidual"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, zoo_model):
    folder = tmp_path_factory.mktemp("packages")
    return {name: split(list(zoo_model(name)), folder / name) for name in NETS}


def test_poisson_is_seeded_and_exponential():
    first = poisson(NETS, 2000, mean_gap_ms=50.0, seed=3)
    again = poisson(NETS, 2000, mean_gap_ms=50.0, seed=3)
    other = poisson(NETS, 2000, mean_gap_ms=50.0, seed=4)
    gaps = np.array([a.gap_ms for a in first])
    assert [a.gap_ms for a in first] == [a.gap_ms for a in again] != [a.gap_ms for a in other]
    assert gaps[0] == 0.0
    assert abs(gaps[1:].mean() - 50.0) < 5.0  # exponential mean
    assert abs(np.median(gaps[1:]) - 50.0 * np.log(2)) < 5.0  # exponential median, not normal
    with pytest.raises(ValueError, match="positive"):
        poisson(NETS, 3, mean_gap_ms=0)


def test_drive_never_submits_early():
    submitted = []

    def submit(x, networks):
        submitted.append(time.perf_counter())
        future = Future()
        future.set_result(None)
        return future

    arrivals = poisson(NETS, 4, mean_gap_ms=20.0, seed=1)
    started = time.perf_counter()
    drive(submit, arrivals, closed_loop=False, load_input=lambda path: None)
    offsets = np.diff([started, *submitted]) * 1e3
    for gap, arrival in zip(offsets[1:], arrivals[1:], strict=True):
        assert gap >= arrival.gap_ms - 1.0  # never early (1 ms for timer granularity)


def test_run_once_writes_a_results_folder(tmp_path, packages):
    summary, engine = run_once(packages, batches(NETS, 3), mode="masa", budget="64M",
                               output=tmp_path / "run")
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} == {
        "config.yaml", "tasks.csv", "requests.csv", "networks.csv", "ledger.csv", "rss.csv",
        "workers.csv", "summary.json", "environment.json"}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["mode"] == "masa" and config["budget_bytes"] == 64 * 2**20
    requests = read_csv(folder / "requests.csv")
    assert len(requests) == 3 and {r["status"] for r in requests} == {"completed"}
    assert all(float(r["response_ms"]) > 0 for r in requests)
    tasks = read_csv(folder / "tasks.csv")
    assert len(tasks) == len(engine.trace.tasks) and "start_s" in tasks[0]
    ledger = read_csv(folder / "ledger.csv")
    assert int(ledger[-1]["used_bytes"]) == 0
    assert json.loads((folder / "summary.json").read_text())["completed"] == 3
    assert summary["peak_rss_bytes"] > 0 and summary["mean_network_response_ms"] > 0
    # Closed loop: each batch arrives after the previous one finished.
    arrivals = sorted(float(r["arrival_s"]) for r in requests)
    completions = sorted(float(r["completion_s"]) for r in requests)
    assert arrivals[1] >= completions[0] and arrivals[2] >= completions[1]


def test_demo_runs_rounds_and_says_what_is_noise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("edgecaffe.cli.demo_cmd.NETWORKS", ["TinyAlex", "TinyResidual"])
    monkeypatch.setattr("edgecaffe.cli.demo_cmd.ORIGINAL_COST",
                        {"TinyAlex": {"batch": 2}, "TinyResidual": {}})
    assert main(["demo", "--rounds", "2", "--modes", "masa,bulk", "-o",
                 str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "input 2x3" in out  # TinyAlex at the original-cost batch
    assert "against masa (ratio of medians)" in out
    verdict = next(line for line in out.splitlines() if line.strip().startswith("bulk ")
                   and "x " in line)
    assert "within the noise" in verdict or "in every round" in verdict
    assert (tmp_path / "demo" / "summary.md").read_text().count("|") > 10
    for mode in ("masa", "bulk"):
        for index in (1, 2):
            assert (tmp_path / "demo" / mode / f"round-{index}" / "tasks.csv").exists()
    assert (tmp_path / "demo" / "report" / "report.html").exists()
    assert main(["demo", "--modes", "warp"]) == 1


def test_demo_verdicts_follow_the_rounds_ranges(capsys):
    from edgecaffe.cli.demo_cmd import _print_verdicts

    rows = {"masa": {"median": 100, "low": 90, "high": 110},
            "bulk": {"median": 200, "low": 190, "high": 230},
            "linear": {"median": 105, "low": 95, "high": 120},
            "deepeye": {"median": 50, "low": 45, "high": 60}}
    _print_verdicts(rows)
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "masa is faster in every round (2.00x)" in lines["bulk"]
    assert "within the noise" in lines["linear"]
    assert "masa is slower in every round (2.00x)" in lines["deepeye"]


def test_report_from_results_folders(tmp_path, packages, capsys):
    for mode in ("masa", "bulk"):
        run_once(packages, batches(NETS, 2), mode=mode, budget="64M",
                 output=tmp_path / "results" / mode)
    assert main(["report", str(tmp_path / "results"), "-o", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| TinyAlex+TinyResidual | 64M | bulk | 1 |" in markdown
    assert "| TinyAlex+TinyResidual | 64M | masa | 1 |" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # bars, CDFs, two timelines
    for name in ("response_bars.png", "response_cdf.png", "run0_timeline.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r2")]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_report_shows_each_runs_ratio_to_the_lower_bound(tmp_path, zoo_model):
    from edgecaffe.experiment.report import bound_ratios, find_runs
    from edgecaffe.model.package.profile import profile_package

    package = split(list(zoo_model("TinyAlex")), tmp_path / "TinyAlex")
    profile_package(package, runs=2)
    package.save_manifest()
    run_once({"TinyAlex": package}, batches(["TinyAlex"], 3), mode="linear", budget="1G",
             output=tmp_path / "run")
    ratios = bound_ratios(find_runs([tmp_path / "run"])[0])
    assert len(ratios) == 3 and all(r >= 1 - 1e-9 for r in ratios)  # a true lower bound
    from edgecaffe.experiment.report import write_report

    markdown, _ = write_report([tmp_path / "run"], tmp_path / "report")
    row = next(line for line in markdown.read_text().splitlines() if "| linear |" in line)
    assert float(row.split("|")[8]) == pytest.approx(sum(ratios) / 3, abs=0.01)


def test_an_overloaded_open_loop_run_is_said_before_it_starts(tmp_path, capsys):
    """rho = work per request / (mean gap x workers): a 1 ms gap overloads anything."""
    base = ["experiment", "--networks", "TinyAlex,TinyResidual", "--arrival-mode", "poisson",
            "--n-arrivals", "20", "--simulate", "--device", "rpi4-sd"]
    assert main([*base, "--mean-gap-ms", "1", "-o", str(tmp_path / "busy")]) == 0
    warning = capsys.readouterr().err
    assert "offered load rho =" in warning and "grow without bound" in warning
    rho = float(warning.split("rho = ")[1].split()[0])
    assert rho > 1
    assert main([*base, "--mean-gap-ms", str(1e6), "-o", str(tmp_path / "quiet")]) == 0
    assert "offered load" not in capsys.readouterr().err


def test_a_multiplier_scales_the_gap_by_the_work_rho_counts(tmp_path, capsys):
    """On a device with slow storage the loads are most of a request's work: a multiplier m
    must give a mean gap of m x (loads + executions), so rho is about 1 / (m x workers), not a
    multiple of the executions alone (which made the README's `--multiplier 2` overload)."""
    base = ["experiment", "--networks", "TinyAlex,TinyResidual", "--arrival-mode", "poisson",
            "--n-arrivals", "400", "--simulate", "--device", "rpi4-sd", "--n-workers", "2"]
    assert main([*base, "--multiplier", "0.25", "-o", str(tmp_path / "busy")]) == 0
    warning = capsys.readouterr().err
    rho = float(warning.split("rho = ")[1].split()[0])
    assert rho == pytest.approx(1 / (0.25 * 2), rel=0.2)
    assert main([*base, "--multiplier", "2", "-o", str(tmp_path / "quiet")]) == 0
    assert "offered load" not in capsys.readouterr().err
