"""Task graphs as Graphviz DOT: what a mode's planner made of a request, for reading by eye.

One node per task (`init GenderNet#0`, `load conv1`, `exec fc6`, `load all layers`), filled with
its network's colour, shaped by its kind; one cluster per network instance; an edge from each
dependency to the task that waits for it. Tasks of worker pool 1 (DeepEye's fc pool) have a
dashed border. Plain text, standard library only: render it with `dot -Tpng`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgecaffe.sched.graph import NetworkInstance, Task

#: Fill colours, one per network name in order of first appearance (ColorBrewer Set3, then
#: Pastel1), so the same network has the same colour in every request and every graph.
PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f", "#fbb4ae", "#b3cde3", "#decbe4", "#fed9a6",
)
#: Node shape by task kind.
SHAPES = {"init": "house", "load": "box", "exec": "ellipse"}
#: Edges between different network instances (the mode's cross-network links).
CROSS_EDGE = 'color="#b2182b", penwidth=1.6'


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes, quotes and newlines escaped, so a layer name such
    as `conv1/7x7_s2` or `a"b` is shown as it is (a lone backslash would start a label escape)."""
    escaped = (str(text).replace("\\", "\\\\").replace('"', '\\"')
               .replace("\r", "").replace("\n", "\\n"))
    return f'"{escaped}"'


def darker(colour: str, factor: float = 0.55) -> str:
    """`#rrggbb` scaled towards black: a cluster's border, visible even for a pale fill."""
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c * factor):02x}" for c in (red, green, blue))


def node_id(task: Task) -> str:
    return f"t{task.id}"


def task_label(task: Task) -> str:
    """`init GenderNet#0` for an init (it names the instance); the task's own label otherwise."""
    if task.kind.name == "INIT":
        return f"{task.label} {task.instance.name}#{task.instance.id}"
    return task.label


def edges(instances: Iterable[NetworkInstance]) -> list[tuple[Task, Task]]:
    """(dependency, dependent) pairs of the instances' tasks, in task order."""
    return [(dep, task) for instance in instances for task in instance.tasks for dep in task.deps]


def _attrs(**values: str) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def task_graph_dot(instances: Sequence[NetworkInstance], title: str) -> str:
    """The DOT text of the instances' task graph, titled `title`.

    A dependency on a task outside `instances` (an earlier request's, when only a later one is
    drawn) appears as a grey dotted node outside the clusters, so no edge goes nowhere.
    """
    colours: dict[str, str] = {}
    for instance in instances:
        colours.setdefault(instance.name, PALETTE[len(colours) % len(PALETTE)])
    pools = sorted({task.pool for instance in instances for task in instance.tasks})
    legend = "shapes: init = house, load = box, exec = ellipse; red edges link networks"
    if any(pool > 0 for pool in pools):
        legend += "; dashed border = pool 1"

    graph = _attrs(label=quote(title + "\n" + legend), labelloc="t", fontsize="16",
                   fontname="Helvetica", rankdir="TB")
    lines = [
        f"digraph {quote(title)} {{",
        f"  graph [{graph}];",
        f"  node [{_attrs(style='filled', fontname='Helvetica', fontsize='11')}];",
        f"  edge [{_attrs(arrowsize='0.7')}];",
    ]
    drawn: set[int] = set()
    for instance in instances:
        colour = colours[instance.name]
        cluster = quote(f"{instance.name} #{instance.id}, request {instance.request_id}")
        lines.append(f"  subgraph cluster_{instance.id} {{")
        frame = _attrs(label=cluster, color=quote(darker(colour)), penwidth="2",
                       style="rounded")
        lines.append(f"    graph [{frame}];")
        for task in instance.tasks:
            drawn.add(task.id)
            style = {0: "filled", 1: "filled,dashed"}.get(task.pool, "filled,dotted")
            tooltip = (f"task {task.id}: {task.label} of {instance.name}#{instance.id}, "
                       f"request {instance.request_id}, pool {task.pool}")
            attrs = _attrs(label=quote(task_label(task)), shape=SHAPES[task.kind.name.lower()],
                           fillcolor=quote(colour), style=quote(style), tooltip=quote(tooltip))
            lines.append(f"    {node_id(task)} [{attrs}];")
        lines.append("  }")
    external = []
    for dep, _ in edges(instances):
        if dep.id not in drawn:
            drawn.add(dep.id)
            external.append(dep)
    for dep in external:
        label = (f"{dep.label} of {dep.instance.name}#{dep.instance.id}\n"
                 f"(request {dep.instance.request_id}, not drawn)")
        attrs = _attrs(label=quote(label), shape=SHAPES[dep.kind.name.lower()],
                       fillcolor='"#f0f0f0"', style='"filled,dotted"', fontcolor="gray40")
        lines.append(f"  {node_id(dep)} [{attrs}];")
    for dep, task in edges(instances):
        cross = dep.instance is not task.instance
        suffix = f" [{CROSS_EDGE}]" if cross else ""
        lines.append(f"  {node_id(dep)} -> {node_id(task)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
