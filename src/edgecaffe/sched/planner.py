"""Modes: how a request's networks become task graphs (the original's orchestrators, §2).

* bulk: init -> load all -> exec all; each init waits for the previously submitted network
  (any request); 1 worker; fcfs. multi-bulk: the same graph, no links, N workers.
* linear: init -> L0 -> E0 -> L1 -> E1 ... chained like bulk; 1 worker; fcfs.
* partial: every load after init, exec i after load i and exec i-1; N workers; fcfs.
  masa: partial + the masa policy. execprio: partial + executions first. execprio-inter:
  execprio chained across networks like bulk.
* deepeye: conv loads chained from init, conv execs chained, fc loads chained, every fc load
  before the first fc exec. Within one arrival, all networks' conv loads come before any conv
  runs; conv loads, conv execs and fc loads are chained network after network (fc execs only
  share pool 1's single worker, as in the original). 2 workers: pool 0 (init + conv) and
  pool 1 (fc); fcfs. deepeye-frugal: also, a network's fc loads wait for the previous network's
  fc execs, so one network's fc weights are in memory at a time.

Layers without weights get no load task; the Input layer gets none at all (init feeds it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgecaffe.sched.graph import Kind, NetworkInstance, Task, TaskSpec
from edgecaffe.sched.info import NetworkInfo


@dataclass(frozen=True)
class Mode:
    name: str
    build: Callable[[Planner, NetworkInstance], None]
    #: Chain each network's init after the previously submitted network's last task.
    chained: bool = False
    #: DeepEye's links within one arrival: None, "deepeye" or "frugal".
    arrival_links: str | None = None
    #: Fixed worker count (the original's), or None for the engine's setting.
    workers: int | None = None
    #: Worker pools; worker i serves pool i % pools.
    pools: int = 1
    policy: str = "fcfs"
    #: Per-layer modes free a layer's weights right after it runs.
    per_layer: bool = True


class Template:
    """A mode's graph for one network, planned once: `Planner.plan` copies it per request (long
    simulations plan the same few networks again and again)."""

    __slots__ = ("info", "marks", "roots", "specs")

    def __init__(self, info: NetworkInfo, specs: list[TaskSpec], marks: dict[str, int]) -> None:
        self.info = info
        self.specs = specs
        #: Bookmark name -> task position.
        self.marks = marks
        #: Positions of the tasks without dependencies within the instance.
        self.roots = tuple(spec.index for spec in specs if not spec.deps)


class Planner:
    """Turns requests into task graphs. Keeps the state that links networks across requests."""

    def __init__(self, mode: str | Mode, first_task_id: int = 0) -> None:
        self.mode = MODES[mode] if isinstance(mode, str) else mode
        self._next_task_id = first_task_id
        self._instance_ids = itertools.count()
        self._previous_last: Task | None = None
        self._templates: dict[int, Template] = {}

    def task(self, instance: NetworkInstance, kind: Kind, layers: Sequence[str] = (),
             pool: int = 0, whole_model: bool = False) -> Task:
        """A new task of `instance` (what a mode's build function calls, task by task)."""
        spec = TaskSpec(len(instance.tasks), kind, tuple(layers), pool, whole_model)
        task = Task(self._next_task_id, spec, instance)
        self._next_task_id += 1
        instance.tasks.append(task)
        return task

    def plan(self, request_id: int, networks: Sequence[NetworkInfo]) -> list[NetworkInstance]:
        """The network instances (with their tasks) of one request, linked as the mode says."""
        instances = []
        for info in networks:
            instance = NetworkInstance(next(self._instance_ids), request_id, info)
            self._build(instance)
            if self.mode.chained:
                instance.first.after(self._previous_last)
                # Kept beyond its instance's life, so its links are built now, while its
                # instance (which a task holds weakly) is there to build them from.
                self._previous_last = instance.last.keep_links()
            instances.append(instance)
        if self.mode.arrival_links:
            _link_deepeye(instances, frugal=self.mode.arrival_links == "frugal")
        return instances

    def template(self, info: NetworkInfo) -> Template:
        """The mode's graph for `info`, built by the mode's build function once per network."""
        template = self._templates.get(id(info))
        if template is None or template.info is not info:
            scratch = NetworkInstance(-1, -1, info)
            self.mode.build(Planner(self.mode), scratch)
            index = {task: i for i, task in enumerate(scratch.tasks)}
            deps = [tuple(index[dep] for dep in task.deps) for task in scratch.tasks]
            # Dependents in task order, as the scheduler unblocks them.
            dependents: list[list[int]] = [[] for _ in scratch.tasks]
            for position, positions in enumerate(deps):
                for dep in positions:
                    dependents[dep].append(position)
            specs = [TaskSpec(i, task.kind, task.layers, task.pool, task.whole_model, deps[i],
                              tuple(dependents[i])) for i, task in enumerate(scratch.tasks)]
            marks = {name: index[task] for name, task in scratch.marks.items()}
            template = self._templates[id(info)] = Template(info, specs, marks)
        return template

    def _build(self, instance: NetworkInstance) -> None:
        """Copy the template: one slotted task per spec; dependency lists stay unbuilt until
        asked for (the scheduler follows the spec's positions)."""
        template = self.template(instance.info)
        first = self._next_task_id
        specs = template.specs
        self._next_task_id = first + len(specs)
        instance.tasks = tasks = list(map(Task, range(first, first + len(specs)), specs,
                                          itertools.repeat(instance)))
        instance.marks = {name: tasks[i] for name, i in template.marks.items()}
        instance.template = template


def build_bulk(planner: Planner, instance: NetworkInstance) -> None:
    layers = instance.info.layers
    init = planner.task(instance, Kind.INIT)
    weighted = [layer.name for layer in layers if layer.weighted]
    load = planner.task(instance, Kind.LOAD, weighted, whole_model=True).after(init)
    execute = planner.task(instance, Kind.EXEC, [layer.name for layer in layers],
                           whole_model=True).after(load)
    instance.marks.update(init=init, last=execute)


def build_linear(planner: Planner, instance: NetworkInstance) -> None:
    previous = init = planner.task(instance, Kind.INIT)
    for layer in instance.info.layers:
        if layer.weighted:
            previous = planner.task(instance, Kind.LOAD, [layer.name]).after(previous)
        previous = planner.task(instance, Kind.EXEC, [layer.name]).after(previous)
    instance.marks.update(init=init, last=previous)


def build_partial(planner: Planner, instance: NetworkInstance) -> None:
    init = planner.task(instance, Kind.INIT)
    previous_exec = init
    for layer in instance.info.layers:
        load = planner.task(instance, Kind.LOAD, [layer.name]).after(init) if layer.weighted \
            else None
        previous_exec = planner.task(instance, Kind.EXEC, [layer.name]).after(load, previous_exec)
    instance.marks.update(init=init, last=previous_exec)


def build_deepeye(planner: Planner, instance: NetworkInstance) -> None:
    """Conv loads chained from init, conv execs chained; fc loads chained from init, and the first
    fc exec waits for every fc load (all fc weights in memory before the fc part runs)."""
    layers = instance.info.layers
    init = planner.task(instance, Kind.INIT, pool=0)
    marks = instance.marks
    marks.update(init=init, conv_load_last=init)
    previous_load = init
    previous_exec: Task | None = None
    conv = [layer for layer in layers if layer.stage != "fc"]
    fc = [layer for layer in layers if layer.stage == "fc"]
    for layer in conv:
        load = None
        if layer.weighted:
            load = previous_load = planner.task(instance, Kind.LOAD, [layer.name]).after(
                previous_load)
            marks["conv_load_last"] = load
        execute = planner.task(instance, Kind.EXEC, [layer.name]).after(load, previous_exec)
        if previous_exec is None:
            execute.after(init)
            marks["conv_exec_first"] = execute
        previous_exec = marks["conv_exec_last"] = execute
    previous_load = init
    fc_execs = []
    for layer in fc:
        load = None
        if layer.weighted:
            load = planner.task(instance, Kind.LOAD, [layer.name], pool=1).after(previous_load)
            marks.setdefault("fc_load_first", load)
            previous_load = marks["fc_load_last"] = load
        execute = planner.task(instance, Kind.EXEC, [layer.name], pool=1).after(
            load, previous_exec or init)
        fc_execs.append(execute)
        previous_exec = marks["fc_exec_last"] = execute
    if fc_execs and "fc_load_last" in marks:
        fc_execs[0].after(marks["fc_load_last"])
    marks["last"] = previous_exec or init


def _link_deepeye(instances: list[NetworkInstance], frugal: bool) -> None:
    """DeepEye's links across the networks of one arrival (§2.4)."""
    first, last = instances[0], instances[-1]
    if "conv_exec_first" in first.marks:
        first.marks["conv_exec_first"].after(last.marks["conv_load_last"])
    fc_load_last = first.marks.get("fc_load_last")
    fc_exec_last = first.marks.get("fc_exec_last")
    for previous, instance in itertools.pairwise(instances):
        instance.marks["init"].after(previous.marks["conv_load_last"])
        if "conv_exec_first" in instance.marks:
            instance.marks["conv_exec_first"].after(previous.marks.get("conv_exec_last"))
        if "fc_load_first" in instance.marks:
            instance.marks["fc_load_first"].after(fc_load_last)
            if frugal:
                instance.marks["fc_load_first"].after(fc_exec_last)
        fc_load_last = instance.marks.get("fc_load_last", fc_load_last)
        fc_exec_last = instance.marks.get("fc_exec_last", fc_exec_last)


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in [
        Mode("bulk", build_bulk, chained=True, workers=1, per_layer=False),
        Mode("multi-bulk", build_bulk, per_layer=False),
        Mode("linear", build_linear, chained=True, workers=1),
        Mode("partial", build_partial),
        Mode("masa", build_partial, policy="masa"),
        Mode("execprio", build_partial, policy="execprio"),
        Mode("execprio-inter", build_partial, chained=True, policy="execprio"),
        Mode("deepeye", build_deepeye, arrival_links="deepeye", workers=2, pools=2),
        Mode("deepeye-frugal", build_deepeye, arrival_links="frugal", workers=2, pools=2),
    ]
}
