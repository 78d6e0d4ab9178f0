"""Every fenced block of README.md and docs/*.md, run as a new user would run it.

Blocks run in document order, one shared folder per document (so a command's output is there for
the next block, as for a reader following the text), with one stand-in: `face.jpg` (the texts say
"any photo"; the built-in sample picture is written there). Shell blocks run line by line
(`edgecaffe`, `python`), Python blocks in-process in that folder, YAML blocks through the loader
that reads them (experiment config, device profile, generated network, package manifest).
`text` blocks (diagrams, printed output) are not code. Every block must name its language, so a
new block cannot slip past. Benchmarks run with fewer repeats than written (`LIGHTER`). Slow
commands (a minute or more here) are marked `slow`; commands
needing root and a memory cgroup are skipped without them; a few run only when asked (`OPT_IN`:
the Caffe oracle's chroot, the full suite itself, the commands for a Raspberry Pi).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh", "bash", "python", "yaml", "text"}

#: (document, command pattern, why slow): the rest of the commands take seconds.
SLOW = [
    ("README.md", r"^edgecaffe demo", "runs four modes on three zoo networks"),
    ("README.md", r"--networks AgeNet,GenderNet -o results", "builds, profiles and runs two "
     "zoo networks"),
    ("README.md", r"^edgecaffe report results", "reads the slow run above"),
    ("README.md", r"--n-arrivals 1000", "simulates 1000 arrivals of nine networks"),
    ("README.md", r"--enforce-memory", "three large networks in a memory cgroup with swap"),
    ("README.md", r"^python3 -m venv", "a fresh install from PyPI, then the demo"),
    ("experiments.md", r"benchmarks/|pip install", "the benchmarks take minutes each"),
    ("pipelines.md", r"benchmarks/", "runs the face pipeline and its peers on a stream"),
    ("experiments.md", r"context\.yaml|context-sim context-real", "builds and profiles "
     "FaceNet, AgeNet and GenderNet, and runs 48 configurations"),
]
#: (document, command pattern, {option: value}): benchmarks run with less work than the
#: document gives (fewer repeats, rounds, batches and arrivals). This test checks that a
#: command runs as written and writes what it says, not its figures; as written these took
#: 1-6 minutes each, about half of the whole suite. Each option must be in the command.
LIGHTER = [
    ("experiments.md", r"benchmarks/forward\.py", {"--repeat": "2"}),
    ("experiments.md", r"benchmarks/engine\.py", {"--repeat": "1"}),
    ("experiments.md", r"benchmarks/paper\.py", {"--batches": "1"}),
    ("experiments.md", r"benchmarks/readme_batch\.py", {"--rounds": "1"}),
    ("experiments.md", r"benchmarks/simulator\.py",
     {"--batches": "2", "--repeats": "1", "--arrivals": "5000", "--instances": "8"}),
]
#: (document, command pattern, environment variable that opts in, why not by default).
OPT_IN = [
    ("oracles.md", r"debootstrap|apt-get", "EDGECAFFE_DOCS_ORACLE",
     "the Caffe oracle's chroot (root, network, minutes, writes outside the repository)"),
    ("oracles.md", r"caffe_oracle\.py(?! --list)", "EDGECAFFE_DOCS_ORACLE",
     "needs the Caffe oracle's chroot, and rewrites the committed fixtures"),
    ("README.md", r"&& pytest$", "EDGECAFFE_DOCS_NESTED",
     "the full test suite, which is what runs this test (.ci/run is this command)"),
    ("serving.md", r"localhost:8000|^edgecaffe serve (?!.*--check)", "EDGECAFFE_DOCS_SERVE",
     "a server that runs until stopped, and its clients: tests/test_serve_cli.py runs these "
     "very lines against a server on a free port"),
    ("devices.md", r".", "EDGECAFFE_DOCS_DEVICE",
     "commands for the board; tools/arm64/run-tests.sh runs the same steps (venv, "
     "pip install ., the tests) in an emulated arm64 root"),
]


@dataclass(frozen=True)
class Item:
    document: str
    line: int
    language: str
    text: str  # the block, or one command of a shell block

    @property
    def id(self) -> str:
        words = re.sub(r"\s+", " ", self.text.strip().splitlines()[0])[:50]
        return f"{self.document}:{self.line}:{words}"


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, language, text) of each fenced block of a Markdown file."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _items() -> list:
    params = []
    for path in DOCUMENTS:
        for line, language, text in blocks(path):
            if language in ("sh", "bash") and not re.search(r"\$\(|^\w+=", text, re.M):
                parts = [Item(path.name, line, language, c) for c in commands(text)]
            else:  # a script that sets variables runs as one
                parts = [Item(path.name, line, language, text)]
            for item in parts:
                marks = [pytest.mark.slow for document, pattern, _ in SLOW
                         if document == item.document and re.search(pattern, item.text)]
                params.append(pytest.param(item, id=item.id, marks=marks))
    return params


ITEMS = _items()


def test_every_block_names_a_language():
    unnamed = [f"{path.name}:{line}" for path in DOCUMENTS
               for line, language, _ in blocks(path) if language not in LANGUAGES]
    assert not unnamed, f"blocks without a known language ({sorted(LANGUAGES)}): {unnamed}"


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """One folder per document (with face.jpg) and one zoo cache for all."""
    from PIL import Image

    from edgecaffe.model.preprocess import sample_image

    base = tmp_path_factory.mktemp("docs")
    folders = {}
    for path in DOCUMENTS:
        folder = base / path.stem
        folder.mkdir()
        Image.fromarray(sample_image()[:, :, ::-1]).save(folder / "face.jpg")  # BGR -> RGB
        folders[path.name] = folder
    return folders, base / "cache"


def _cgroup_memory() -> bool:
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    return (controllers.exists() and "memory" in controllers.read_text().split()) or \
        Path("/sys/fs/cgroup/memory").is_dir()


def lighter(item: Item) -> str:
    """The command to run for `item`: its text, with `LIGHTER`'s options where one applies."""
    command = item.text
    for document, pattern, options in LIGHTER:
        if document != item.document or not re.search(pattern, command):
            continue
        for option, value in options.items():
            command, found = re.subn(rf"{option} \S+", f"{option} {value}", command)
            assert found == 1, f"{item.id}: LIGHTER names {option}, the command lacks it"
    return command


