"""The exact schedule of a small instance with OR-Tools CP-SAT: minimum mean response per network
instance under the memory budget, the dependencies and the worker count.

A yardstick for the policies, not a policy: CP-SAT proves optimality for about 3 networks and
40 tasks in seconds to minutes; beyond that it returns the best schedule found ("feasible").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from edgecaffe.optimal.instance import Instance, InstanceError, Key

MISSING_ORTOOLS = "the optimal solver needs OR-Tools: pip install 'edgecaffe[optimal]'"


#: Cumulative propagators CP-SAT leaves off by default. They make the proofs: on a 38-task
#: instance (TinyAlex + TinyResidual, 2 workers) 0.04 s with them, unproven after 20 s without.
#: The stronger LP relaxation proved 12 of 12 40-task instances at a 0.1-ms unit within 48 s
#: (10 of 12 within 60 s without it).
DEFAULT_PARAMS: dict[str, Any] = {
    "use_overload_checker_in_cumulative": True,
    "use_timetable_edge_finding_in_cumulative": True,
    "use_hard_precedences_in_cumulative": True,
    "linearization_level": 2,
}


class SolveError(RuntimeError):
    """No schedule found within the time limit (the instance may still be feasible)."""


@dataclass
class Schedule:
    starts: dict[Key, int]
    ends: dict[Key, int]
    workers: dict[Key, int]
    #: "optimal" (proven) or "feasible" (the time limit stopped the proof).
    status: str
    #: Sum over network instances of (end of its last task - arrival), in units: what CP-SAT
    #: minimised, exact for the integer instance.
    total_response_units: int
    #: The mean response per network instance, in ms.
    objective_ms: float
    #: CP-SAT's proven lower bound on the mean response, in ms (= objective_ms when optimal).
    lower_bound_ms: float
    #: Per network instance, from its arrival (rounded up to a unit) to its last task's end.
    responses_ms: list[float]
    solve_time_s: float
    unit_ms: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        return self.status == "optimal"

    def table(self) -> dict[Key, tuple[int, int, int]]:
        """key -> (start, end, worker): the format `check_schedule` takes."""
        return {key: (self.starts[key], self.ends[key], self.workers[key]) for key in self.starts}


def solve(instance: Instance, time_limit_s: float = 60.0, workers_threads: int = 1,
          params: Mapping[str, Any] | None = None) -> Schedule:
    """Minimise the mean response with CP-SAT. Raises ValueError when no schedule can fit the
    budget, SolveError when the time limit passes before any schedule is found. `params` are
    extra CP-SAT parameters (SatParameters field -> value), over DEFAULT_PARAMS."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as error:
        raise ImportError(MISSING_ORTOOLS) from error

    model, start, step = _build_model(cp_model, instance)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = max(1, int(workers_threads))
    for name, value in {**DEFAULT_PARAMS, **(params or {})}.items():
        setattr(solver.parameters, name, value)
    began = time.perf_counter()
    status = solver.solve(model)
    elapsed = time.perf_counter() - began
    if status == cp_model.INFEASIBLE:
        raise InstanceError(f"no schedule of the {len(instance.tasks)} tasks fits the "
                         f"{instance.capacity_bytes}-byte budget")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolveError(f"CP-SAT found no schedule in {time_limit_s} s "
                         f"(status {solver.status_name(status)}); raise time_limit_s")
    return _schedule(instance, solver, start, step, elapsed,
                     "optimal" if status == cp_model.OPTIMAL else "feasible")


