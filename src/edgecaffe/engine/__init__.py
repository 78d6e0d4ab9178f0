"""The real engine (threads) and the trace it records."""

from edgecaffe.engine.engine import Engine, EngineClosedError, RequestError, resolve_packages
from edgecaffe.engine.trace import RequestRecord, TaskRecord, Trace

__all__ = ["Engine", "EngineClosedError", "RequestError", "RequestRecord", "TaskRecord", "Trace",
           "resolve_packages"]
