"""Memory managers: for a task, does its memory fit now, later, or never; and the ledger of what
each network instance holds.

The scheduler asks one question of its memory manager (`fit`) and tells it what happened
(`reserve` when a task starts, `release_after` when it ends, `release_instance` when a network
instance is over). What a task reserves and returns depends on the granularity, one subclass
each, registered in `GRANULARITIES`:

* `network` (faithful, the original's Masa, §3.3): an init reserves the network's peak figure;
  everything is returned when the network finishes. Loads and execs reserve nothing. An init
  also fits whenever no network is active, as the original admitted it.
* `layer` (the paper's intent): an init reserves the input; a load reserves the layer's
  weights; an exec reserves the layer's outputs as it starts (not its load: loads run ahead
  of execs, and outputs reserved with them were held long before they existed); after an
  exec the layer's weights are returned (per-layer modes) and every buffer whose last reader
  ran. Whole-model tasks (bulk) reserve all weights, then the forward pass's peak
  activations. With `workspaces` (the engine under a real limit, `account_runtime`; a
  simulator told to) an exec also reserves its kernel's workspace (`LayerInfo.
  workspace_bytes`: im2col bands, padded images), returned when it ends ("x:<layer>"), so
  workspaces are counted exactly while their execs run.

A new granularity is a subclass with a `granularity` name and a `figures` method (and, if its
admission differs, `fit`), added to `GRANULARITIES`.

Deadlock avoidance (layer granularity). Why deadlocks arose: a task was admitted when its
bytes fitted what was free, so memory went to whichever ready task the policy put first and
fitted: prefetched loads of later layers, inits of new instances, activations held by networks
partway through. Nothing kept what an admitted network needs for its *next* step.
Instrumented (masa, all ten networks, 512M, rpi4-sd, Poisson at rho ~0.67, 568 forced): at the
first forced admission nine ObjectNet instances (VGG-19) each held fc7 and fc8 (80 MiB,
prefetched because fc6 did not fit) and all waited for fc6 (392 MiB); 476 MiB of the 512
were held, nothing ran, no ready task fitted: each held what another needed (one resource,
a banker's problem). Once over budget, small networks' tasks (AgeNet's execs included) were
forced too, behind them.

The rule: a task is admitted only if the state after it is *safe* (Dijkstra's banker's
algorithm, one resource). A *unit* is an active network instance or, when instances' tasks
wait on each other's (DeepEye's networks of one arrival), their group (sched/avoidance.py).
A unit's *path* is its tasks in one topological order (the smallest position first: init,
load 0, exec 0, load 1, ...); its *frontier* f is how many of the path's first tasks have
started. Per path position k, worked out once per template (per arrival for a group):
`held[k]`, what the unit holds once its first k tasks ran (reserved less returned), and
`need[k]`, the most it must reserve beyond that to run the rest alone, one task at a time in
path order (a task's reservation counts while it runs, its return after). The state is safe
when the units can be ordered so that each one's `need[f] - r` fits what is free plus what
the units before it hold (`held[f] + r`; r: what its running tasks will return); sorting by
need decides it.

Invariant: every admission keeps the state safe, as long as only guarded units are active
(a unit is guarded when its path's peak, `need[0]`, fits the capacity). Hence, when nothing
runs, the first unit of the safe order can take its frontier task: its dependencies all ran
(they come before it on the path), its bytes fit (at most `need[f]`), and the same order
stays safe after it (its need falls by what it took, the others' are unchanged; tasks run
ahead of the frontier are loads, which only reserve). So the progress rule never forces:
when every network (DeepEye: every request) can run alone within the budget, the ledger
stays within capacity at every step, in every mode and policy (tests/test_deadlock.py).
"Every single task fits" is not enough: bulk holds all weights during its exec, and a
network's held activations add to its next load. A failed instance ends its group's
guarding. If ever no safe task exists while nothing runs (units not guarded), the progress
rule first takes a task that fits by bytes (`Scheduler.unsafe_events`), then forces. The
network granularity (the original's, faithful) is not guarded: its loads and execs reserve
nothing, so an admitted instance never waits for memory, and its init rule stays as it was.

`need[f]` counts again what loads started ahead of the frontier (prefetched) already hold:
the check tries it first and, only if it fails, each unit's exact need without them
(`avoidance.exact_need`, a walk of the rest of its path); without that, a lone network's
prefetch was cut (execprio-inter's mean response +38% on the run above).

Cost: `total_need` bounds what all units still need (each unit's largest need ahead of its
frontier, which only falls); a task that leaves that much free, or reserves nothing, is safe
at once. Frontiers are brought up to date, the bound with them, and the units sorted only
when that does not decide (the simulator's scale benchmark: ~1.1x main's CPU time).

Bytes are held per ledger key ("w:<layer>" for weights, "a:<buffer>" for activations,
"x:<layer>" for an exec's workspace, "network", "w:*", "a:*", "x:*") in `instance.held`,
so that they go back piece by piece. Without a ledger
to write (`MemoryBudget(record=False)`, long simulations) a template's instances may be `lean`:
what each task's end returns is then known in advance (`Plan.freed`, see `known_releases`), and
the manager only adds and subtracts numbers.

Kept weights (`keep_weights`, sched/cache.py): an execution's end that frees weights keeps them
as evictable bytes (`_keep`) and a load of kept weights takes them over (`_take`, a hit). The
ledger's `used_bytes`, which admission and the avoidance check read, excludes kept bytes, so
every answer above is what it would be without them; they are evicted before held plus kept
bytes pass the capacity. Instances are then never lean (their holds are tracked by key).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from edgecaffe.errors import ConfigError
from edgecaffe.sched.avoidance import Path, link_groups, safe_order, template_path
from edgecaffe.sched.budget import MemoryBudget
from edgecaffe.sched.cache import WeightCache, keep_dropped
from edgecaffe.sched.graph import Kind, NetworkInstance, State, Task

if TYPE_CHECKING:
    from edgecaffe.sched.info import NetworkInfo
    from edgecaffe.sched.planner import Template
    from edgecaffe.sched.plans import Plan

#: (bytes reserved at start, ((ledger key, bytes) they are held under), keys returned at end)
Figures = tuple[int, tuple[tuple[str, int], ...], tuple[str, ...]]
#: Kept weights (sched/cache.py): (ledger key, bytes, whether the task's network holds them
#: under that key on the ledger; False at the network granularity).
Kept = tuple[str, int, bool]


class Fit(Enum):
    """A memory manager's answer for a task."""

    NOW = "now"        # within what is free now (or the granularity's own rule admits it)
    LATER = "later"    # within capacity, once other tasks return memory
    NEVER = "never"    # larger than the whole capacity: only the progress rule can start it


