"""Policies against the optimum: each mode and policy simulated on the very integer durations
the exact solver optimised, its mean response per network, and its gap to the optimum."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgecaffe.errors import UsageError
from edgecaffe.optimal.check import check_schedule
from edgecaffe.optimal.instance import DurationsMs, Instance, Key, Request, to_units
from edgecaffe.sched import MODES, Kind, Task
from edgecaffe.sched.policies import POLICIES

#: What `edgecaffe optimal` compares by default: every mode with its own policy, and the
#: partial graph under the other policies.
DEFAULT_CANDIDATES = ("masa", "partial", "execprio", "partial/sjf", "partial/hrrn", "linear",
                      "bulk", "multi-bulk", "deepeye", "deepeye-frugal")


@dataclass
class PolicyResult:
    label: str
    mean_response_ms: float
    #: mean response / optimum - 1 (against the solver's bound when not proven optimal).
    gap: float
    #: Reservations the progress rule admitted over the budget (the optimum never needs any).
    forced: int
    #: The independent checker's verdict on the policy's schedule; None where its tasks are
    #: not the partial graph's (whole-model tasks of bulk modes).
    problems: list[str] | None


def simulate_candidates(
    requests: Sequence[Request],
    instance: Instance,
    optimum_ms: float,
    durations_ms: DurationsMs,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
) -> list[PolicyResult]:
    """Simulate each candidate (`mode` or `mode/policy`) on the instance's integer durations."""
    from edgecaffe.experiment.results import summarize
    from edgecaffe.sim import Simulator
    from edgecaffe.workload import Arrival

    unit = instance.unit_ms
    infos = {info.name: info for _, networks in requests for info in networks}
    arrivals, previous = [], 0.0
    for index, (at_ms, networks) in enumerate(requests):
        arrivals.append(Arrival(index, at_ms - previous, tuple(info.name for info in networks)))
        previous = at_ms

    def units(task: Task) -> int:
        info = task.instance.info
        if task.kind == Kind.INIT:
            return to_units(durations_ms(info, "init", None), unit)
        kind = "load" if task.kind == Kind.LOAD else "exec"
        return sum(to_units(durations_ms(info, kind, name), unit) for name in task.layers
                   if kind == "exec" or info.layer(name).weighted)

    results = []
    for label in candidates:
        mode, _, policy = label.partition("/")
        if mode not in MODES:
            raise UsageError(f"candidate {label!r}: unknown mode {mode!r}; choose from "
                             f"{', '.join(MODES)}")
        if policy and policy not in POLICIES:
            raise UsageError(f"candidate {label!r}: unknown policy {policy!r}; choose from "
                             f"{', '.join(POLICIES)}")
        simulator = Simulator(infos, mode=mode, policy=policy or None,
                              budget=instance.capacity_bytes, workers=instance.workers,
                              task_ms=lambda task: units(task) * unit)
        trace = simulator.run(arrivals, closed_loop=False)
        mean = summarize(trace)["mean_network_response_ms"]
        problems = None
        if not any(record.layers == "*" for record in trace.tasks):
            table: dict[Key, tuple[float, float, int]] = {}
            for record in trace.tasks:
                kind = record.kind
                key = (record.instance_id, kind, record.layers or None)
                table[key] = (round(record.start_s * 1e3 / unit, 6),
                              round(record.end_s * 1e3 / unit, 6), record.worker)
            problems = check_schedule(requests, instance.capacity_bytes, simulator.workers,
                                      instance.durations, table, unit)
        results.append(PolicyResult(label, mean, mean / optimum_ms - 1 if optimum_ms else 0.0,
                                    simulator.scheduler.forced_events, problems))
    return results
