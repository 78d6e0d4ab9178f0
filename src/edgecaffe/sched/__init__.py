"""The scheduler core shared by the real engine and the simulator: task graphs per mode
(planner), policies, memory managers over a budget, the scheduler, requests and the trace. Plain
objects: no threads, no clock of their own, no model formats or kernels (`Core` builds them
all; see docs/architecture.md)."""

from edgecaffe.sched.budget import LedgerEvent, MemoryBudget, parse_bytes
from edgecaffe.sched.core import Core
from edgecaffe.sched.graph import Kind, NetworkInstance, State, Task
from edgecaffe.sched.info import LayerInfo, NetworkInfo
from edgecaffe.sched.memory import (
    GRANULARITIES,
    Fit,
    LayerMemory,
    MemoryManager,
    NetworkMemory,
    memory_manager,
)
from edgecaffe.sched.planner import MODES, Mode, Planner
from edgecaffe.sched.policies import POLICIES, Policy, get_policy
from edgecaffe.sched.requests import CONTEXTS, Gate, Request, RequestBook, result_keys
from edgecaffe.sched.scheduler import BudgetError, Scheduler, Step
from edgecaffe.sched.trace import GateRecord, RequestRecord, TaskRecord, Trace

__all__ = [
    "CONTEXTS", "GRANULARITIES", "MODES", "POLICIES", "BudgetError", "Core", "Fit", "Gate",
    "GateRecord", "Kind", "LayerInfo", "LayerMemory", "LedgerEvent", "MemoryBudget",
    "MemoryManager", "Mode", "NetworkInfo",
    "NetworkInstance", "NetworkMemory", "Planner", "Policy", "Request", "RequestBook",
    "RequestRecord", "Scheduler", "State", "Step", "Task", "TaskRecord", "Trace", "get_policy",
    "memory_manager", "parse_bytes", "result_keys",
]
