"""Requests in flight: the bookkeeping the real engine and the simulator share.

A request is planned into network instances and handed to the scheduler; when the scheduler
reports its last instance over, the request is closed in the trace (completed or failed).
Clocks, threads and futures stay with the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecaffe.sched.graph import NetworkInstance
from edgecaffe.sched.info import NetworkInfo
from edgecaffe.sched.planner import Planner
from edgecaffe.sched.scheduler import Scheduler, Step
from edgecaffe.sched.trace import RequestRecord, Trace


def result_keys(networks: Sequence[str]) -> list[str]:
    """Keys of a request's result: the network names, `AgeNet#2` for a second AgeNet, ..."""
    seen: dict[str, int] = {}
    keys = []
    for name in networks:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


@dataclass(eq=False)
class Request:
    record: RequestRecord
    instances: list[NetworkInstance]
    remaining: int
    #: What the caller attaches (the engine's Future).
    handle: Any = None
    failed: list[NetworkInstance] = field(default_factory=list)


class RequestBook:
    """Plans submitted requests onto one scheduler and closes them as their networks end."""

    def __init__(self, planner: Planner, scheduler: Scheduler, trace: Trace,
                 record_tasks: bool = True) -> None:
        self.planner = planner
        self.scheduler = scheduler
        self.trace = trace
        #: Keep every task's span in the trace (off for very long simulations).
        self.record_tasks = record_tasks
        self.open: dict[int, Request] = {}
        self._next_id = 0

    def submit(self, networks: Sequence[str], infos: Sequence[NetworkInfo], now: float,
               data: Any = None, handle: Any = None) -> Request:
        """Plan one request, register its tasks with the scheduler; returns it (still open).

        If registering raises (a user policy, an interrupt), the request is withdrawn: its
        networks fail, it leaves the book, its record says "rejected", and the exception goes
        on to the caller."""
        request_id = self._next_id
        self._next_id += 1
        instances = self.planner.plan(request_id, infos)
        record = RequestRecord(request_id, tuple(networks), now)
        self.trace.requests[request_id] = record
        request = Request(record, instances, len(instances), handle)
        self.open[request_id] = request
        for key, instance in zip(result_keys(networks), instances, strict=True):
            instance.input = data
            instance.arrival = now
            instance.result_key = key
        try:
            self.scheduler.add(instances, now)
        except BaseException as error:
            self._withdraw(request, f"not accepted: {type(error).__name__}: {error}", now)
            raise
        return request

    def _withdraw(self, request: Request, reason: str, now: float) -> None:
        del self.open[request.record.request_id]
        for instance in request.instances:
            self.scheduler.fail(instance, reason, now)
        request.record.status = "rejected"
        request.record.error = reason

    def settle(self, step: Step) -> list[Request]:
        """Account for the instances `step` finished; returns the requests now closed, with
        their record's completion time and status set (completed or failed)."""
        closed = []
        for instance in step.finished:
            if self.record_tasks:
                self.trace.record_instance(instance)
            else:
                self.trace.record_span(instance)
            request = self.open.get(instance.request_id)
            if request is None:
                continue
            if instance.failed:
                request.failed.append(instance)
            request.remaining -= 1
            if request.remaining:
                continue
            del self.open[instance.request_id]
            record = request.record
            record.completion_s = max((i.last.end or 0.0) for i in request.instances)
            if request.failed:
                record.status = "failed"
                record.error = "; ".join(f"{i.name}: {i.failed}" for i in request.failed)
            else:
                record.status = "completed"
            closed.append(request)
        return closed
