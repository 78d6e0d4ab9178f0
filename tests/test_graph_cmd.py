"""`edgecaffe graph`: the task graph of a mode as Graphviz DOT, checked by parsing the DOT text."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgecaffe.cli import main
from edgecaffe.cli.graph_cmd import source_info
from edgecaffe.sched import LayerInfo, NetworkInfo, Planner
from edgecaffe.sched.dot import task_graph_dot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRING = r'"(?:[^"\\]|\\.)*"'
ATTR = re.compile(rf"(\w+)=({STRING}|[^,\s\]]+)")
NODE = re.compile(rf"^\s*(\w+) \[((?:{STRING}|[^\]\"])*)\];$")
EDGE = re.compile(rf"^\s*(\w+) -> (\w+)(?: \[((?:{STRING}|[^\]\"])*)\])?;$")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))


def unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


@dataclass
class Dot:
    """What a DOT file declares: nodes (with attributes and cluster), edges, clusters."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    node_cluster: dict[str, str | None] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    clusters: dict[str, dict[str, str]] = field(default_factory=dict)


def parse_dot(text: str) -> Dot:
    """A strict reader of what `task_graph_dot` writes: fails on any line it does not know."""
    dot = Dot()
    lines = text.splitlines()
    assert re.fullmatch(rf"digraph {STRING} {{", lines[0]), lines[0]
    assert lines[-1] == "}"
    cluster = None
    for line in lines[1:-1]:
        stripped = line.strip()
        if match := re.fullmatch(r"subgraph (cluster_\w+) \{", stripped):
            assert cluster is None, "nested cluster"
            cluster = match.group(1)
            dot.clusters[cluster] = {}
        elif stripped == "}":
            assert cluster is not None, "unbalanced }"
            cluster = None
        elif stripped.startswith(("graph [", "node [", "edge [")):
            attrs = {k: unquote(v) for k, v in ATTR.findall(stripped)}
            if cluster is not None and stripped.startswith("graph ["):
                dot.clusters[cluster] = attrs
        elif match := EDGE.match(line):
            attrs = {k: unquote(v) for k, v in ATTR.findall(match.group(3) or "")}
            dot.edges.append((match.group(1), match.group(2), attrs))
        elif match := NODE.match(line):
            assert match.group(1) not in dot.nodes, f"node {match.group(1)} declared twice"
            dot.nodes[match.group(1)] = {k: unquote(v) for k, v in ATTR.findall(match.group(2))}
            dot.node_cluster[match.group(1)] = cluster
        else:
            raise AssertionError(f"unexpected DOT line: {line!r}")
    assert cluster is None, "unclosed cluster"
    for source, target, _ in dot.edges:
        assert source in dot.nodes and target in dot.nodes, (source, target)
    return dot


def plan(mode: str, names: list[str], requests: int = 1):
    infos = [source_info(name) for name in names]
    planner = Planner(mode)
    return [instance for r in range(requests) for instance in planner.plan(r, infos)]


