"""What a request's future gives back: each network's outputs, status and timings.

    result = engine.submit(image, ["AgeNet", "GenderNet"]).result()
    result["AgeNet"]["prob"]          # outputs by network, then blob (a Mapping, as before)
    result.networks["AgeNet"].exec_ms # status, error, timings per network
    result.response_ms, result.request_id, result.forced

A request whose network failed raises `RequestError` from `future.result()`; the error's
`result` holds what the other networks produced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from edgecaffe.sched import Kind, NetworkInstance, State


class RequestError(RuntimeError):
    """A request whose network failed: names the network and the cause. `result` is the
    request's `RequestResult`: the other networks' outputs are there."""

    def __init__(self, message: str, result: RequestResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class NetworkResult:
    """One network of a request. Times in ms on the engine's clock: `queued_ms` from the
    request's arrival to the network's first task, `init_ms` / `load_ms` / `exec_ms` the sums
    of its init, load and exec tasks' durations, `response_ms` from arrival to its last task's
    end. `forced`: its reservations the progress rule admitted over the budget."""

    key: str
    network: str
    status: str  # completed | failed | cancelled
    outputs: Mapping[str, Any] | None
    error: str | None
    queued_ms: float | None
    init_ms: float
    load_ms: float
    exec_ms: float
    response_ms: float | None
    forced: int

    @classmethod
    def of(cls, instance: NetworkInstance, outputs: Mapping[str, Any] | None,
           cancelled: bool) -> NetworkResult:
        arrival = instance.arrival if instance.arrival is not None else instance.created
        ran = [task for task in instance.tasks if task.start is not None and task.end is not None]
        spent = {kind: sum((t.end - t.start) * 1e3 for t in ran if t.kind == kind)
                 for kind in Kind}
        first = min((task.start for task in ran), default=None)
        last = instance.last
        ended = last.end if last.state == State.DONE and instance.failed is None else None
        if cancelled:
            status = "cancelled"
        else:
            status = "failed" if instance.failed is not None else "completed"
        return cls(
            key=instance.result_key or instance.name, network=instance.name, status=status,
            outputs=(outputs or {}) if status == "completed" else None,
            error=instance.failed if status != "completed" else None,
            queued_ms=None if first is None else (first - arrival) * 1e3,
            init_ms=spent[Kind.INIT], load_ms=spent[Kind.LOAD], exec_ms=spent[Kind.EXEC],
            response_ms=None if ended is None else (ended - arrival) * 1e3,
            forced=sum(1 for task in instance.tasks if task.forced),
        )


class RequestResult(Mapping[str, Mapping[str, Any]]):
    """A request's outputs by network (result key: `AgeNet`, `AgeNet#2` for a second AgeNet),
    each a mapping of blob name to array; only networks that completed are keys. Everything
    else about each network is in `networks`."""

    def __init__(self, request_id: int, networks: dict[str, NetworkResult],
                 response_ms: float | None) -> None:
        self.request_id = request_id
        self.networks = networks
        #: From arrival to the end of its last network (None unless every network completed).
        self.response_ms = response_ms

    @property
    def forced(self) -> int:
        return sum(network.forced for network in self.networks.values())

    @property
    def status(self) -> str:
        """completed, or failed / cancelled when any network was."""
        statuses = {network.status for network in self.networks.values()}
        for status in ("failed", "cancelled"):
            if status in statuses:
                return status
        return "completed"

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        network = self.networks[key]
        if network.outputs is None:
            raise KeyError(f"{key}: {network.status} ({network.error})")
        return network.outputs

    def __iter__(self) -> Iterator[str]:
        return (key for key, network in self.networks.items() if network.outputs is not None)

    def __len__(self) -> int:
        return sum(1 for network in self.networks.values() if network.outputs is not None)

    def __repr__(self) -> str:
        parts = ", ".join(f"{key}: {network.status}" for key, network in self.networks.items())
        return f"<RequestResult {self.request_id} {{{parts}}}>"
