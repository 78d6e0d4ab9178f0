"""Experiment configs: ours, the original's *.exp.yaml files as they are, flags, clear errors."""

from __future__ import annotations

import statistics

import pytest
import yaml
from PIL import Image

from conftest import read_csv
from edgecaffe.cli import main
from edgecaffe.experiment.config import ConfigError, arrivals_of, load_config

ORIGINAL_EXP = """\
cmd_base: Exp_poisson_arrival_rv_nf
build_folder: build
tag: small-2
mem_limit: 512M
mode: masa
memory-key: valgrind
n-arrivals: 3
n-workers: 2
network-path: {networks}
resources-path: {resources}
output-path: {output}
arrival-mode: batch
arrival-list: this-file.exp.yaml
output-prefix: small-2
arrivals:
- networks:
  - {{networkName: TinyAlex, pathToNetwork: TinyAlex}}
  - {{networkName: TinyResidual, pathToNetwork: TinyResidual}}
  pathToData: face.jpg
  time: 0
- networks:
  - {{networkName: TinyAlex, pathToNetwork: TinyAlex}}
  - {{networkName: TinyAlex, pathToNetwork: TinyAlex}}
  pathToData: face.jpg
  time: 0
"""

DESCRIPTION = """\
name: {name}
network-file: deploy.prototxt
model-file: weights.caffemodel
mean-scalar: [104, 117, 123]
input-scale: [35, 35]
uses-result-vector: false
mean-execution-time: {ms}
max-memory-valgrind: 1.5
"""


@pytest.fixture
def original_layout(tmp_path, zoo_model):
    """The original's layout: network folders with description.yaml, a resources folder."""
    networks, resources = tmp_path / "networks", tmp_path / "resources"
    for name, ms in (("TinyAlex", 10), ("TinyResidual", 20)):
        prototxt, caffemodel = zoo_model(name)
        folder = networks / name
        folder.mkdir(parents=True)
        (folder / "deploy.prototxt").write_text(prototxt.read_text())
        (folder / "weights.caffemodel").write_bytes(caffemodel.read_bytes())
        (folder / "description.yaml").write_text(DESCRIPTION.format(name=name, ms=ms))
    resources.mkdir()
    Image.new("RGB", (60, 40), (200, 120, 60)).save(resources / "face.jpg")
    return networks, resources


def test_original_experiment_file_runs_unchanged(tmp_path, original_layout, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    networks, resources = original_layout
    config = tmp_path / "small-2-512M-masa-w2-a1.exp.yaml"
    config.write_text(ORIGINAL_EXP.format(networks=networks, resources=resources,
                                          output=tmp_path / "out"))
    assert main(["experiment", str(config)]) == 0
    assert "2/2 requests" in capsys.readouterr().out
    run = tmp_path / "out" / "small-2"
    requests = read_csv(run / "requests.csv")
    assert [r["networks"] for r in requests] == ["TinyAlex TinyResidual", "TinyAlex TinyAlex"]
    assert {r["status"] for r in requests} == {"completed"}
    spans = read_csv(run / "networks.csv")
    assert {s["network"] for s in spans} == {"TinyAlex", "TinyResidual", "TinyAlex#2"}
    # A flag overrides the file.
    assert main(["experiment", str(config), "--mode", "bulk", "--output-prefix", "b"]) == 0
    assert (tmp_path / "out" / "b" / "tasks.csv").exists()


def test_a_missing_image_is_named_before_anything_runs(tmp_path, original_layout):
    networks, resources = original_layout
    config = tmp_path / "exp.yaml"
    config.write_text(ORIGINAL_EXP.format(networks=networks, resources=resources,
                                          output=tmp_path / "out").replace("face.jpg", "x.jpg"))
    with pytest.raises(ConfigError, match=r"arrivals\[0\].pathToData: no image at .*x.jpg"):
        load_config(config)


def test_flags_alone_are_enough(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    assert main(["experiment", "--networks", "TinyAlex,TinyInception", "--mode", "partial",
                 "--arrival-mode", "poisson", "--mean-gap-ms", "5", "--n-arrivals", "4",
                 "-o", str(tmp_path / "res")]) == 0
    assert "4/4 requests" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "res" / "partial-512M" / "requests.csv")) == 4


def test_poisson_arrivals_are_the_same_for_every_mode():
    first = arrivals_of(load_config(None, {"arrival_mode": "poisson", "seed": 5,
                                           "mode": "masa"}))[0]
    second = arrivals_of(load_config(None, {"arrival_mode": "poisson", "seed": 5,
                                            "mode": "bulk"}))[0]
    assert [a.gap_ms for a in first] == [a.gap_ms for a in second]


