"""The scheduler core shared by the real engine and the simulator: task graphs per mode, the
memory budget, policies. Plain objects: no threads, no clock of their own."""

from edgecaffe.sched.budget import LedgerEvent, MemoryBudget, parse_bytes
from edgecaffe.sched.graph import Kind, NetworkInstance, State, Task
from edgecaffe.sched.info import LayerInfo, NetworkInfo
from edgecaffe.sched.planner import MODES, Mode, Planner
from edgecaffe.sched.policies import POLICIES, Policy, get_policy
from edgecaffe.sched.scheduler import GRANULARITIES, BudgetError, Scheduler, Step

__all__ = [
    "GRANULARITIES", "MODES", "POLICIES", "BudgetError", "Kind", "LayerInfo", "LedgerEvent",
    "MemoryBudget", "Mode", "NetworkInfo", "NetworkInstance", "Planner", "Policy", "Scheduler",
    "State", "Step", "Task", "get_policy", "parse_bytes",
]