NOW, LATER, NEVER = Fit.NOW, Fit.LATER, Fit.NEVER
#: What returning a ledger key's bytes is called in the ledger, by the key's first letter.
_VERBS = {"w": "free", "a": "drop", "x": "end workspace of"}
RUNNING = State.RUNNING


class MemoryManager:
    """Base class: the ledger arithmetic shared by every granularity."""

    granularity: ClassVar[str] = ""
    #: Admit only tasks that leave the state safe (deadlock avoidance, module docstring).
    guarded: ClassVar[bool] = False

    def __init__(self, budget: MemoryBudget, per_layer: bool = True,
                 workspaces: bool = False, keep_weights: bool = False) -> None:
        self.budget = budget
        #: Per-layer modes return a layer's weights right after its exec.
        self.per_layer = per_layer
        #: Execs also reserve their kernel's workspace while they run (`LayerInfo.
        #: workspace_bytes`; the engine under a real limit, and a simulator told to).
        self.workspaces = workspaces
        #: Freed weights kept while the budget has room (sched/cache.py), or None.
        self.cache = WeightCache(budget) if keep_weights else None
        #: Network instances whose init has started and that are not over yet.
        self.active: set[NetworkInstance] = set()
        self._figures: dict[tuple, tuple] = {}
        #: Guarded active units (instances, groups) and their paths; the sum of their
        #: `ahead[frontier]` (a bound of what they all still need; frontiers lag).
        self._paths: dict[Any, Path] = {}
        self.total_need = 0

    # -- what a task needs -----------------------------------------------------------------------

    def figures(self, info: NetworkInfo, kind: Kind, layer: str | None,
                whole_model: bool) -> Figures:
        """What a task of `kind` on `layer` (None for an init; the first layer of a whole-model
        task) of network `info` reserves, holds and returns, under this granularity."""
        raise NotImplementedError

    def figures_of(self, task: Task) -> Figures:
        """`figures` for `task`, worked out once per network, kind and layer."""
        info = task.instance.info
        spec = task.spec
        layer = spec.layers[0] if spec.layers else None
        key = (id(info), spec.kind, layer, spec.whole_model)
        cached = self._figures.get(key)
        if cached is None:
            # The info is kept with its figures so that its id stays unique while cached.
            cached = self._figures[key] = (
                *self.figures(info, spec.kind, layer, spec.whole_model), info)
        return cached[:3]

    def kept_figures(self, task: Task) -> tuple[Kept | None, Kept | None]:
        """With kept weights on: (what a hit of this load takes, what this execution's end
        keeps), each None when not a weight-bearing load / an execution that frees weights.
        The key is the one the granularity holds the weights under at the layer granularity
        ("w:<layer>", "w:*" for a whole model)."""
        spec = task.spec
        info = task.instance.info
        if spec.kind == Kind.INIT or (not spec.whole_model and len(spec.layers) != 1):
            return None, None
        if spec.whole_model:
            key, nbytes = "w:*", info.weight_bytes
        else:
            key, nbytes = f"w:{spec.layers[0]}", info.layer(spec.layers[0]).weight_bytes
        if nbytes <= 0 or (spec.kind == Kind.EXEC and not spec.whole_model
                           and not self.per_layer):
            return None, None
        layer = spec.layers[0]
        moved = key in dict(self.figures(info, Kind.LOAD, layer, spec.whole_model)[1])
        figure = (key, nbytes, moved)
        return (figure, None) if spec.kind == Kind.LOAD else (None, figure)

    def fit(self, plan: Plan) -> Fit:
        """Whether a task with this plan may start now as far as memory goes. By its bytes:
        NOW within what is free, LATER within the capacity, NEVER more than all of it; a
        granularity may add its own rule (see `NetworkMemory`)."""
        nbytes = plan.nbytes
        budget = self.budget
        if nbytes <= budget.capacity_bytes - budget.used_bytes or nbytes <= 0:
            return NOW
        return LATER if nbytes <= budget.capacity_bytes else NEVER

    def fit_bytes(self, nbytes: int) -> Fit:
        """`fit` by the bytes alone, whatever the granularity's own rule says."""
        return MemoryManager.fit(self, _Need(nbytes))

    # -- what happens -----------------------------------------------------------------------------

    def reserve(self, task: Task, instance: NetworkInstance, now: float) -> bool:
        """Reserve what `task` needs as it starts; returns whether that put the ledger over
        capacity (a forced admission, recorded as such). A load of kept weights is a hit
        (`task.cached`): they change hands rather than being reserved anew."""
        plan = task.plan
        if plan.init:
            self.active.add(instance)
        nbytes = plan.nbytes
        budget = self.budget
        taken = 0
        if plan.hit is not None:
            taken = self._take(task, instance, now)
        if nbytes <= 0:
            return False
        forced = nbytes > budget.capacity_bytes - budget.used_bytes
        reason = f"{task.label} of {instance.name}" if budget.record else ""
        if taken and budget.record:
            reason += " (kept weights: a hit)"
        if budget.cached_bytes:  # kept weights make room first (the ledger never passes)
            self.cache.make_room(now, nbytes - taken)
        budget.reserve(nbytes, now, reason, task.id, instance.id, forced, taken)
        if not instance.lean:  # a lean instance's ends return bytes known in advance
            held = instance.held
            for key, part in plan.holds:
                held[key] = held.get(key, 0) + part
        return forced

    def _take(self, task: Task, instance: NetworkInstance, now: float) -> int:
        """A load's hit, if its weights are kept: the bytes its reservation takes over from
        the cache (0 at the network granularity, where they leave the ledger instead)."""
        key, _, moved = task.plan.hit
        nbytes = self.cache.take(instance, key)
        if nbytes is None:
            return 0
        task.cached = True
        if moved:
            return nbytes
        budget = self.budget
        budget.cache(-nbytes, now, f"{task.label} of {instance.name} (kept weights: a hit)"
                     if budget.record else "", task.id, instance.id)
        return 0

    def release_after(self, task: Task, instance: NetworkInstance, now: float) -> None:
        """Return what `task`'s end frees: a layer's weights (or, with kept weights on, keep
        them), buffers whose last reader ran."""
        plan = task.plan
        budget = self.budget
        if instance.lean:
            if plan.freed:
                budget.release(plan.freed, now, "", task.id, instance.id)
            return
        held = instance.held
        if plan.keep is not None:
            self._keep(task, instance, now)
        for key in plan.releases:
            nbytes = held.pop(key, 0)
            if nbytes:
                reason = f"{_VERBS.get(key[0], 'drop')} {key[2:]}" if budget.record else ""
                budget.release(nbytes, now, reason, task.id, instance.id)

    def _keep(self, task: Task, instance: NetworkInstance, now: float) -> None:
        """An execution freed weights: keep them if no copy is kept already (and, at the
        network granularity, if they fit once older entries are evicted)."""
        key, nbytes, moved = task.plan.keep
        cache, budget = self.cache, self.budget
        reason = f"keep {key[2:]} of {instance.name}" if budget.record else ""
        if moved:
            held = instance.held.get(key, 0)
            if held and cache.keep(instance, key, held):
                del instance.held[key]
                budget.release(held, now, reason, task.id, instance.id, to_cache=True)
        elif (instance.name, key) not in cache and cache.make_room(now, nbytes) \
                and cache.keep(instance, key, nbytes):
            budget.cache(nbytes, now, reason, task.id, instance.id)

    def held_after_failure(self, instance: NetworkInstance, failing: Task | None) -> None:
        """A lean instance failed: work out what it holds from its tasks' states (what its
        started tasks reserved, less what the ends so far returned; the failing task's end
        returns nothing)."""
        if instance.lean:
            instance.held_bytes = sum(
                task.plan.nbytes - (task.plan.freed if task.state == State.DONE
                                    and task is not failing else 0)
                for task in instance.tasks if task.state in (State.RUNNING, State.DONE))

    def release_instance(self, instance: NetworkInstance, now: float) -> None:
        """The instance is over: return everything it still holds."""
        budget = self.budget
        reason = f"end of {instance.name}" if budget.record else ""
        if instance.held_bytes:
            budget.release(instance.held_bytes, now, reason, None, instance.id)
            instance.held_bytes = 0
        if instance.dropped and self.cache is not None:
            keep_dropped(self.cache, instance, now)
        held = instance.held
        for key in list(held):
            nbytes = held.pop(key, 0)
            if nbytes:
                budget.release(nbytes, now, reason, None, instance.id)
        self.active.discard(instance)
        if self._paths or instance.group is not None:
            self._end_of(instance)

    # -- deadlock avoidance -----------------------------------------------------------------------

    def plan_path(self, template: Template, plans: list[Plan]) -> None:
        """Give a template's plans their path (`Plan.path`, `Plan.step`) when it is guarded:
        this granularity avoids deadlocks, its graph is acyclic with the init its only root,
        and its path's peak fits the capacity. Call it once `known_releases` said yes."""
        if not self.guarded:
            return
        path = template_path(template, plans)
        if path is None or path.need[0] > self.budget.capacity_bytes:
            return
        for step, position in enumerate(path.order):
            plans[position].path = path
            plans[position].step = step

    def link(self, instances: list[NetworkInstance]) -> None:
        """Instances just added whose tasks wait on each other's (DeepEye) become groups, one
        unit each of the check (`avoidance.Group`)."""
        if self.guarded and any(instance.linked for instance in instances):
            link_groups(instances, self.budget.capacity_bytes)

    def started(self, task: Task, instance: NetworkInstance) -> None:
        """`task`, an init of a guarded template, has started: its instance (or, if it is its
        group's root, its group) becomes an active unit of the check. Frontiers are brought
        up to date only when the check needs them (`safe_order`)."""
        group = instance.group
        unit: Any = instance if group is None else group
        path = task.plan.path if group is None else group.path
        if path is None or unit in self._paths:
            return
        unit.frontier = 1
        self._paths[unit] = path
        self.total_need += path.ahead[1]

    def _end_of(self, instance: NetworkInstance) -> None:
        """The instance is over: its unit leaves the check once all of it is over (a failure
        ends a group's guarding: what its other instances hold is then unknown)."""
        group = instance.group
        unit: Any = instance if group is None else group
        if group is not None:
            group.remaining -= 1
            if group.remaining and not instance.failed:
                return
            group.path = None
        path = self._paths.pop(unit, None)
        if path is not None:
            self.total_need -= path.ahead[unit.frontier]

    def safe(self, task: Task, running: Iterable[Task]) -> bool:
        """Whether the state stays safe once `task` starts (`running`: the tasks running now).
        Only for a task that reserves bytes; see the module's docstring."""
        plan = task.plan
        budget = self.budget
        free = budget.capacity_bytes - budget.used_bytes - plan.nbytes
        path = plan.path
        added = 0
        if plan.init and path is not None:  # a new unit, unless a group already active
            group = task._instance().group
            if group is None:
                added = path.ahead[1]
            elif group.path is not None and group not in self._paths:
                added = group.path.ahead[1]
        if free >= self.total_need + added:
            return True  # every unit could run to its end at once
        # Bring the frontiers up to date (only here: tasks' states only move on), and the
        # bound with them.
        total = 0
        for unit, unit_path in self._paths.items():  # `advance`, inline (a hot loop)
            frontier, order, tasks = unit.frontier, unit_path.order, unit.tasks
            while frontier < len(order) and tasks[order[frontier]].state >= RUNNING:
                frontier += 1
            unit.frontier = frontier
            total += unit_path.ahead[frontier]
        self.total_need = total
        if free >= total + added:
            return True
        return safe_order(self._paths, task, running, free)

    # -- lean templates ---------------------------------------------------------------------------

    def known_releases(self, template: Template, plans: list[Plan]) -> bool:
        """Work out, per position of `template`, the bytes its end returns (`Plan.freed`), when
        that is known in advance; returns whether it is (the template may then be `lean`).

        It is known when every task that reserves under a key an end returns is one of that
        task's dependencies, direct or not (so it always ran before), no other task returns
        that key, and every task is a dependency of the last one (so what the instance holds
        at its end is known too). The modes' graphs all qualify."""
        freed = _known_releases(template, plans)
        for plan, nbytes in zip(plans, freed or (), strict=False):
            plan.freed = nbytes
        return freed is not None


