"""The task graph of every mode, checked structurally against the reference (§2.2-2.7) and the
planner's docstring.

Each mode's expected intra-network graph is rebuilt here independently, from the spec, as a map
task key -> set of dependency keys, where a key is (kind, layer name) (layer None for init and
"*" for bulk's whole-model tasks). The planner's graph is compared to it exactly; the links
between networks are checked one by one.
"""

from __future__ import annotations

import itertools

import pytest

from edgecaffe.model.caffe import build_layers, parse_prototxt
from edgecaffe.model.info import network_info
from edgecaffe.model.network import Layer, Network
from edgecaffe.model.package.manifest import stages
from edgecaffe.model.zoo import ZOO
from edgecaffe.sched import MODES, Kind, LayerInfo, NetworkInfo, NetworkInstance, Planner, Task

PARTIAL_MODES = ("partial", "masa", "execprio", "execprio-inter")
DEEPEYE_MODES = ("deepeye", "deepeye-frugal")

# -- small networks (no weights needed) --------------------------------------------------------


def conv(name: str, bottom: str, out: int = 4, bias: bool = True) -> Layer:
    return Layer(name, "Conv", [bottom], [name], {
        "out_channels": out, "kernel": (1, 1), "stride": (1, 1), "pad": (0, 0),
        "dilation": (1, 1), "group": 1, "bias": bias})


def dense(name: str, bottom: str, out: int = 3) -> Layer:
    return Layer(name, "Dense", [bottom], [name],
                 {"out_features": out, "axis": 1, "bias": True, "transpose": False})


def relu(name: str, bottom: str) -> Layer:
    return Layer(name, "ReLU", [bottom], [name], {})


def data(channels: int = 2) -> Layer:
    return Layer("data", "Input", [], ["data"], {"shape": [1, channels, 2, 2]})


def info_of(network: Network, mean_exec_ms: float | None = None,
            stage_map: dict[str, str] | None = None) -> NetworkInfo:
    return network_info(network, stage_map or stages(network),
                                    mean_exec_ms=mean_exec_ms)


def with_fc(name: str = "withfc", mean_exec_ms: float | None = None) -> NetworkInfo:
    """conv stage: c1 (weights), r1 (none), c2 (weights), flat (view); fc stage: fc1, r2, fc2."""
    return info_of(Network(name, [
        data(), conv("c1", "data"), relu("r1", "c1"), conv("c2", "r1", bias=False),
        Layer("flat", "Flatten", ["c2"], ["flat"], {"axis": 1, "end_axis": -1}),
        dense("fc1", "flat", 5), relu("r2", "fc1"), dense("fc2", "r2", 2),
    ]), mean_exec_ms)


def without_fc(name: str = "nofc", mean_exec_ms: float | None = None) -> NetworkInfo:
    """A weight-free first layer, then conv layers only (like TinyYolo: no fc stage)."""
    return info_of(Network(name, [
        data(), relu("r0", "data"), conv("c1", "r0"), relu("r1", "c1"), conv("c2", "r1"),
    ]), mean_exec_ms)


def weightless(name: str = "weightless") -> NetworkInfo:
    return info_of(Network(name, [data(), relu("r0", "data"), relu("r1", "r0")]))


def zoo(name: str) -> NetworkInfo:
    network = Network(name, build_layers(parse_prototxt(ZOO[name].prototxt()), name))
    return info_of(network, ZOO[name].original_mean_exec_ms)


SMALL = [with_fc, without_fc, weightless]
ZOO_NAMES = ["TinyAlex", "TinyYolo", "TinyInception", "TinyResidual", "AgeNet"]


def all_infos() -> list[NetworkInfo]:
    return [make() for make in SMALL] + [zoo(name) for name in ZOO_NAMES]


INFO_IDS = [make.__name__ for make in SMALL] + ZOO_NAMES

# -- expected graphs, from the spec ------------------------------------------------------------

I = (Kind.INIT, None)


def L(layer: LayerInfo | str) -> tuple:
    return (Kind.LOAD, layer if isinstance(layer, str) else layer.name)


def E(layer: LayerInfo | str) -> tuple:
    return (Kind.EXEC, layer if isinstance(layer, str) else layer.name)


