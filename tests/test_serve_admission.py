"""Admission and back-pressure: a full queue refuses at once, a deadline cancels late work, a
client that goes away cancels its request, a shutdown answers what is in flight; the ledger
returns to 0 every time. Tasks are held by a gate so that calls stay in flight on purpose."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import httpx
import pytest

from edgecaffe.engine import Engine
from edgecaffe.serve import ServeConfig, Service, create_app
from tests.serve_helpers import Gate, call_then_leave, image, png, wait_idle

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def repository(zoo_packages):
    return zoo_packages(["TinyAlex", "TinyResidual"])


@asynccontextmanager
async def serving(repository, gate: Gate | None = None, **options):
    """A started service and an HTTP client on its app (no network)."""
    config = ServeConfig(repository, budget=options.pop("budget", "64M"), **options)
    service = Service(config, engine_options={"task_runner": gate} if gate else None)
    app = create_app(service, start=False)
    service.start()
    assert service.wait_ready(60), service.error
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            yield service, client
    finally:
        if gate is not None:
            gate.open.set()
        await asyncio.to_thread(service.stop)
    assert service.engine.budget.used_bytes == 0


async def until(condition, timeout_s: float = 30.0) -> None:
    async def wait():
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(wait(), timeout_s)


def post(client, networks="TinyAlex", **params):
    return client.post("/v1/infer", params={"networks": networks, **params},
                       content=png(image()), headers=PNG)


def test_a_full_queue_refuses_at_once_with_429_and_the_queued_calls_finish(repository):
    async def scenario():
        gate = Gate()
        async with serving(repository, gate, queue=2) as (service, client):
            first = [asyncio.create_task(post(client)) for _ in range(2)]
            await until(lambda: service.admission.in_flight == 2)
            await until(gate.entered.is_set)
            # The live page's Gantt shows the task held now, running, on its worker.
            tasks = (await client.get("/v1/status")).json()["tasks"]
            running = [t for t in tasks if t[6]]
            assert running and all(t[4] >= t[3] and t[1] == "TinyAlex" for t in running)
            assert {t[0] for t in running} <= {0, 1}
            refused = await post(client)
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "1"
            assert "queue full: 2 of 2" in refused.json()["error"]
            gate.open.set()
            answers = await asyncio.gather(*first)
            assert [a.status_code for a in answers] == [200, 200]
            wait_idle(service.engine)
            assert service.admission.in_flight == 0
            tasks = (await client.get("/v1/status")).json()["tasks"]
            assert tasks and not [t for t in tasks if t[6]]  # they ended: none runs now
            assert {tuple(t[:4]) for t in tasks if t[1] == "TinyAlex" and t[2] == "exec"}
            too_many = await client.post(  # more inputs than the queue could ever hold
                "/v1/infer?networks=TinyAlex",
                files=[(f"i{i}", (f"{i}.png", png(image(i)), "image/png")) for i in range(3)])
            assert too_many.status_code == 413 and "at most 2" in too_many.json()["error"]
            statuses = [r.status for r in service.engine.trace.requests.values()]
            assert statuses == ["completed", "completed"]  # the refused never reached it

    asyncio.run(scenario())


def test_a_deadline_cancels_work_that_would_finish_too_late(repository):
    async def scenario():
        gate = Gate()
        async with serving(repository, gate) as (service, client):
            answer = await post(client, "TinyAlex,TinyResidual", timeout_ms="100")
            assert answer.status_code == 504
            body = answer.json()
            assert "deadline of 100 ms passed" in body["error"]
            assert body["results"][0]["status"] == "cancelled"
            gate.open.set()
            wait_idle(service.engine)
            assert [r.status for r in service.engine.trace.requests.values()] == ["cancelled"]
            assert service.engine.budget.used_bytes == 0
            assert (await post(client)).status_code == 200  # and it keeps serving

    asyncio.run(scenario())


def test_a_client_that_goes_away_cancels_its_request(repository):
    async def scenario():
        gate = Gate()
        async with serving(repository, gate) as (service, _client):
            status = await call_then_leave(create_app(service, start=False), png(image()),
                                           b"networks=TinyAlex",
                                           lambda: until(gate.entered.is_set))
            assert status == 499
            gate.open.set()
            wait_idle(service.engine)
            assert [r.status for r in service.engine.trace.requests.values()] == ["cancelled"]

    asyncio.run(scenario())


@pytest.mark.parametrize("content_type", ["image/png", "application/json",
                                          "multipart/form-data; boundary=b"])
def test_a_client_that_goes_away_during_its_upload_is_counted_not_an_error(
        repository, content_type, caplog):
    """Its body never came in whole (a camera losing its link): the call is over, counted as
    disconnected, with no 'internal error' traceback in the log and nothing submitted."""
    from prometheus_client.parser import text_string_to_metric_families

    async def scenario():
        async with serving(repository) as (service, client):
            app = create_app(service, start=False)
            messages = [{"type": "http.request", "body": b"--b\r\nContent-Disposition: form",
                         "more_body": True}, {"type": "http.disconnect"}]
            sent = []

            async def receive():
                return messages.pop(0)

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/v1/infer",
                     "raw_path": b"/v1/infer", "query_string": b"networks=TinyAlex",
                     "root_path": "", "client": ("127.0.0.1", 5000), "server": ("serve", 80),
                     "headers": [(b"content-type", content_type.encode()),
                                 (b"content-length", b"100000")]}
            await asyncio.wait_for(app(scope, receive, send), 30)
            assert sent[0]["status"] == 499
            text = (await client.get("/metrics")).text
            calls = {(s.labels["status"], s.labels["code"]): s.value
                     for family in text_string_to_metric_families(text)
                     for s in family.samples if s.name == "edgecaffe_infer_requests_total"}
            assert calls == {("disconnected", "499"): 1}
            assert not service.engine.trace.requests
            assert (await post(client)).status_code == 200  # and it goes on serving

    asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        caplog.text


def test_a_large_json_body_is_parsed_off_the_event_loop(repository, monkeypatch):
    """Parsing megabytes of JSON numbers takes a good part of a second (0.6 s for 15 MB
    here): on the event loop, health checks and every other call would wait meanwhile."""
    import json
    import threading

    import numpy as np

    import edgecaffe.serve.calls as calls

    threads = []
    parse = calls.json_inputs

    def recording(body, limits):
        threads.append(threading.get_ident())
        return parse(body, limits)

    monkeypatch.setattr(calls, "json_inputs", recording)
    x = np.random.default_rng(0).standard_normal((1, 3, 35, 35)).astype(np.float32)

    async def scenario():
        async with serving(repository) as (_service, client):
            loop = threading.get_ident()
            for copies in (1, 20):  # ~0.07 MB, then ~1.4 MB: over INLINE_DECODE_BYTES
                body = json.dumps({"networks": ["TinyAlex"], "inputs": [x.tolist()] * copies})
                answer = await client.post("/v1/infer", content=body,
                                           headers={"Content-Type": "application/json"})
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["results"]) == copies
            assert threads[0] == loop and threads[1] != loop

    asyncio.run(scenario())


def test_a_shutdown_answers_calls_in_flight_after_the_grace_period(repository):
    async def scenario():
        gate = Gate()
        async with serving(repository, gate, grace_s=0.2) as (service, client):
            calls = [asyncio.create_task(post(client)) for _ in range(3)]
            await until(lambda: service.admission.in_flight == 3)
            service.drain()
            assert (await client.get("/health/ready")).status_code == 503
            refused = await post(client)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            answers = await asyncio.gather(*calls)  # the grace timer cancels them
            assert [a.status_code for a in answers] == [503] * 3
            assert "grace period of 0.2 s" in answers[0].json()["error"]
            gate.open.set()
            wait_idle(service.engine)
            assert service.engine.budget.used_bytes == 0

    asyncio.run(scenario())


def test_a_shutdown_within_the_grace_period_lets_calls_finish(repository):
    async def scenario():
        gate = Gate()
        async with serving(repository, gate, grace_s=60) as (service, client):
            calls = [asyncio.create_task(post(client)) for _ in range(2)]
            await until(lambda: service.admission.in_flight == 2)
            service.drain()
            gate.open.set()
            assert [a.status_code for a in await asyncio.gather(*calls)] == [200, 200]

    asyncio.run(scenario())


def test_what_can_never_fit_is_refused_at_once_with_503_by_default(repository):
    async def scenario():
        async with serving(repository, budget="4K") as (service, client):
            models = (await client.get("/v1/models")).json()["models"]
            assert {m["name"]: m["memory"]["fits_budget"] for m in models} == \
                {"TinyAlex": False, "TinyResidual": False}
            answer = await post(client)
            assert answer.status_code == 503
            reason = answer.json()["error"]
            assert "can never fit the budget" in reason and "\n" not in reason
            assert not service.engine.trace.requests  # refused before the engine saw it
            assert service.engine.budget.used_bytes == 0

    asyncio.run(scenario())


def test_allow_overcommit_runs_what_can_never_fit_over_budget(repository):
    async def scenario():
        async with serving(repository, budget="4K", allow_overcommit=True) as (_service, client):
            answer = await post(client)
            assert answer.status_code == 200, answer.text
            network = answer.json()["results"][0]["networks"]["TinyAlex"]
            assert network["status"] == "completed" and network["forced"] > 0
            forced = [line for line in (await client.get("/metrics")).text.splitlines()
                      if line.startswith("edgecaffe_forced_tasks_total ")]
            assert float(forced[0].split()[1]) == network["forced"]

    asyncio.run(scenario())


def test_not_ready_while_building(repository):
    async def scenario():
        service = Service(ServeConfig(repository))
        app = create_app(service, start=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://serve") as client:
            assert (await client.get("/health/live")).status_code == 200
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "building"
            answer = await post(client)
            assert answer.status_code == 503 and "still being built" in answer.json()["error"]
            status = (await client.get("/v1/status")).json()  # what the page shows meanwhile
            assert status["state"] == "building" and "now_s" not in status
            service.start()
            assert await asyncio.to_thread(service.wait_ready, 60)
            assert (await client.get("/health/ready")).status_code == 200
            await asyncio.to_thread(service.stop)
            assert (await client.get("/health/ready")).status_code == 503

    asyncio.run(scenario())


def test_trim_trace_keeps_the_latest_records_and_open_requests(repository):
    gate = Gate()
    gate.open.set()
    with Engine(repository, budget="64M", task_runner=gate) as engine:
        for future in [engine.submit(image(i), ["TinyAlex"]) for i in range(6)]:
            future.result(timeout=60)
        gate.open.clear()
        held = engine.submit(image(9), ["TinyAlex"])
        gate.entered.clear()
        assert gate.entered.wait(30)
        tasks, ledger = list(engine.trace.tasks), list(engine.trace.ledger)
        engine.trim_trace(keep_tasks=5, keep_ledger=7, keep_requests=2)
        assert engine.trace.tasks == tasks[-5:] and engine.trace.ledger == ledger[-7:]
        assert engine.trace.ledger is engine.budget.events  # trimmed in place
        assert sorted(engine.trace.requests) == [4, 5, 6]  # two closed, and the open one
        gate.open.set()
        assert held.result(timeout=60)  # its record is still there when it closes
        assert engine.trace.requests[6].status == "completed"
    assert engine.budget.used_bytes == 0


def test_the_trace_stays_bounded_however_many_calls(repository):
    async def scenario():
        async with serving(repository) as (service, client):
            service.trace_keep = (30, 40, 3)
            for _ in range(25):
                assert (await post(client, "TinyAlex,TinyResidual")).status_code == 200
            trace = service.engine.trace
            assert len(trace.tasks) <= 60 and len(trace.ledger) <= 80
            assert len(trace.requests) <= 6
            assert max(trace.requests) == 24  # the latest are kept
            status = (await client.get("/v1/status")).json()
            assert status["tasks"] and status["ledger"][-1][1] == 0

    asyncio.run(scenario())
