"""The context experiment (issue 16, item 5): configs with gated networks, the matrix over
context policies and shares of requests with faces, the same drawn outcomes in the engine and
the simulator, results and report."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from conftest import read_csv
from edgecaffe.cli import main
from edgecaffe.experiment.config import ConfigError, arrivals_of, expand_matrix, load_config
from edgecaffe.workload import draw_detections

CONFIG = {
    "networks": ["TinyAlex", "TinyResidual", "TinyInception"],
    "gated": {"TinyResidual": "TinyAlex", "TinyInception": "TinyAlex"},
    "detections": {1: 0.5, 2: 0.5},
    "arrival-mode": "poisson", "mean-gap-ms": 20, "n-arrivals": 8, "seed": 3,
    "matrix": {"modes": ["masa", "bulk"], "mem_limits": ["64M"],
               "contexts": ["aware", "oblivious"], "context-shares": [0, 0.5, 1]},
}


def write(tmp_path, config=CONFIG, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_matrix_crosses_context_policies_and_shares(tmp_path):
    config = load_config(write(tmp_path))
    runs = expand_matrix(config)
    assert len(runs) == 2 * 2 * 3
    names = [name for name, _ in runs]
    assert "TinyAlex+TinyResidual+TinyInception/64M/masa-w2-oblivious-p0.5-r0" in names
    half = [run for name, run in runs if name.endswith("aware-p0.5-r0")]
    arrivals = [arrivals_of(run)[0] for run in half]
    # Every policy sees the same drawn outcomes (common random numbers) ...
    assert arrivals[0] == arrivals[1]
    assert [a.detections for a in arrivals[0]] == draw_detections(8, 0.5, {1: 0.5, 2: 0.5}, 3)
    # ... and requests run the ungated network; the gated ones come with the draw.
    assert {a.networks for a in arrivals[0]} == {("TinyAlex",)}
    assert dict(arrivals[0][0].gated) == CONFIG["gated"]


@pytest.mark.parametrize(("change", "message"), [
    ({"gated": {"TinyResidual": "FaceNet"}}, "its parent 'FaceNet' is not one of"),
    ({"context": "psychic"}, "context: 'psychic' is not allowed; choose from aware, oblivious"),
    ({"context-share": 1.5}, "context-share: 1.5 is not allowed; expected `float` <= 1.0"),
    ({"detections": {0: 1.0}}, "detections"),
    ({"matrix": {"contexts": ["aware", "maybe"]}}, "matrix.contexts[1]: 'maybe'"),
])
def test_bad_context_keys_are_one_line_errors(tmp_path, change, message):
    config = {k: v for k, v in CONFIG.items() if k != "matrix"} | change
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, config))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_pipeline_name_needs_the_pipeline_module(tmp_path, monkeypatch):
    config = {"pipeline": "faces"}
    monkeypatch.setitem(sys.modules, "edgecaffe.pipeline", None)  # not in this build
    with pytest.raises(ConfigError, match="pipeline: 'faces': this build has no pipeline"):
        load_config(write(tmp_path, config))
    module = types.ModuleType("edgecaffe.pipeline")
    module.gated_networks = lambda name: (["FaceNet", "AgeNet"], {"AgeNet": "FaceNet"})
    monkeypatch.setitem(sys.modules, "edgecaffe.pipeline", module)
    loaded = load_config(write(tmp_path, config))
    assert loaded.networks == ["FaceNet", "AgeNet"] and loaded.gated == {"AgeNet": "FaceNet"}


def test_simulated_and_real_runs_share_the_drawn_outcomes(tmp_path, capsys):
    config = {k: v for k, v in CONFIG.items() if k != "matrix"} | {
        "context-share": 0.5, "mem-limit": "64M"}
    path = write(tmp_path, config)
    outcomes = {}
    for label, flags in (("real", []), ("sim", ["--simulate"])):
        for context in ("aware", "oblivious", "aware-idle"):
            folder = tmp_path / label
            assert main(["experiment", str(path), "-o", str(folder), "--context", context,
                         "--output-prefix", context, *flags]) == 0
            gates = read_csv(folder / context / "gates.csv")
            outcomes[label, context] = [(g["request_id"], g["network"], g["count"])
                                        for g in gates]
            tasks = read_csv(folder / context / "tasks.csv")
            failed = {g["request_id"] for g in gates if g["count"] == "0"}
            children = [t for t in tasks if t["request_id"] in failed
                        and t["network"] != "TinyAlex"]
            if context == "aware":
                assert children == []
            elif context == "aware-idle":  # speculated only into idle budget, if at all
                assert not {t["state"] for t in children if t["kind"] == "exec"} - {"skipped"}
            else:
                assert children and {t["state"] for t in children if t["kind"] == "exec"} \
                    == {"skipped"}
            ledger = read_csv(folder / context / "ledger.csv")
            assert int(ledger[-1]["used_bytes"]) == 0
            summary = yaml.safe_load((folder / context / "summary.json").read_text())
            assert summary["completed"] == 8 and summary["failed_conditions"] == 2 * len(failed)
    assert len(set(map(tuple, outcomes.values()))) == 1
    draws = draw_detections(8, 0.5, {1: 0.5, 2: 0.5}, 3)
    assert [int(c) for _, n, c in outcomes["real", "aware"] if n == "TinyResidual"] == draws
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sim"), str(tmp_path / "real"), "-o",
                 str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    for row in ("masa aware p=0.5 (sim) |", "masa oblivious p=0.5 |",
                "masa aware-idle p=0.5 (sim) |"):
        assert f"| TinyAlex+TinyInception+TinyResidual | 64M | {row}" in markdown