def expected_bulk(info: NetworkInfo) -> list[tuple[tuple, set]]:
    """§2.2: init; load-all <- init; exec-all <- load-all."""
    return [(I, set()), (L("*"), {I}), (E("*"), {L("*")})]


def expected_linear(info: NetworkInfo) -> list[tuple[tuple, set]]:
    """§2.5: a strict chain I -> L0 -> E0 -> L1 -> E1 ... (no load for weight-free layers)."""
    graph, previous = [(I, set())], I
    for layer in info.layers:
        for key in ([L(layer)] if layer.weighted else []) + [E(layer)]:
            graph.append((key, {previous}))
            previous = key
    return graph


def expected_partial(info: NetworkInfo) -> list[tuple[tuple, set]]:
    """§2.3: every load <- init; exec i <- load i and exec i-1; exec 0 <- init."""
    graph, previous_exec = [(I, set())], I
    for layer in info.layers:
        deps = {previous_exec}
        if layer.weighted:
            graph.append((L(layer), {I}))
            deps.add(L(layer))
        graph.append((E(layer), deps))
        previous_exec = E(layer)
    return graph


def expected_deepeye(info: NetworkInfo, alone: bool = True) -> list[tuple[tuple, set]]:
    """§2.4 within one network: conv loads chained from init, conv execs chained (the first
    after init), fc loads chained from init, the first fc exec after the last fc load and the
    last conv exec, later fc execs chained. Creation order: I, conv (L, E) pairs, fc pairs.

    `alone`: the network is the only one of its arrival, so the arrival link "first network's
    first conv exec <- last network's last conv load" stays inside it."""
    conv_layers = [layer for layer in info.layers if layer.stage != "fc"]
    fc_layers = [layer for layer in info.layers if layer.stage == "fc"]
    conv_loads = [L(layer) for layer in conv_layers if layer.weighted]
    graph = [(I, set())]
    previous_load, previous_exec = I, None
    for layer in conv_layers:
        deps = {previous_exec or I}
        if previous_exec is None and alone and conv_loads:
            deps.add(conv_loads[-1])
        if layer.weighted:
            graph.append((L(layer), {previous_load}))
            previous_load = L(layer)
            deps.add(L(layer))
        graph.append((E(layer), deps))
        previous_exec = E(layer)
    fc_loads = [L(layer) for layer in fc_layers if layer.weighted]
    previous_load = I
    for index, layer in enumerate(fc_layers):
        deps = {previous_exec} if previous_exec else set()
        if layer.weighted:
            graph.append((L(layer), {previous_load}))
            previous_load = L(layer)
            deps.add(L(layer))
        if index == 0 and fc_loads:
            deps.add(fc_loads[-1])
        graph.append((E(layer), deps))
        previous_exec = E(layer)
    return graph


EXPECTED = {
    "bulk": expected_bulk, "multi-bulk": expected_bulk, "linear": expected_linear,
    **{mode: expected_partial for mode in PARTIAL_MODES},
    **{mode: expected_deepeye for mode in DEEPEYE_MODES},
}


def key(task: Task) -> tuple:
    if task.kind == Kind.INIT:
        return I
    if task.whole_model:
        return (task.kind, "*")
    assert len(task.layers) == 1, task
    return (task.kind, task.layers[0])


def local_graph(instance: NetworkInstance) -> list[tuple[tuple, set]]:
    """The instance's tasks in creation order, with their dependencies inside the instance."""
    return [(key(task), {key(dep) for dep in task.deps if dep.instance is instance})
            for task in instance.tasks]


def foreign_deps(task: Task) -> set[Task]:
    return {dep for dep in task.deps if dep.instance is not task.instance}


