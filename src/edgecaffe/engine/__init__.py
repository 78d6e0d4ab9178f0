"""The real engine: worker threads and real kernels driving the scheduler core (`sched.Core`).
The trace it records is the core's (`sched.trace`), re-exported here for convenience."""

from edgecaffe.engine.engine import (
    Engine,
    EngineClosedError,
    EngineError,
    RequestError,
    TaskRunner,
    resolve_packages,
)
from edgecaffe.sched.trace import RequestRecord, TaskRecord, Trace

__all__ = ["Engine", "EngineClosedError", "EngineError", "RequestError", "RequestRecord",
           "TaskRecord", "TaskRunner", "Trace", "resolve_packages"]
