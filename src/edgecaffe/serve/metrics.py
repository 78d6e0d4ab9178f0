"""Prometheus metrics of the service (prometheus-client), in a registry of its own so that
several services (tests) live in one process.

    edgecaffe_infer_requests_total{status, code}   calls by outcome (completed, failed,
                                                   cancelled, timeout, disconnected, rejected,
                                                   invalid) and HTTP code
    edgecaffe_requests_total{status}               engine requests (one per input) by status
    edgecaffe_queue_depth / _queue_capacity        requests in flight / the bound
    edgecaffe_network_response_seconds{network}    histogram: arrival to the network's last task
    edgecaffe_pipeline_response_seconds{pipeline} histogram: an image's first stage request
                                                   to its last stage's end
    edgecaffe_call_seconds                         histogram: the whole call, as the server saw it
    edgecaffe_ledger_bytes / _budget_bytes         the engine's memory ledger / its budget
    edgecaffe_rss_bytes                            this process's resident memory
    edgecaffe_forced_tasks_total                   reservations admitted over budget (progress rule)
    edgecaffe_models{state}                        models ready / failed
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from edgecaffe.measure import rss_bytes

#: Seconds: a tiny network answers in milliseconds, FaceNet at 1340 px in tens of seconds.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The service's metrics; `ledger_bytes`, `budget_bytes` and `queue_depth` are read when
    scraped (callables), the rest counted as calls end."""

    def __init__(self, queue_depth: Callable[[], float], queue_capacity: int,
                 ledger_bytes: Callable[[], float], budget_bytes: Callable[[], float]) -> None:
        self.registry = registry = CollectorRegistry()
        self.calls = Counter("edgecaffe_infer_requests", "Inference calls by outcome and HTTP "
                             "code", ["status", "code"], registry=registry)
        self.requests = Counter("edgecaffe_requests", "Engine requests (one per input) by "
                                "status", ["status"], registry=registry)
        Gauge("edgecaffe_queue_depth", "Requests admitted and not yet answered",
              registry=registry).set_function(queue_depth)
        Gauge("edgecaffe_queue_capacity", "Requests admitted at most at once",
              registry=registry).set(queue_capacity)
        self.network_response = Histogram(
            "edgecaffe_network_response_seconds", "Arrival to the network's last task end",
            ["network"], buckets=BUCKETS_S, registry=registry)
        self.pipeline_response = Histogram(
            "edgecaffe_pipeline_response_seconds", "An image's pipeline, from its submission "
            "to its last stage's end", ["pipeline"], buckets=BUCKETS_S, registry=registry)
        self.call_seconds = Histogram("edgecaffe_call_seconds", "Whole inference calls, as "
                                      "the server saw them", buckets=BUCKETS_S,
                                      registry=registry)
        Gauge("edgecaffe_ledger_bytes", "Bytes the engine's memory ledger holds",
              registry=registry).set_function(ledger_bytes)
        Gauge("edgecaffe_budget_bytes", "The engine's memory budget",
              registry=registry).set_function(budget_bytes)
        Gauge("edgecaffe_rss_bytes", "Resident memory of the service process",
              registry=registry).set_function(rss_bytes)
        self.forced = Counter("edgecaffe_forced_tasks", "Reservations the progress rule "
                              "admitted over the budget", registry=registry)
        self.models = Gauge("edgecaffe_models", "Models of the repository by state", ["state"],
                            registry=registry)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