def check_consistent(instances: list[NetworkInstance]) -> None:
    """Deps and dependents mirror each other, no duplicates, ids increase in creation order, no
    cycles; only DeepEye's two documented links point to tasks created later."""
    ids = [task.id for instance in instances for task in instance.tasks]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "task ids follow creation order"
    for instance in instances:
        assert instance.first is instance.tasks[0] and instance.first.kind == Kind.INIT
        assert instance.marks["init"] is instance.first
        for task in instance.tasks:
            assert task.instance is instance
            assert len(set(task.deps)) == len(task.deps)
            assert task not in task.deps
            for dep in task.deps:
                assert task in dep.dependents
                if dep.id > task.id:
                    # DeepEye's two forward links: the arrival's conv loads before its first
                    # conv exec, every fc load before the first fc exec.
                    marks = task.instance.marks
                    conv_link = marks.get("conv_exec_first") is task and dep.pool == 0 and \
                        dep is dep.instance.marks["conv_load_last"]
                    fc_link = dep is marks.get("fc_load_last") and task.pool == 1 and \
                        task.kind == Kind.EXEC
                    assert conv_link or fc_link, (task, dep)
            for dependent in task.dependents:
                assert task in dependent.deps
    # Acyclic: Kahn's algorithm consumes every task.
    tasks = [task for instance in instances for task in instance.tasks]
    waiting = {task: len(task.deps) for task in tasks}
    ready = [task for task in tasks if not task.deps]
    done = 0
    while ready:
        task = ready.pop()
        done += 1
        for dependent in task.dependents:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    assert done == len(tasks), "the task graph has a cycle"


def plan(mode: str, *requests: list[NetworkInfo]) -> list[list[NetworkInstance]]:
    planner = Planner(mode)
    return [planner.plan(request_id, infos) for request_id, infos in enumerate(requests)]


# -- one network at a time -------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("index", range(len(INFO_IDS)), ids=INFO_IDS)
def test_single_network_graph_matches_spec(mode, index):
    info = all_infos()[index]
    [[instance]] = plan(mode, [info])
    check_consistent([instance])
    assert local_graph(instance) == EXPECTED[mode](info)
    assert not any(foreign_deps(task) for task in instance.tasks)
    # The last task is the last execution; every task leads to it.
    last = instance.last
    assert last.kind == Kind.EXEC and last is [t for t in instance.tasks if t.kind == Kind.EXEC][-1]
    assert not last.dependents
    reach, todo = {last}, [last]
    while todo:
        for dep in todo.pop().deps:
            if dep not in reach:
                reach.add(dep)
                todo.append(dep)
    assert reach == set(instance.tasks)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_load_task_for_weight_free_layers_nor_the_input(mode):
    info = with_fc()
    [[instance]] = plan(mode, [info])
    names = {layer.name for task in instance.tasks if task.kind == Kind.LOAD
             for layer in map(info.layer, task.layers)}
    assert "data" not in {name for task in instance.tasks for name in task.layers}
    assert names == {"c1", "c2", "fc1", "fc2"}
    executed = [name for task in instance.tasks if task.kind == Kind.EXEC for name in task.layers]
    assert executed == [layer.name for layer in info.layers]


def test_weightless_network_in_bulk_has_an_empty_whole_model_load():
    [[instance]] = plan("bulk", [weightless()])
    _, load, execute = instance.tasks
    assert load.whole_model and load.layers == ()
    assert execute.whole_model and execute.layers == ("r0", "r1")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_pools(mode):
    [[instance]] = plan(mode, [with_fc()])
    info = instance.info
    for task in instance.tasks:
        if mode in DEEPEYE_MODES and task.kind != Kind.INIT:
            expected = 1 if info.layer(task.layers[0]).stage == "fc" else 0
        else:
            expected = 0
        assert task.pool == expected, task


def test_deepeye_creation_order_is_init_conv_pairs_then_fc_pairs():
    [[instance]] = plan("deepeye", [with_fc()])
    labels = [task.label for task in instance.tasks]
    assert labels == ["init", "load c1", "exec c1", "exec r1", "load c2", "exec c2", "exec flat",
                      "load fc1", "exec fc1", "exec r2", "load fc2", "exec fc2"]
    marks = instance.marks
    tasks = {task.label: task for task in instance.tasks}
    assert marks["conv_load_last"] is tasks["load c2"]
    assert marks["conv_exec_first"] is tasks["exec c1"]
    assert marks["conv_exec_last"] is tasks["exec flat"]
    assert marks["fc_load_first"] is tasks["load fc1"]
    assert marks["fc_load_last"] is tasks["load fc2"]
    assert marks["fc_exec_last"] is tasks["exec fc2"] is instance.last


def test_deepeye_without_fc_has_no_fc_marks_and_no_pool_1_tasks():
    [[instance]] = plan("deepeye", [without_fc()])
    assert not {"fc_load_first", "fc_load_last", "fc_exec_last"} & set(instance.marks)
    assert {task.pool for task in instance.tasks} == {0}
    assert instance.last is instance.marks["conv_exec_last"]


