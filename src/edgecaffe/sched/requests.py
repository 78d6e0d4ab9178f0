"""Requests in flight: the bookkeeping the real engine and the simulator share.

A request is planned into network instances and handed to the scheduler; when the scheduler
reports its last instance over, the request is closed in the trace (completed or failed).
Clocks, threads and futures stay with the caller.

Gated networks (the context of the journal version of Masa): a request may name networks that
run only on what another network of the request found (AgeNet and GenderNet per face FaceNet
detects). Each gate names its child network and its parent; when the parent ends, the gate
resolves to a count k of inputs (by the request's `condition`, or by the caller through
`RequestBook.resolve`): k = 0, the condition failed; k >= 1, the child runs as k network
instances, one per input (keys `AgeNet[0]`, `AgeNet[1]`, ...), each sized and timed as the
network itself (batch 1; weights are loaded per instance, as for any two instances). A failed or
dropped parent resolves its gates to 0. The context policy decides when a child's tasks exist:

* `aware`: none before the gate resolves; k instances planned then (nothing of a child whose
  condition fails is ever loaded, reserved or traced);
* `oblivious`: one instance per gate planned with the request, as if it will run: its init and
  loads run speculatively whenever the policy and the budget admit them, its executions wait for
  the gate (`Scheduler.open_gate`). Speculation only takes memory its own parent will not need
  (`Scheduler._spare`) and is never forced over the budget by the progress rule: else Masa,
  which loads the shorter network first, lets the small gated networks fill the budget while
  their parent waits for memory, and only forcing over the budget would end that. k = 0 drops
  it: tasks not started are skipped and what it reserved goes back to the ledger; k >= 1 gives
  it the first input and plans k - 1 more instances.
* `aware-idle`: context-aware, speculating only into budget that is otherwise idle: planned as
  `oblivious`, but a speculative task starts only when no task of an ungated or opened network
  is ready and its bytes fit together with everything the open ungated and opened instances
  have yet to reserve (`Scheduler(speculation="idle")`, sched/speculation.py). Dropped and
  used as `oblivious`'s. Chained modes (bulk, linear, execprio-inter) run networks one after
  another in submission order: a speculative instance would take a place in that line ahead
  of the networks submitted after it, so there `aware-idle` plans as `aware`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecaffe.errors import ConfigError
from edgecaffe.sched.graph import NetworkInstance
from edgecaffe.sched.info import NetworkInfo
from edgecaffe.sched.planner import Planner
from edgecaffe.sched.scheduler import Scheduler, Step
from edgecaffe.sched.trace import GateRecord, RequestRecord, Trace

CONTEXTS = ("aware", "oblivious", "aware-idle")
#: A request's condition: (child network, parent instance) -> the child's inputs (none: the
#: condition failed). Called when the parent ends; the engine passes the parent's outputs.
Condition = Callable[[str, NetworkInstance], Sequence[Any]]


def result_keys(networks: Sequence[str]) -> list[str]:
    """Keys of a request's result: the network names, `AgeNet#2` for a second AgeNet, ..."""
    seen: dict[str, int] = {}
    keys = []
    for name in networks:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


@dataclass(eq=False)
class Gate:
    """A gated network of one request: `child` runs on what its `parent` instance found."""

    child: str
    info: NetworkInfo
    parent: NetworkInstance
    record: GateRecord
    #: The speculative instance (None: context-aware, or dropped; see `CONTEXTS`).
    speculative: NetworkInstance | None = None

    @property
    def resolved(self) -> bool:
        return self.record.count is not None


@dataclass(eq=False)
class Request:
    record: RequestRecord
    instances: list[NetworkInstance]
    #: Instances not over, plus gates not resolved: the request closes at 0.
    remaining: int
    #: What the caller attaches (the engine's Future).
    handle: Any = None
    failed: list[NetworkInstance] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    #: The submitted input, and the function that resolves gates when their parent ends.
    data: Any = None
    condition: Condition | None = None
    #: Its place in the queue (`NetworkInstance.order`): its id, or an earlier request's.
    order: int = 0

    @property
    def errors(self) -> list[str]:
        """Why it failed: its failed networks and gates whose condition raised."""
        return [f"{i.result_key or i.name}: {i.failed}" for i in self.failed] + \
            [f"{g.child}: {g.record.error}" for g in self.gates if g.record.error]


