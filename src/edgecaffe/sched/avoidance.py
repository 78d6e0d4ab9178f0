"""Deadlock avoidance's figures and check: paths, groups and the banker's order.

The rule, its invariant and why deadlocks arose are in sched/memory.py's docstring; the memory
manager keeps the state (which units are active, their frontiers, `total_need`), this module
works out the figures and decides safety.

A *unit* of the check is a network instance whose tasks wait only on its own (its path comes
from its template, worked out once) or a `Group` of instances whose tasks wait on each other's
(DeepEye's networks of one arrival: all their conv weights are loaded before any conv runs),
with a path over all their tasks, worked out when they are added. Either has `tasks` (indexed
by its path's `order`) and a `frontier`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

from edgecaffe.sched.graph import NetworkInstance, State, Task

if TYPE_CHECKING:
    from edgecaffe.sched.planner import Template
    from edgecaffe.sched.plans import Plan

RUNNING, DONE, SKIPPED = State.RUNNING, State.DONE, State.SKIPPED


class Path:
    """A unit's tasks in path order (`order`: indices into the unit's `tasks`), with what the
    unit holds and still needs at each point. `held[k]`: bytes held once the first k tasks ran
    (reserved less returned); `need[k]`: the most it must reserve beyond that to run the rest
    alone, one task at a time, in path order. Lists of len(order) + 1, indexed by frontier;
    `returned[k]`: what the k-th task's end returns; `ahead[k]`: the largest need from
    frontier k on, a bound of the unit's need that only falls as it goes."""

    __slots__ = ("ahead", "held", "need", "order", "returned")

    def __init__(self, order: list[int], held: list[int], need: list[int],
                 returned: list[int]) -> None:
        self.order = order
        self.held = held
        self.need = need
        self.returned = returned
        self.ahead = need.copy()
        for step in range(len(need) - 2, -1, -1):
            self.ahead[step] = max(need[step], self.ahead[step + 1])


def figures_path(order: list[int], reserved: Sequence[int], returned: Sequence[int]) -> Path:
    """The path of tasks taken in `order`, the k-th reserving `reserved[k]` bytes as it starts
    and returning `returned[k]` as it ends."""
    held = [0] * (len(order) + 1)
    for step in range(len(order)):
        held[step + 1] = held[step] + reserved[step] - returned[step]
    need = [0] * (len(order) + 1)
    for step in range(len(order) - 1, -1, -1):
        need[step] = max(reserved[step], reserved[step] - returned[step] + need[step + 1])
    return Path(order, held, need, list(returned))


def template_path(template: Template, plans: list[Plan]) -> Path | None:
    """A template's path: its positions in a topological order, the smallest position first
    (load i, exec i, load i+1, ... for the per-layer modes). None if the graph has a cycle or
    its init is not its only root. Needs each end's returned bytes (`Plan.freed`)."""
    if not plans or not plans[0].init or template.roots != (0,):
        return None
    order = _topological(len(plans), lambda i: template.specs[i].deps,
                         lambda i: template.specs[i].dependents)
    if order is None:
        return None
    return figures_path(order, [plans[i].nbytes for i in order],
                        [plans[i].freed for i in order])


def advance(unit: Any, path: Path, frontier: int) -> int:
    """The unit's frontier from `frontier` on: past every task of its path that has started."""
    order, tasks = path.order, unit.tasks
    while frontier < len(order) and tasks[order[frontier]].state >= RUNNING:
        frontier += 1
    return frontier


class Group:
    """Instances whose tasks wait on each other's, as one unit: their tasks in path order
    (`tasks`), each task's step (`steps`, by task id), the frontier, and how many of its
    instances are not over. `path` is None when the group is not guarded."""

    __slots__ = ("frontier", "path", "remaining", "steps", "tasks")

    def __init__(self, tasks: list[Task], path: Path | None, remaining: int) -> None:
        self.tasks = tasks
        self.path = path
        self.steps = {task.id: step for step, task in enumerate(tasks)}
        self.frontier = 0
        self.remaining = remaining


def link_groups(instances: list[NetworkInstance], capacity_bytes: int) -> None:
    """Group the instances (added together) whose tasks wait on another task than their
    template says, other than an init waiting for an earlier instance's last task (the chained
    modes: that instance is over before this one starts). Sets `instance.group`."""
    members = {instance: instance for instance in instances}

    def root(instance: NetworkInstance) -> NetworkInstance:
        while members[instance] is not instance:
            instance = members[instance]
        return instance

    grouped: set[NetworkInstance] = set()
    outside = False  # a link to an instance added earlier: the group cannot be guarded
    for instance in instances:
        for task in instance.tasks if instance.linked else ():
            if not task.has_own_links:
                continue
            own = task.spec.deps
            for dep in task.deps:
                other = dep._instance()
                if other is None or (other is instance and dep.spec.index in own):
                    continue
                if other is not instance and task.plan.init and dep is other.marks.get("last"):
                    continue
                grouped.add(instance)
                if other not in members:
                    outside = True
                    continue
                grouped.add(other)
                members[root(other)] = root(instance)
    components: dict[NetworkInstance, list[NetworkInstance]] = {}
    for instance in instances:
        if instance in grouped:
            components.setdefault(root(instance), []).append(instance)
    for component in components.values():
        path, tasks = None if outside else _group_path(component, capacity_bytes)
        group = Group(tasks, path, len(component))
        for instance in component:
            instance.group = group