def test_partial_every_load_is_ready_after_init():
    [[instance]] = plan("masa", [zoo("AgeNet")])
    init = instance.first
    loads = [task for task in instance.tasks if task.kind == Kind.LOAD]
    assert loads and all(task.deps == (init,) for task in loads)
    assert set(init.dependents) >= set(loads)


# -- links between networks ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bulk", "linear", "execprio-inter"])
def test_chained_modes_link_every_network_to_the_previous_one_across_requests(mode):
    requests = plan(mode, [with_fc("a"), without_fc("b")], [weightless("c")],
                    [with_fc("d"), with_fc("e")])
    instances = [instance for request in requests for instance in request]
    check_consistent(instances)
    assert [instance.request_id for instance in instances] == [0, 0, 1, 2, 2]
    assert not foreign_deps(instances[0].first)
    for previous, instance in itertools.pairwise(instances):
        assert foreign_deps(instance.first) == {previous.last}
        assert instance.first.deps[-1] is previous.last
        # Only the init carries a link; nothing else crosses networks.
        assert not any(foreign_deps(task) for task in instance.tasks[1:])
    # Each instance's graph is still the mode's own.
    for instance in instances:
        assert local_graph(instance) == EXPECTED[mode](instance.info)


@pytest.mark.parametrize("mode", ["multi-bulk", "partial", "masa", "execprio"])
def test_unchained_modes_have_no_links(mode):
    requests = plan(mode, [with_fc("a"), without_fc("b")], [with_fc("c")])
    instances = [instance for request in requests for instance in request]
    check_consistent(instances)
    assert not any(foreign_deps(task) for instance in instances for task in instance.tasks)


def test_bulk_has_three_tasks_per_network():
    [instances] = plan("bulk", [with_fc("a"), zoo("TinyAlex")])
    for instance in instances:
        init, load, execute = instance.tasks
        assert [t.kind for t in instance.tasks] == [Kind.INIT, Kind.LOAD, Kind.EXEC]
        assert load.whole_model and execute.whole_model and not init.whole_model
        assert load.deps == (init,) and execute.deps == (load,)
        assert instance.last is execute
        assert load.layers == tuple(l.name for l in instance.info.layers if l.weighted)
        assert execute.layers == tuple(l.name for l in instance.info.layers)


def test_planner_ids_are_global_across_requests_and_start_where_asked():
    planner = Planner("masa", first_task_id=100)
    first = planner.plan(0, [with_fc("a")])
    second = planner.plan(1, [without_fc("b"), weightless("c")])
    ids = [task.id for instance in first + second for task in instance.tasks]
    assert ids == list(range(100, 100 + len(ids)))
    assert [instance.id for instance in first + second] == [0, 1, 2]
    assert [instance.request_id for instance in first + second] == [0, 1, 1]


def deepeye_links(frugal: bool, infos: list[NetworkInfo]) -> list[NetworkInstance]:
    [instances] = plan("deepeye-frugal" if frugal else "deepeye", infos)
    check_consistent(instances)
    return instances


@pytest.mark.parametrize("frugal", [False, True], ids=["deepeye", "frugal"])
@pytest.mark.parametrize("shape", ["fc-fc-fc", "fc-nofc-fc", "nofc-fc-nofc"])
def test_deepeye_links_within_one_arrival(frugal, shape):
    makers = {"fc": with_fc, "nofc": without_fc}
    infos = [makers[part](f"{part}{i}") for i, part in enumerate(shape.split("-"))]
    instances = deepeye_links(frugal, infos)
    first, last = instances[0], instances[-1]
    expected_foreign: dict[Task, set[Task]] = {}

    def expect(task: Task, dep: Task) -> None:
        expected_foreign.setdefault(task, set()).add(dep)

    # Every conv weight of every network before any conv layer runs.
    expect(first.marks["conv_exec_first"], last.marks["conv_load_last"])
    fc_load_last = first.marks.get("fc_load_last")
    fc_exec_last = first.marks.get("fc_exec_last")
    for m in range(1, len(instances)):
        previous, instance = instances[m - 1], instances[m]
        expect(instance.marks["init"], previous.marks["conv_load_last"])
        expect(instance.marks["conv_exec_first"], previous.marks["conv_exec_last"])
        if "fc_load_first" in instance.marks:
            if fc_load_last is not None:
                expect(instance.marks["fc_load_first"], fc_load_last)
            if frugal and fc_exec_last is not None:
                expect(instance.marks["fc_load_first"], fc_exec_last)
        fc_load_last = instance.marks.get("fc_load_last", fc_load_last)
        fc_exec_last = instance.marks.get("fc_exec_last", fc_exec_last)
    actual = {task: foreign_deps(task) for instance in instances for task in instance.tasks
              if foreign_deps(task)}
    assert actual == expected_foreign
    for instance in instances:
        assert local_graph(instance) == expected_deepeye(instance.info, alone=False)


