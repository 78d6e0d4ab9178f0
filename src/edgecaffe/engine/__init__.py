"""The real engine: worker threads and real kernels driving the scheduler core (`sched.Core`).
The trace it records is the core's (`sched.trace`), re-exported here for convenience."""

from edgecaffe.engine.engine import (
    Engine,
    EngineClosedError,
    EngineError,
    TaskRunner,
    resolve_packages,
)
from edgecaffe.engine.result import NetworkResult, RequestError, RequestResult
from edgecaffe.sched.trace import RequestRecord, TaskRecord, Trace

__all__ = ["Engine", "EngineClosedError", "EngineError", "NetworkResult", "RequestError",
           "RequestRecord", "RequestResult", "TaskRecord", "TaskRunner", "Trace",
           "resolve_packages"]