class RequestBook:
    """Plans submitted requests onto one scheduler and closes them as their networks end.
    `context`: when gated networks are planned (`CONTEXTS`, see above)."""

    def __init__(self, planner: Planner, scheduler: Scheduler, trace: Trace,
                 record_tasks: bool = True, context: str = "aware") -> None:
        if context not in CONTEXTS:
            raise ConfigError(f"unknown context policy {context!r}; choose from "
                              f"{', '.join(CONTEXTS)}")
        self.planner = planner
        self.scheduler = scheduler
        self.trace = trace
        #: Keep every task's span in the trace (off for very long simulations).
        self.record_tasks = record_tasks
        self.context = context
        #: Whether gated networks are planned with their request (see `CONTEXTS`).
        self.speculates = context == "oblivious" or (
            context == "aware-idle" and not planner.mode.chained)
        self.open: dict[int, Request] = {}
        self._next_id = 0
        #: Requests whose gates `resolve` changed since the last `settle`.
        self._resolved: list[Request] = []

    def submit(self, networks: Sequence[str], infos: Sequence[NetworkInfo], now: float,
               data: Any = None, handle: Any = None,
               gated: Sequence[tuple[NetworkInfo, str]] = (),
               condition: Condition | None = None, order: int | None = None) -> Request:
        """Plan one request, register its tasks with the scheduler; returns it (still open).
        `gated`: (child network, parent's result key) pairs, checked by `Core.submit`;
        `condition` resolves them when their parent ends (None: the caller calls `resolve`).
        `order`: the id of an earlier request whose place in the queue this one takes (its
        tasks then rank with that request's, `Task.order`; default: its own id). Raises
        `ConfigError` for an order that is not the id of a request submitted before.

        If registering raises (a user policy, an interrupt), the request is withdrawn: its
        networks fail, it leaves the book, its record says "rejected", and the exception goes
        on to the caller."""
        request_id = self._next_id
        if order is None:
            order = request_id
        elif isinstance(order, bool) or not isinstance(order, int) or \
                not 0 <= order < request_id:
            raise ConfigError(f"order must be the id of an earlier request (0 to "
                              f"{request_id - 1}), got {order!r}")
        self._next_id += 1
        speculative = [info for info, _ in gated] if self.speculates else []
        # Planned apart: DeepEye links a request's networks, and a parent's executions must
        # not wait for its speculative children's loads.
        instances = self.planner.plan(request_id, infos)
        if speculative:
            instances += self.planner.plan(request_id, speculative)
        record = RequestRecord(request_id, tuple(networks), now)
        self.trace.requests[request_id] = record
        request = Request(record, instances, len(instances) + len(gated), handle, data=data,
                          condition=condition, order=order)
        for instance in instances:
            instance.order = order
        self.open[request_id] = request
        keys = result_keys(networks)
        for key, instance in zip(keys, instances, strict=False):
            instance.input = data
            instance.arrival = now
            instance.result_key = key
        by_key = dict(zip(keys, instances, strict=False)) if gated else {}
        for position, (info, parent) in enumerate(gated):
            gate = Gate(info.name, info, by_key[parent],
                        GateRecord(request_id, info.name, parent, self.context))
            request.gates.append(gate)
            self.trace.gates.append(gate.record)
            if speculative:
                instance = gate.speculative = instances[len(infos) + position]
                instance.arrival = now
                instance.result_key = f"{info.name}[0]"
                gate.record.instances = (instance.id,)
                instance.gated = gate.parent  # see Scheduler.open_gate and _spare
        try:
            self.scheduler.add(instances, now)
        except BaseException as error:
            self._withdraw(request, f"not accepted: {type(error).__name__}: {error}", now)
            raise
        return request

    def resolve(self, request: Request, child: str, inputs: Sequence[Any], now: float,
                outcome: str | None = None, error: str | None = None) -> Step:
        """Resolve `request`'s gate for `child` with its inputs (one network instance each;
        none: the condition failed, `outcome` says why). Returns what it changed: tasks now
        ready, instances now over (a dropped speculative one); settle the step as a
        `finish`'s. Raises `ConfigError` for a child that is not an unresolved gate."""
        gate = next((g for g in request.gates if g.child == child), None)
        if gate is None:
            raise ConfigError(f"request {request.record.request_id} has no gated network "
                              f"{child!r}")
        if gate.resolved:
            raise ConfigError(f"request {request.record.request_id}: the gate of {child!r} "
                              "is resolved already")
        inputs = list(inputs)
        record = gate.record
        record.count, record.resolved_s, record.error = len(inputs), now, error
        record.outcome = outcome or ("run" if inputs else "dropped")
        request.remaining -= 1
        self._resolved.append(request)  # `settle` closes it if nothing else is left
        step = Step()
        speculative, gate.speculative = gate.speculative, None
        if not inputs:
            if speculative is not None and speculative.failed is None:
                # The request does not wait for it: a load it has running ends on its own,
                # and what it holds goes back then. (One that failed already was counted
                # out of the request when it failed.)
                speculative.dropped = True
                request.remaining -= 1
                step = self.scheduler.fail(speculative, f"its condition ({record.outcome}) "
                                           "dropped it", now)
            return step
        if speculative is not None:
            speculative.input = inputs.pop(0)
            step.ready += self.scheduler.open_gate(speculative, now)
            if not inputs:
                return step
        first = len(record.instances)
        instances = self.planner.plan(request.record.request_id, [gate.info] * len(inputs))
        for number, (instance, x) in enumerate(zip(instances, inputs, strict=True)):
            instance.order = request.order  # ranks with its request (`Task.order`)
            instance.input = x
            instance.arrival = request.record.arrival_s
            instance.result_key = f"{child}[{first + number}]"
        record.instances += tuple(instance.id for instance in instances)
        request.instances += instances
        request.remaining += len(instances)
        step.ready += self.scheduler.add(instances, now)
        return step

    def _withdraw(self, request: Request, reason: str, now: float) -> None:
        del self.open[request.record.request_id]
        for instance in request.instances:
            self.scheduler.fail(instance, reason, now)
        request.record.status = "rejected"
        request.record.error = reason

    def settle(self, step: Step) -> list[Request]:
        """Account for the instances `step` finished; returns the requests now closed, with
        their record's completion time and status set (completed or failed). A parent's end
        resolves its gates by the request's condition (what that adds is registered with the
        scheduler; a dropped instance is settled here too)."""
        closed: list[Request] = []
        resolved, self._resolved = self._resolved, []
        for request in resolved:  # gates resolved by hand may have left nothing to wait for
            if not request.remaining:
                self._close(request, closed)
        finished = list(step.finished)
        while finished:
            instance = finished.pop(0)
            if self.record_tasks:
                self.trace.record_instance(instance)
            else:
                self.trace.record_span(instance)
            request = self.open.get(instance.request_id)
            if request is None or instance.dropped:  # dropped: counted out by `resolve`
                continue
            if instance.failed:
                request.failed.append(instance)
            request.remaining -= 1
            if request.gates:
                for gate in request.gates:
                    if gate.parent is instance and not gate.resolved:
                        finished += self._parent_ended(request, gate).finished
                self._resolved.clear()  # settled here
            if not request.remaining:
                self._close(request, closed)
        return closed

    def _close(self, request: Request, closed: list[Request]) -> None:
        """Close a request with nothing left to wait for: completion time and status."""
        if self.open.pop(request.record.request_id, None) is None:
            return  # closed already
        record = request.record
        record.completion_s = max((i.last.end or 0.0) for i in request.instances
                                  if not i.dropped)
        errors = request.errors if request.failed or request.gates else None
        if errors:
            record.status = "failed"
            record.error = "; ".join(errors)
        else:
            record.status = "completed"
        closed.append(request)

    def _parent_ended(self, request: Request, gate: Gate) -> Step:
        """Resolve a gate whose parent just ended: by the condition, or to 0 if the parent
        failed; left for the caller when the request has no condition."""
        parent = gate.parent
        now = max((task.end for task in parent.tasks if task.end is not None), default=0.0)
        if parent.failed is not None:
            return self.resolve(request, gate.child, (), now, "parent failed")
        if request.condition is None:
            return Step()
        try:
            inputs = list(request.condition(gate.child, parent))
        except Exception as error:  # a caller's condition: this request fails, not the driver
            return self.resolve(request, gate.child, (), now, "error",
                                f"its condition raised {type(error).__name__}: {error}")
        return self.resolve(request, gate.child, inputs, now)