def _build_model(cp_model, instance: Instance) -> tuple[Any, dict[Key, Any], int]:
    """The CP-SAT model (start variables, dependencies, workers, memory, objective), its
    start variable per task, and the time step (ms units) the model counts in."""
    tasks = instance.tasks
    # Work in steps of the largest common divisor of every duration and arrival (exact: some
    # optimal schedule has every start on that grid) - CP-SAT is much slower on a finer grid.
    # Not with 0-length tasks: what they hold is stretched by one unit (see _add_memory).
    step = reduce(math.gcd, [task.duration or 1 for task in tasks]
                  + [task.release for task in tasks])
    durations = {task.key: task.duration // step for task in tasks}
    # Some optimal schedule starts each task at an arrival or when something ends (a task, or a
    # zero-length item stretched by one step): so within the last arrival plus every duration.
    horizon = max(task.release for task in tasks) // step + sum(max(1, d)
                                                                for d in durations.values())
    model = cp_model.CpModel()
    start = {task.key: model.new_int_var(task.release // step, horizon - durations[task.key],
                                         f"s{task.key}")
             for task in tasks}
    interval = {key: model.new_fixed_size_interval_var(start[key], durations[key], f"i{key}")
                for key in start}

    def end(key: Key):
        return start[key] + durations[key]

    for task in tasks:
        for dep in task.deps:
            model.add(start[task.key] >= end(dep))
    # Workers: zero-length tasks take no worker time.
    busy = [interval[key] for key in start if durations[key] > 0]
    if instance.workers == 1:
        model.add_no_overlap(busy)
    elif instance.workers < len(busy):
        model.add_cumulative(busy, [1] * len(busy), instance.workers)
    _add_memory(model, instance, start, end, durations, horizon)
    model.minimize(sum(end(network.last) - network.release // step
                       for network in instance.networks))
    return model, start, step


def _schedule(instance: Instance, solver, start: dict[Key, Any], step: int, elapsed_s: float,
              status: str) -> Schedule:
    """The solver's answer as a Schedule (times in the instance's units)."""
    starts = {key: solver.value(var) * step for key, var in start.items()}
    ends = {task.key: starts[task.key] + task.duration for task in instance.tasks}
    count = len(instance.networks)
    unit = instance.unit_ms
    total = round(solver.objective_value) * step
    bound = min(total, math.ceil(solver.best_objective_bound - 1e-6) * step)
    return Schedule(
        starts=starts, ends=ends, workers=assign_workers(starts, ends, instance.workers),
        status=status, total_response_units=total, objective_ms=total * unit / count,
        lower_bound_ms=bound * unit / count,
        responses_ms=[(ends[network.last] - network.release) * unit
                      for network in instance.networks],
        solve_time_s=elapsed_s, unit_ms=unit,
        stats={"branches": solver.num_branches, "conflicts": solver.num_conflicts,
               "wall_time_s": solver.wall_time, "step_units": step})


def _add_memory(model, instance: Instance, start: dict, end, durations: dict[Key, int],
                horizon: int) -> None:
    """One cumulative over the items: an item occupies [start of its reserving task, end of its
    releasing task). An item that may be zero-length (both tasks last 0 units) is stretched to
    one unit, which in integer time counts it exactly with what is held at that instant."""
    items = [item for item in instance.items if item.bytes > 0]
    if sum(item.bytes for item in items) <= instance.capacity_bytes:
        return
    scale = reduce(math.gcd, (item.bytes for item in items), instance.capacity_bytes)
    intervals, demands = [], []
    for number, item in enumerate(items):
        begin = start[item.allocated_by]
        finish = end(item.released_by)
        if max(durations[item.allocated_by], durations[item.released_by]) == 0:
            stretched = model.new_int_var(0, horizon + 1, f"m{number}_end")
            model.add_max_equality(stretched, [finish, begin + 1])
            finish = stretched
        size = model.new_int_var(0, horizon + 1, f"m{number}_size")
        intervals.append(model.new_interval_var(begin, size, finish, f"m{number}"))
        demands.append(item.bytes // scale)
    model.add_cumulative(intervals, demands, instance.capacity_bytes // scale)


def assign_workers(starts: dict[Key, int], ends: dict[Key, int], workers: int) -> dict[Key, int]:
    """Colour the intervals greedily by start: at most `workers` overlap, so a worker is always
    free. Zero-length tasks take no worker time; they get a free worker if any, else worker 0."""
    free_at = [-math.inf] * workers
    assigned: dict[Key, int] = {}
    order = sorted(starts, key=lambda key: (starts[key], ends[key] > starts[key]))
    for key in order:
        free = [w for w in range(workers) if free_at[w] <= starts[key]]
        if ends[key] == starts[key]:
            assigned[key] = free[0] if free else 0
            continue
        if not free:
            raise AssertionError(f"more than {workers} tasks overlap at {starts[key]}")
        assigned[key] = free[0]
        free_at[free[0]] = ends[key]
    return assigned
