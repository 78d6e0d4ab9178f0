"""The ASGI application (Starlette): routes over one `Service`.

    GET  /                 the live page (queue, memory, a Gantt of recent tasks)
    GET  /health/live      200 while the process serves HTTP
    GET  /health/ready     200 once every model is built and until a shutdown begins, else 503
    GET  /metrics          Prometheus text format
    GET  /v1/models        the models: input shape, labels, memory figures, state
    GET  /v1/models/NAME   one of them
    POST /v1/infer         inference (see `serve/calls.py` and `serve/inputs.py`)
    GET  /v1/status        what the live page draws, as JSON

Every refusal is JSON `{"error": "one line"}` with a 4xx or 503 code. The app's lifespan builds
the models (in a thread, so the service is live meanwhile) and, at shutdown, cancels what is
left and closes the engine.
"""

from __future__ import annotations

import contextlib
import logging
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from edgecaffe.serve.calls import run_call
from edgecaffe.serve.inputs import CallError
from edgecaffe.serve.service import Service
from edgecaffe.serve.status import model_json, status_json

log = logging.getLogger("edgecaffe.serve")


def _service(request: Request) -> Service:
    return request.app.state.service


def _refusal(service: Service, error: CallError) -> JSONResponse:
    status = "rejected" if error.status in (429, 503) else "invalid"
    service.metrics.calls.labels(status, str(error.status)).inc()
    return JSONResponse({"error": error.reason}, status_code=error.status,
                        headers=error.headers)


async def page(request: Request) -> Response:
    return HTMLResponse(resources.files("edgecaffe.serve").joinpath("page.html").read_text())


async def live(request: Request) -> Response:
    return JSONResponse({"status": "live", "state": _service(request).state})


async def ready(request: Request) -> Response:
    service = _service(request)
    if service.state == "ready":
        return JSONResponse({"status": "ready", "models": len(service.repository.packages),
                             "pipelines": len(service.runners)})
    reason = {"building": "models are still being built", "failed": service.error,
              "draining": "shutting down", "stopped": "stopped"}[service.state]
    return JSONResponse({"status": service.state, "error": reason}, status_code=503)


async def metrics(request: Request) -> Response:
    body, content_type = _service(request).metrics.exposition()
    return Response(body, media_type=content_type)


async def models(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"models": [model_json(service, entry)
                                    for entry in service.repository.entries.values()],
                         "notes": service.repository.notes})


async def model(request: Request) -> Response:
    service = _service(request)
    name = request.path_params["name"]
    entry = service.repository.entries.get(name)
    if entry is None:
        raise CallError(404, f"unknown model or pipeline {name!r}; served: "
                        f"{', '.join(service.repository.entries)}")
    return JSONResponse(model_json(service, entry))


async def infer(request: Request) -> Response:
    service = _service(request)
    try:
        return await run_call(request, service)
    except CallError as error:
        return _refusal(service, error)
    except ClientDisconnect:  # gone while its body came in: nothing was admitted or submitted
        service.metrics.calls.labels("disconnected", "499").inc()
        return Response(status_code=499)


async def status(request: Request) -> Response:
    service = _service(request)
    service.sample()
    return JSONResponse(status_json(service))


async def call_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, CallError)
    return JSONResponse({"error": error.reason}, status_code=error.status,
                        headers=error.headers)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code,
                        headers=error.headers)


async def internal_error(request: Request, error: Exception) -> Response:
    log.exception("internal error on %s", request.url.path, exc_info=error)
    return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"},
                        status_code=500)


ROUTES = [
    Route("/", page), Route("/health/live", live), Route("/health/ready", ready),
    Route("/metrics", metrics), Route("/v1/models", models), Route("/v1/models/{name}", model),
    Route("/v1/infer", infer, methods=["POST"]), Route("/v1/status", status),
]


def create_app(service: Service, start: bool = True) -> Starlette:
    """The Starlette app serving `service`. With `start`, its lifespan starts the build and
    stops the service at the end (a test may instead start and stop the service itself)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if start:
            service.start()
        try:
            yield
        finally:
            if start:
                await run_in_threadpool(service.stop)

    handlers: dict[Any, Any] = {CallError: call_error, HTTPException: http_error,
                                Exception: internal_error}
    app = Starlette(routes=ROUTES, exception_handlers=handlers, lifespan=lifespan)
    app.state.service = service
    return app
