"""The one record of a run: task spans, request spans, the memory ledger. Every output (CSV,
report, plot, simulator comparison) is derived from it; the real engine and the simulator fill
the same structure."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from edgecaffe.sched.budget import LedgerEvent
from edgecaffe.sched.graph import NetworkInstance, State


@dataclass(frozen=True)
class TaskRecord:
    task_id: int
    request_id: int
    instance_id: int
    network: str
    kind: str
    layers: str
    pool: int
    worker: int | None
    created_s: float
    ready_s: float | None
    start_s: float | None
    end_s: float | None
    state: str
    reserve_bytes: int
    forced: bool
    depends_on: tuple[int, ...]
    error: str | None = None
    #: A load of kept weights (a hit: nothing read; sched/cache.py).
    cached: bool = False


@dataclass
class RequestRecord:
    request_id: int
    networks: tuple[str, ...]
    arrival_s: float
    completion_s: float | None = None
    status: str = "pending"  # pending | completed | failed | cancelled | rejected
    error: str | None = None
    #: Per network: (start of its first task, end of its last task), seconds.
    network_spans: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def response_s(self) -> float | None:
        return None if self.completion_s is None else self.completion_s - self.arrival_s


@dataclass
class GateRecord:
    """A gated network of one request (sched/requests.py): its parent, the context policy, and
    how its condition resolved: `count` inputs (0: the condition failed; None: unresolved), at
    `resolved_s`; `instances`, the network instances it ran (or started speculatively);
    `outcome`: pending | run | dropped (condition failed) | parent failed | error."""

    request_id: int
    network: str
    parent: str
    context: str
    count: int | None = None
    resolved_s: float | None = None
    instances: tuple[int, ...] = ()
    outcome: str = "pending"
    error: str | None = None


@dataclass
class Trace:
    tasks: list[TaskRecord] = field(default_factory=list)
    requests: dict[int, RequestRecord] = field(default_factory=dict)
    ledger: list[LedgerEvent] = field(default_factory=list)
    #: Gated networks, one record per request and gated network, in submission order.
    gates: list[GateRecord] = field(default_factory=list)
    capacity_bytes: int = 0
    #: Free-form facts about the run: mode, policy, granularity, workers, BLAS threads...
    info: dict[str, object] = field(default_factory=dict)

    def record_instance(self, instance: NetworkInstance) -> None:
        for task in instance.tasks:
            self.tasks.append(TaskRecord(
                task.id, instance.request_id, instance.id, instance.name, task.kind.name.lower(),
                "*" if task.whole_model else ",".join(task.layers), task.pool, task.worker,
                task.created, task.ready, task.start, task.end, State(task.state).name.lower(),
                task.reserve_bytes, task.forced, tuple(dep.id for dep in task.deps), task.error,
                task.cached,
            ))
        self.record_span(instance)

    def record_span(self, instance: NetworkInstance) -> None:
        """Only the network's span in its request (long simulations keep no task records). A
        gated instance whose condition failed has none: it is not one of the request's
        responses."""
        if instance.dropped:
            return
        starts = [t.start for t in instance.tasks if t.start is not None]
        request = self.requests[instance.request_id]
        key = instance.result_key or instance.name  # `AgeNet#2` for a second AgeNet
        request.network_spans[key] = (min(starts) if starts else None, instance.last.end)

    @property
    def forced_events(self) -> list[LedgerEvent]:
        """Reservations the progress rule admitted over the budget."""
        return [event for event in self.ledger if event.forced]

    def dispatch_latencies_s(self) -> list[float]:
        """For each task that ran after a dependency: its start minus its last dependency's end
        (or minus its creation, when it was created later: a chain into a new request)."""
        ends = {t.task_id: t.end_s for t in self.tasks}
        latencies = []
        for task in self.tasks:
            if task.start_s is None or not task.depends_on:
                continue
            dep_ends = [ends.get(dep) for dep in task.depends_on]
            if any(end is None for end in dep_ends):
                continue
            latencies.append(task.start_s - max(*dep_ends, task.created_s))
        return latencies

    def trim(self, keep_tasks: int, keep_ledger: int, keep_requests: int,
             open_requests: Container[int] = ()) -> None:
        """Forget all but the latest `keep_tasks` task records, `keep_ledger` ledger events and
        `keep_requests` closed request records (the records of `open_requests` stay): a
        service runs for days, its trace must not grow without bound. In place: the ledger
        list is the budget's own."""
        for records, keep in ((self.tasks, keep_tasks), (self.ledger, keep_ledger)):
            if len(records) > keep:
                del records[:len(records) - keep]
        closed = [key for key in self.requests if key not in open_requests]
        for key in closed[:max(0, len(closed) - keep_requests)]:
            del self.requests[key]