def graph(tmp_path: Path, capsys, *args: str) -> tuple[Dot, str]:
    output = tmp_path / "graph.dot"
    assert main(["graph", *args, "-o", str(output)]) == 0
    if shutil.which("dot"):  # Graphviz, when installed, reads it too
        done = subprocess.run(["dot", "-Tcanon", str(output)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0 and not done.stderr, done.stderr
    return parse_dot(output.read_text()), capsys.readouterr().out


def planned_edges(instances) -> set[tuple[str, str]]:
    return {(f"t{dep.id}", f"t{task.id}") for i in instances for task in i.tasks
            for dep in task.deps}


def test_masa_graph_matches_the_planner(tmp_path, capsys):
    dot, out = graph(tmp_path, capsys, "masa", "TinyAlex", "TinyResidual")
    instances = plan("masa", ["TinyAlex", "TinyResidual"])
    tasks = [task for instance in instances for task in instance.tasks]
    expected = planned_edges(instances)
    assert len(dot.nodes) == len(tasks)
    assert len(dot.edges) == len(expected)
    assert {(s, t) for s, t, _ in dot.edges} == expected
    assert f"{len(tasks)} tasks, {len(expected)} edges, 2 instances" in out
    # One cluster per instance, labelled with its network; every task inside its own.
    assert {c["label"].split(" #")[0] for c in dot.clusters.values()} == {"TinyAlex",
                                                                          "TinyResidual"}
    for instance in instances:
        for task in instance.tasks:
            node = f"t{task.id}"
            assert dot.node_cluster[node] == f"cluster_{instance.id}"
            assert dot.nodes[node]["shape"] == {"INIT": "house", "LOAD": "box",
                                                "EXEC": "ellipse"}[task.kind.name]
    labels = [n["label"] for n in dot.nodes.values()]
    assert "init TinyAlex#0" in labels and "init TinyResidual#1" in labels
    assert "load conv1" in labels and "exec fc4" in labels
    # Coloured by network: one fill per network, different between the two.
    fills = {}
    for instance in instances:
        fills[instance.name] = {dot.nodes[f"t{t.id}"]["fillcolor"] for t in instance.tasks}
    assert all(len(f) == 1 for f in fills.values()) and fills["TinyAlex"] != fills["TinyResidual"]
    # masa (partial) links nothing across networks.
    assert not any(attrs for _, _, attrs in dot.edges)


def test_bulk_chains_requests(tmp_path, capsys):
    dot, out = graph(tmp_path, capsys, "bulk", "TinyAlex", "TinyResidual", "--requests", "2")
    instances = plan("bulk", ["TinyAlex", "TinyResidual"], requests=2)
    assert len(instances) == 4 and len(dot.clusters) == 4
    assert {(s, t) for s, t, _ in dot.edges} == planned_edges(instances)
    assert "load all layers" in [n["label"] for n in dot.nodes.values()]
    # Request 1's first init waits for request 0's last exec.
    last_of_request0, first_of_request1 = instances[1].last, instances[2].first
    edge = (f"t{last_of_request0.id}", f"t{first_of_request1.id}")
    assert edge in {(s, t) for s, t, _ in dot.edges}
    assert dot.node_cluster[edge[0]] != dot.node_cluster[edge[1]]
    assert "request 1" in dot.clusters[dot.node_cluster[edge[1]]]["label"]
    cross = [(s, t) for s, t, attrs in dot.edges if attrs]
    assert len(cross) == 3  # 4 networks in one chain
    assert "4 instances" in out and "2 requests" in out


def test_deepeye_shows_pool_1(tmp_path, capsys):
    dot, _ = graph(tmp_path, capsys, "deepeye", "TinyAlex", "TinyResidual")
    instances = plan("deepeye", ["TinyAlex", "TinyResidual"])
    assert {(s, t) for s, t, _ in dot.edges} == planned_edges(instances)
    pool1 = {f"t{t.id}" for i in instances for t in i.tasks if t.pool == 1}
    assert pool1, "deepeye puts the fc part on pool 1"
    for node, attrs in dot.nodes.items():
        assert ("dashed" in attrs["style"]) == (node in pool1), (node, attrs)
    labels = {dot.nodes[node]["label"] for node in pool1}
    assert {"load fc3", "exec fc4", "load fc"} <= labels
    assert "dashed border = pool 1" in parse_title(tmp_path / "graph.dot")


def parse_title(path: Path) -> str:
    return unquote(ATTR.search(path.read_text().splitlines()[1]).group(2))


def test_slashes_and_quotes_are_escaped(tmp_path, capsys):
    dot, _ = graph(tmp_path, capsys, "linear", "TinyInception")
    assert "exec inception_a/1x1" in {n["label"] for n in dot.nodes.values()}

    layers = [LayerInfo('con"v1/7x7_s2', "Convolution", 100, 10, ("data",), ("a",)),
              LayerInfo("back\\slash", "ReLU", 0, 0, (), ())]
    info = NetworkInfo('My"Net', layers, ("data",), 10, frozenset({"a"}), {"data": 10, "a": 10})
    instances = Planner("partial").plan(0, [info])
    text = task_graph_dot(instances, 'title "quoted"')
    parsed = parse_dot(text)
    assert {n["label"] for n in parsed.nodes.values()} == {
        'init My"Net#0', 'load con"v1/7x7_s2', 'exec con"v1/7x7_s2', "exec back\\slash"}
    assert 'My"Net' in next(iter(parsed.clusters.values()))["label"]
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-Tcanon"], input=text, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert "con\\\"v1/7x7_s2" in done.stdout


def test_package_folder(tmp_path, capsys):
    assert main(["split", "TinyAlex", "-o", str(tmp_path / "pkg"), "--synthetic"]) == 0
    capsys.readouterr()
    dot, _ = graph(tmp_path, capsys, "partial", str(tmp_path / "pkg"), "TinyAlex")
    assert len(dot.clusters) == 2
    assert {"init TinyAlex#0", "init TinyAlex#1"} <= {n["label"] for n in dot.nodes.values()}
    # Same network, same colour.
    assert len({n["fillcolor"] for n in dot.nodes.values()}) == 1


@pytest.mark.parametrize(("args", "named"), [
    (["nomode", "TinyAlex"], "nomode"),
    (["masa", "TinyAlex", "NoSuchNet"], "NoSuchNet"),
    (["masa", "TinyAlex", "--requests", "0"], "--requests"),
])
def test_errors(tmp_path, capsys, args, named):
    output = tmp_path / "g.dot"
    assert main(["graph", *args, "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert named in err and "edgecaffe graph: error" in err
    assert not output.exists()


def test_unknown_mode_lists_the_modes(tmp_path, capsys):
    assert main(["graph", "Masa2", "TinyAlex", "-o", str(tmp_path / "g.dot")]) == 1
    err = capsys.readouterr().err
    assert "deepeye-frugal" in err and "execprio-inter" in err


def test_png(tmp_path, capsys):
    output = tmp_path / "graph.dot"
    assert main(["graph", "deepeye", "TinyAlex", "TinyResidual", "-o", str(output),
                 "--png"]) == 0
    captured = capsys.readouterr()
    assert output.exists()
    if shutil.which("dot"):
        assert (tmp_path / "graph.png").read_bytes()[:8] == PNG_MAGIC
        assert "rendered" in captured.out
    else:
        assert "apt-get install graphviz" in captured.err
        assert not (tmp_path / "graph.png").exists()


def test_png_without_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `dot` here, whatever is installed
    output = tmp_path / "graph.dot"
    assert main(["graph", "bulk", "TinyAlex", "-o", str(output), "--png"]) == 0
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err
    assert output.exists() and not (tmp_path / "graph.png").exists()