def test_deepeye_fc_load_chain_skips_networks_without_fc():
    a, _, c = deepeye_links(False, [with_fc("a"), without_fc("b"), with_fc("c")])
    assert a.marks["fc_load_last"] in c.marks["fc_load_first"].deps
    assert a.marks["fc_exec_last"] not in c.marks["fc_load_first"].deps
    a, _, c = deepeye_links(True, [with_fc("a"), without_fc("b"), with_fc("c")])
    frugal_deps = set(c.marks["fc_load_first"].deps)
    assert {a.marks["fc_load_last"], a.marks["fc_exec_last"]} <= frugal_deps


def test_deepeye_first_conv_exec_waits_for_every_conv_load_of_the_arrival():
    instances = deepeye_links(False, [with_fc("a"), with_fc("b"), without_fc("c")])
    first_exec = instances[0].marks["conv_exec_first"]
    conv_loads = {task for instance in instances for task in instance.tasks
                  if task.kind == Kind.LOAD and task.pool == 0}
    ancestors, todo = set(), [first_exec]
    while todo:
        for dep in todo.pop().deps:
            if dep not in ancestors:
                ancestors.add(dep)
                todo.append(dep)
    assert conv_loads <= ancestors
    # ... and no execution of any network comes before it.
    assert not any(task.kind == Kind.EXEC for task in ancestors)


@pytest.mark.parametrize("mode", DEEPEYE_MODES)
def test_deepeye_networks_of_different_arrivals_are_not_linked(mode):
    requests = plan(mode, [with_fc("a"), with_fc("b")], [with_fc("c")], [without_fc("d")])
    linked_across = [
        (task, dep) for request in requests for instance in request for task in instance.tasks
        for dep in task.deps if dep.instance.request_id != task.instance.request_id
    ]
    assert linked_across == []
    # A one-network arrival: its first conv exec waits for its own last conv load.
    [single] = requests[1]
    assert single.marks["conv_load_last"] in single.marks["conv_exec_first"].deps


# -- the mode table (§2.1) -------------------------------------------------------------------


def test_mode_table():
    assert set(MODES) == {"bulk", "multi-bulk", "linear", "partial", "masa", "execprio",
                          "execprio-inter", "deepeye", "deepeye-frugal"}
    table = {name: (m.workers, m.pools, m.policy, m.chained, m.arrival_links, m.per_layer)
             for name, m in MODES.items()}
    assert table == {
        "bulk": (1, 1, "fcfs", True, None, False),
        "multi-bulk": (None, 1, "fcfs", False, None, False),
        "linear": (1, 1, "fcfs", True, None, True),
        "partial": (None, 1, "fcfs", False, None, True),
        "masa": (None, 1, "masa", False, None, True),
        "execprio": (None, 1, "execprio", False, None, True),
        "execprio-inter": (None, 1, "execprio", True, None, True),
        "deepeye": (2, 2, "fcfs", False, "deepeye", True),
        "deepeye-frugal": (2, 2, "fcfs", False, "frugal", True),
    }


def test_deepeye_fc_only_network_without_weights_still_runs_after_init():
    info = info_of(Network("allfc", [data(), relu("r0", "data"), relu("r1", "r0")]),
                   stage_map={"data": "conv", "r0": "fc", "r1": "fc"})
    [[instance]] = plan("deepeye", [info])
    first_exec = instance.tasks[1]
    assert first_exec.label == "exec r0"
    assert instance.first in first_exec.deps
