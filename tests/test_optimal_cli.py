"""`edgecaffe optimal`: an instance from an experiment config, the checked optimum, and every
policy's gap to it (simulated on the same integer durations)."""

from __future__ import annotations

import builtins
import json

import pytest
import yaml

from edgecaffe.cli import main
from tests.test_sim import generated

pytest.importorskip("ortools")


@pytest.fixture
def instance_config(tmp_path):
    nets = tmp_path / "nets"
    for name, layers, weights in [("A", [(5, 3), (8, 4), (3, 6)], ["20M", "30M", "10M"]),
                                  ("B", [(10, 10), (20, 5)], ["40M", "60M"]),
                                  ("C", [(2, 1), (1, 1)], ["5M", "5M"])]:
        folder = generated(nets / name, layers, name=name,
                           **{"init-duration": 1, "input-bytes": "1M"})
        description = yaml.safe_load((folder / "description.yaml").read_text())
        for layer, nbytes in zip(description["layers"], weights, strict=True):
            layer.update({"weight-bytes": nbytes, "output-bytes": "1M"})
        (folder / "description.yaml").write_text(yaml.safe_dump(description))
    config = tmp_path / "opt.yaml"
    config.write_text(yaml.safe_dump({"network-path": str(nets), "networks": ["B", "A", "C"],
                                      "mem_limit": "100M", "n-workers": 2}))
    return config


def test_optimal_prints_the_checked_optimum_and_gaps_no_policy_beats(instance_config, tmp_path,
                                                                     capsys):
    out = tmp_path / "opt.json"
    assert main(["optimal", str(instance_config), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "optimising one batch" in printed  # the default 10 closed-loop batches -> one
    assert "schedule checked: feasible" in printed
    result = json.loads(out.read_text())
    assert result["status"] == "optimal"
    optimum = result["mean_response_ms"]
    assert optimum == pytest.approx(sum(n["response_ms"] for n in result["networks"]) / 3)
    labels = [p["label"] for p in result["policies"]]
    assert labels[0] == "masa" and "bulk" in labels and "partial/hrrn" in labels
    for policy in result["policies"]:
        assert f"{policy['label']:<20}" in printed
        if policy["feasible"] and not policy["forced"]:
            # A schedule within the rules can never beat the optimum.
            assert policy["mean_response_ms"] >= optimum - 1e-6
            assert policy["gap"] == pytest.approx(policy["mean_response_ms"] / optimum - 1)
    # Each network alone is a lower bound on its response: init, then its executions.
    responses = {n["name"]: n["response_ms"] for n in result["networks"]}
    assert responses["A"] >= 1 + 3 + 4 + 6 and responses["B"] >= 1 + 10 + 5
    rows = result["schedule"]
    assert len(rows) == 3 + 2 * (3 + 2 + 2) and {r["worker"] for r in rows} <= {0, 1}


def test_optimal_refuses_what_it_cannot_solve(instance_config, tmp_path, capsys):
    assert main(["optimal", str(instance_config), "--max-tasks", "5"]) == 1
    assert "more than max_tasks=5" in capsys.readouterr().err
    assert main(["optimal", str(instance_config), "--mem-limit", "50M"]) == 1
    assert "cannot run within the budget" in capsys.readouterr().err
    assert main(["optimal", str(instance_config), "--candidates", "masa,nonsense"]) == 1
    assert "unknown mode 'nonsense'" in capsys.readouterr().err
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(instance_config.read_text() + "matrix: {modes: [masa, bulk]}\n")
    assert main(["optimal", str(matrix)]) == 1
    assert "remove the matrix" in capsys.readouterr().err


def test_optimal_without_ortools_says_how_to_install_it(instance_config, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ortools(name, *args, **kwargs):
        if name.startswith("ortools"):
            raise ImportError("No module named 'ortools'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ortools)
    assert main(["optimal", str(instance_config)]) == 1
    assert "pip install 'edgecaffe[optimal]'" in capsys.readouterr().err