def _group_path(component: list[NetworkInstance], capacity_bytes: int
                ) -> tuple[Path | None, list[Task]]:
    """The group's path over all its tasks (the smallest task id first) and its tasks in path
    order; the path is None if a template is not guarded, the tasks have a cycle or more than
    one root, or the path's peak exceeds the capacity. An instance's last task also returns
    what the instance still holds (it is over then)."""
    tasks = [task for instance in component for task in instance.tasks]
    if any(task.plan is None or task.plan.path is None for task in tasks):
        return None, tasks
    index = {task: i for i, task in enumerate(tasks)}
    order = _topological(len(tasks), lambda i: [index[d] for d in tasks[i].deps if d in index],
                         lambda i: [index[d] for d in tasks[i].dependents if d in index],
                         key=lambda i: tasks[i].id)
    if order is None or sum(1 for task in tasks if not any(d in index for d in task.deps)) != 1:
        return None, tasks
    residual = {instance.last: sum(t.plan.nbytes - t.plan.freed for t in instance.tasks)
                for instance in component}
    ordered = [tasks[i] for i in order]
    path = figures_path(list(range(len(ordered))), [task.plan.nbytes for task in ordered],
                        [task.plan.freed + residual.get(task, 0) for task in ordered])
    return (path if path.need[0] <= capacity_bytes else None), ordered


def _topological(count: int, deps, dependents, key=None) -> list[int] | None:
    """Kahn's order of `count` nodes, the smallest (by `key`) ready node first; None for a
    cycle."""
    key = key or (lambda i: i)
    waiting = [len(deps(i)) for i in range(count)]
    ready = [(key(i), i) for i in range(count) if not waiting[i]]
    order = []
    while ready:
        _, node = heappop(ready)
        order.append(node)
        for dependent in dependents(node):
            waiting[dependent] -= 1
            if not waiting[dependent]:
                heappush(ready, (key(dependent), dependent))
    return order if len(order) == count else None


def unit_of(task: Task) -> tuple[Any, int, Path | None]:
    """The task's unit (its instance or its group), its step on the unit's path, the path."""
    instance = task._instance()
    group = instance.group
    if group is None:
        return instance, task.plan.step, task.plan.path
    return group, group.steps.get(task.id, -1), group.path


def safe_order(paths: dict[Any, Path], task: Task, running: Iterable[Task], free: int) -> bool:
    """The banker's check: after `task` starts, with `free` bytes left, can the active units
    (`paths`) be ordered so that each one's need fits what is free plus what the units before
    it hold? Sorting by need decides it (one resource). Releases of running tasks are still
    to come: they count as their unit's, both held and returned before its need. The units'
    frontiers must be up to date.

    First with `need[frontier]`, which counts again what tasks started ahead of the frontier
    (prefetched loads) hold; only if that fails, with each unit's exact need (`exact_need`)."""
    credit: dict[Any, int] = {}
    for other in running:
        unit, step, path = unit_of(other)
        if path is not None and step < unit.frontier and path.returned[step]:
            credit[unit] = credit.get(unit, 0) + path.returned[step]
    unit, step, path = unit_of(task)
    states = []
    for other, other_path in paths.items():
        frontier, returns = other.frontier, credit.get(other, 0)
        if (other.path is None) if isinstance(other, Group) else other.failed is not None:
            states.append((other, None, 0, returns))  # failed: needs nothing, holds >= 0
            continue
        if other is unit and step == frontier:  # it moves this unit on
            frontier = advance(unit, other_path, frontier + 1)
            returns += other_path.returned[step]
        states.append((other, other_path, frontier, returns))
    new = [(_waits(unit), path.need[1], path.held[1])] if path is not None \
        and unit not in paths and step == 0 else []  # its root: a new unit
    entries = [(False, -r, r) if p is None else (_waits(o), p.need[f] - r, p.held[f] + r)
               for o, p, f, r in states]
    if _ordered(entries + new, free):
        return True
    entries = []
    for other, other_path, frontier, returns in states:
        need, ahead = (0, 0) if other_path is None else \
            exact_need(other, other_path, frontier, task)
        held = 0 if other_path is None else other_path.held[frontier]
        entries.append((other_path is not None and _waits(other), need - returns,
                        held + ahead + returns))
    return _ordered(entries + new, free)


def _waits(unit: Any) -> bool:
    """A context-oblivious speculative instance: its executions wait for its parent's gate, so
    it cannot finish on its own and goes after every other unit in a safe order. (Speculative
    instances are never in a DeepEye group.)"""
    return not isinstance(unit, Group) and unit.gated is not None


def _ordered(entries: list[tuple[bool, int, int]], free: int) -> bool:
    """Whether (waits, need, held) triples, units that wait for a gate last and otherwise by
    need, each fit `free` plus the held before them."""
    entries.sort()
    for _, need, held in entries:
        if need > free:
            return False
        free += held
    return True


def exact_need(unit: Any, path: Path, frontier: int, task: Task) -> tuple[int, int]:
    """A unit's need from its frontier on, without the tasks already started ahead of it
    (prefetched: what they reserve is held already), and the bytes those hold. `task` counts
    as started."""
    order, tasks, returned = path.order, unit.tasks, path.returned
    so_far = need = ahead = 0
    for step in range(frontier, len(order)):
        other = tasks[order[step]]
        nbytes = other.plan.nbytes
        if other.state >= RUNNING or other is task:
            if other.state != SKIPPED:  # held; what its end returns is then not needed either
                ahead += nbytes - (returned[step] if other.state == DONE else 0)
            continue
        if so_far + nbytes > need:
            need = so_far + nbytes
        so_far += nbytes - returned[step]
    return need, ahead