def _run_shell(item: Item, folder: Path, cache: Path) -> None:
    command = lighter(item)
    if re.search(r"^sudo |--enforce-memory", command):
        if os.geteuid() != 0 or not _cgroup_memory():
            pytest.skip("needs root and a memory cgroup")
        command = re.sub(r"^sudo ", "", command)  # root already; sudo may not be installed
    env = {**os.environ, "EDGECAFFE_CACHE": str(cache),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    # `python tools/...` and `pip install -e ".[bench]"` lines are run from the repository, as
    # the documents say; a fresh install (`python3 -m venv .venv && ...`) from a copy of it.
    cwd = ROOT if re.match(r"python3? (?!-m venv)|pip ", command) else folder
    if re.match(r"python3 -m venv", command):
        cwd = folder / "clone"
        shutil.copytree(ROOT, cwd, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"))
    command = re.sub(r"^python3? (?!-m venv)", shlex.quote(sys.executable) + " ", command)
    done = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, f"{item.id}: exit {done.returncode}\n" \
        f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # A sensible result: what -o names is there afterwards.
    words = shlex.split(command, comments=True)
    for flag, value in itertools.pairwise(words):
        if flag in ("-o", "--output"):
            assert (cwd / value).exists(), f"{item.id}: {value} was not written"


def _run_yaml(item: Item, folder: Path) -> None:
    from edgecaffe.experiment.config import expand_matrix, load_config
    from edgecaffe.sim import load_device, read_generated

    text = item.text
    named = re.match(r"# (\S+\.ya?ml)\n", text)
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "stages" in data:  # a pipeline (docs/pipelines.md)
        from edgecaffe.pipeline import load_pipeline

        path = folder / (named.group(1) if named else "pipeline.yaml")
        path.write_text(text)
        assert len(load_pipeline(path).stages) == len(data["stages"])
    elif named:  # a file the next blocks use
        (folder / named.group(1)).write_text(text)
        load_config(folder / named.group(1), {})
    elif "matrix" in data:
        path = folder / "matrix.yaml"
        path.write_text(text)
        assert len(list(expand_matrix(load_config(path, {})))) > 1
    elif data.get("type") == "generated":
        (folder / "generated").mkdir(exist_ok=True)
        (folder / "generated" / "description.yaml").write_text(text)
        info = read_generated(folder / "generated")
        assert len(info.layers) == len(data["layers"])
    elif "compute-factor" in data:
        (folder / "device.yaml").write_text(text)
        assert load_device(folder / "device.yaml").compute_factor == data["compute-factor"]
    elif str(data.get("format", "")).startswith("edgecaffe-package/"):
        _check_manifest_schema(data, folder)
    elif "labels" in data and "channel_order" in data:  # an ONNX model's side file
        _check_side_file(text, folder)
    else:
        pytest.fail(f"{item.id}: no rule runs this YAML block; add one to tests/test_docs.py")


def _check_manifest_schema(documented: dict, folder: Path) -> None:
    """The documented manifest names every key a real (profiled) one has."""
    from edgecaffe.model.package import split
    from edgecaffe.model.package.profile import profile_package

    package = split(["TinyAlex"], folder / "schema-TinyAlex")
    profile_package(package, runs=1)
    package.save_manifest()
    real = yaml.safe_load((folder / "schema-TinyAlex" / "manifest.yaml").read_text())
    assert set(real) <= set(documented), set(real) - set(documented)
    documented_layer = set().union(*(layer for layer in documented["layers"]))
    for layer in real["layers"]:
        assert set(layer) <= documented_layer, set(layer) - documented_layer


@pytest.mark.parametrize("item", ITEMS)
def test_doc_block(item: Item, workspaces, monkeypatch):
    folders, cache = workspaces
    folder = folders[item.document]
    for document, pattern, variable, reason in OPT_IN:
        if document == item.document and re.search(pattern, item.text) and \
                not os.environ.get(variable):
            pytest.skip(f"{reason}: set {variable}=1 to run it")
    if item.language == "text":
        return  # a diagram or printed output
    if item.language in ("sh", "bash"):
        _run_shell(item, folder, cache)
    elif item.language == "yaml":
        _run_yaml(item, folder)
    else:
        monkeypatch.chdir(folder)
        monkeypatch.setenv("EDGECAFFE_CACHE", str(cache))
        exec(compile(item.text, item.id, "exec"), {"__name__": "__docs__"})


def _check_side_file(text: str, folder: Path) -> None:
    """An ONNX side file as the docs show it: read by the importer's reader, every key kept."""
    from edgecaffe.model.onnx.sidefile import read_side_file

    model = folder / "model.onnx"  # the side file is found by the model's name
    (folder / "model.onnx.yaml").write_text(text)
    assert read_side_file(model) == {**yaml.safe_load(text),
                                     "labels": [str(x) for x in yaml.safe_load(text)["labels"]]}


def test_lighter_options_apply_to_their_commands():
    """Each `LIGHTER` row finds its command in the documents and changes it."""
    for document, pattern, _ in LIGHTER:
        matching = [p.values[0] for p in ITEMS if p.values[0].document == document
                    and re.search(pattern, p.values[0].text)]
        assert matching, f"no command of {document} matches {pattern}"
        assert all(lighter(item) != item.text for item in matching)