class _Need:
    """Just bytes, where `fit` wants a plan."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class NetworkMemory(MemoryManager):
    """The original's network granularity: an init reserves the whole network's peak."""

    granularity = "network"

    def figures(self, info: NetworkInfo, kind: Kind, layer: str | None,
                whole_model: bool) -> Figures:
        if kind == Kind.INIT:
            return info.peak_bytes, (("network", info.peak_bytes),), ()
        return 0, (), ()

    def fit(self, plan: Plan) -> Fit:
        # The original Masa: an init may always start when no network is active.
        if plan.init and not self.active:
            return NOW
        return super().fit(plan)


class LayerMemory(MemoryManager):
    """Per-layer accounting: weights while loaded, activations while some layer will read them."""

    granularity = "layer"
    guarded = True

    def figures(self, info: NetworkInfo, kind: Kind, layer: str | None,
                whole_model: bool) -> Figures:
        if kind == Kind.INIT:
            return info.input_bytes, tuple((f"a:{b}", info.buffer_bytes[b])
                                           for b in info.inputs), ()
        if whole_model:
            # Bulk: everything goes when the network finishes (its exec is the last task).
            if kind == Kind.LOAD:
                return info.weight_bytes, (("w:*", info.weight_bytes),), ()
            activations = max(0, info.peak_activation_bytes - info.input_bytes)
            if not (self.workspaces and info.max_workspace_bytes):
                return activations, (("a:*", activations),), ()
            workspace = info.max_workspace_bytes
            return (activations + workspace, (("a:*", activations), ("x:*", workspace)),
                    ("x:*",))
        entry = info.layer(layer)
        if kind == Kind.LOAD:
            return entry.weight_bytes, ((f"w:{entry.name}", entry.weight_bytes),), ()
        # An exec reserves its outputs as it starts (not at its load: loads run ahead, and
        # outputs reserved there were held long before they existed) and, when counted, its
        # kernel's workspace, which is gone when it ends.
        holds = tuple((f"a:{owner}", info.buffer_bytes[owner]) for owner in entry.writes)
        releases = (f"w:{entry.name}",) if self.per_layer else ()
        releases += tuple(f"a:{owner}" for owner in info.last_reads[entry.name])
        workspace = entry.workspace_bytes if self.workspaces else 0
        if workspace:
            holds += ((f"x:{entry.name}", workspace),)
            releases += (f"x:{entry.name}",)
        return entry.output_bytes + workspace, holds, releases


GRANULARITIES: dict[str, type[MemoryManager]] = {
    cls.granularity: cls for cls in (LayerMemory, NetworkMemory)}


def memory_manager(granularity: str, budget: MemoryBudget, per_layer: bool = True,
                   workspaces: bool = False, keep_weights: bool = False) -> MemoryManager:
    """The memory manager of `granularity` over `budget` (`workspaces`: execs reserve their
    kernels' workspaces; `keep_weights`: sched/cache.py).

    Raises `ConfigError` naming the known granularities."""
    try:
        cls = GRANULARITIES[granularity]
    except (KeyError, TypeError):
        raise ConfigError(f"granularity {granularity!r}: choose from "
                         f"{', '.join(GRANULARITIES)}") from None
    return cls(budget, per_layer, workspaces, keep_weights)


def _known_releases(template: Template, plans: list[Plan]) -> list[int] | None:
    """Bytes each position's end returns, when known in advance (see `known_releases`)."""
    specs = template.specs
    last = template.marks.get("last")
    # Ancestors of each position, as bit sets, in an order where dependencies come first.
    ancestors = [0] * len(specs)
    waiting = [len(spec.deps) for spec in specs]
    order = [spec.index for spec in specs if not spec.deps]
    for index in order:
        for dependent in specs[index].dependents:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                order.append(dependent)
    if len(order) < len(specs):
        return None  # a cycle: nothing runs in it anyway
    for index in order:
        for dep in specs[index].deps:
            ancestors[index] |= ancestors[dep] | 1 << dep
    if last is None or ancestors[last] | 1 << last != (1 << len(specs)) - 1:
        return None  # a task may run after the last one
    holders: dict[str, list[tuple[int, int]]] = {}
    for position, plan in enumerate(plans):
        for key, nbytes in plan.holds:
            holders.setdefault(key, []).append((position, nbytes))
    freed = [0] * len(plans)
    returned: set[str] = set()
    for position, plan in enumerate(plans):
        for key in plan.releases:
            if key in returned:
                return None  # two tasks return it: what the second finds depends on the run
            returned.add(key)
            for holder, nbytes in holders.get(key, ()):
                if holder != position and not ancestors[position] >> holder & 1:
                    return None  # it may reserve after the return, or not before
                freed[position] += nbytes
    return freed