@pytest.mark.parametrize(("text", "message"), [
    ("mem-limt: 1G\n", "unknown key 'mem-limt'; did you mean 'mem-limit'"),
    ("mode: turbo\n", "mode: 'turbo' is not allowed; choose from bulk, multi-bulk"),
    ("granularity: byte\n", "choose from layer, network"),
    ("mem_limit: lots\n", "mem_limit: 'lots' is not allowed; expected a memory size"),
    ("n-workers: 0\n", "n-workers: 0 is not allowed; expected `int` >= 1"),
    ("arrival-mode: sometimes\n", "choose from batch, poisson, stochastic"),
    ("arrivals: [{time: 0}]\n", "arrivals[0]: {'time': 0} is not allowed; object missing "
     "required field `networks`"),
    ("arrivals:\n- {networks: [AgeNet], time: soon}\n", "arrivals[0].time: 'soon' is not "
     "allowed; expected `float`, got `str`"),
    ("- just a list\n", "expected a mapping"),
    ("mode: [\n", "malformed YAML"),
])
def test_bad_configs_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_unknown_network_is_named(tmp_path, capsys):
    assert main(["experiment", "--networks", "NoSuchNet", "-o", str(tmp_path)]) == 1
    assert "network 'NoSuchNet'" in capsys.readouterr().err


def test_matrix_runs_every_combination_with_common_random_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "matrix.yaml"
    config.write_text(f"""\
networks: [TinyAlex, TinyResidual]
arrival-mode: poisson
mean-gap-ms: 5
n-arrivals: 3
seed: 11
output: {tmp_path / "out"}
matrix:
  sets: [[TinyAlex, TinyResidual]]
  mem_limits: [64M, 1G]
  modes: [masa, bulk]
  repetitions: 2
""")
    assert main(["experiment", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("3/3 requests") == 8  # 2 limits x 2 modes x 2 repetitions
    base = tmp_path / "out" / "TinyAlex+TinyResidual"
    gaps = {}
    for run in base.glob("*/*-r*"):
        arrivals = yaml.safe_load((run / "config.yaml").read_text())["arrivals"]
        gaps.setdefault(run.name.rsplit("-r", 1)[1], set()).add(
            tuple(a["gap_ms"] for a in arrivals))
    assert set(gaps) == {"0", "1"}
    assert all(len(sequences) == 1 for sequences in gaps.values())  # same for every mode/limit
    assert gaps["0"] != gaps["1"]  # repetitions differ
    assert (base / "64M" / "masa-w2-r0" / "requests.csv").exists()


def test_built_in_sets_and_the_originals_generators():
    config = load_config(None, {"set_name": "large-3", "arrival_mode": "stochastic",
                                "mean_gap_ms": 4000.0, "n_arrivals": 50, "seed": 2})
    assert config.networks == ["ObjectNet", "EmotionNet", "MemNet"]
    arrivals, closed = arrivals_of(config)
    gaps = [a.gap_ms for a in arrivals]
    assert not closed and gaps[0] == 0
    assert abs(sum(gaps[1:]) / 49 - 4000) < 4000 * 0.02  # mean-matched normal gaps
    assert 100 < statistics.stdev(gaps[1:]) < 1000  # sigma about 500 ms: regular arrivals
    composed = arrivals_of(load_config(None, {"set_name": "all-networks", "n_arrivals": 400,
                                              "arrival_mode": "random-composition"}))[0]
    sizes = [len(a.networks) for a in composed]
    assert all(len(set(a.networks)) == len(a.networks) for a in composed)  # no replacement
    assert 0.4 < sizes.count(1) / 400 < 0.6 and 0.15 < sizes.count(2) / 400 < 0.35
    random = arrivals_of(load_config(None, {"set_name": "small-3", "n_arrivals": 20,
                                            "arrival_mode": "all-random", "per_arrival": 3}))[0]
    assert all(len(a.networks) == 3 for a in random)
    scaled = arrivals_of(load_config(None, {"arrival_mode": "poisson", "multiplier": 2.0,
                                            "n_arrivals": 400}), service_ms=100.0)[0]
    assert abs(statistics.mean(a.gap_ms for a in scaled[1:]) - 200) < 30
    with pytest.raises(ConfigError, match="set: 'huge-9' is not allowed"):
        load_config(None, {"set_name": "huge-9"})
    with pytest.raises(ConfigError, match="matrix: unknown key 'mode'; did you mean 'modes'"):
        load_config(None, {"matrix": {"mode": ["masa"]}})
