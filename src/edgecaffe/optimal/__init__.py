"""Exact schedules of small instances (OR-Tools CP-SAT): the minimum mean response per network
instance under the memory budget, as a yardstick for the scheduling policies; plus an
independent feasibility checker for any schedule of the partial mode's tasks."""

from edgecaffe.optimal.check import check_schedule
from edgecaffe.optimal.instance import (
    Instance,
    MemoryItem,
    OptNetwork,
    OptTask,
    build_instance,
    profiled_ms,
)
from edgecaffe.optimal.solve import MISSING_ORTOOLS, Schedule, SolveError, assign_workers, solve

__all__ = [
    "MISSING_ORTOOLS", "Instance", "MemoryItem", "OptNetwork", "OptTask", "Schedule",
    "SolveError", "assign_workers", "build_instance", "check_schedule", "profiled_ms", "solve",
]
