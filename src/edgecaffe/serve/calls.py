"""One `POST /v1/infer` call from request to answer: read it, admit it, run it, answer it."""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgecaffe.serve.admission import settle
from edgecaffe.serve.inputs import (
    Call,
    CallError,
    check_shapes,
    collect_options,
    decode_image,
    json_inputs,
    options_call,
    read_limited,
)
from edgecaffe.serve.pipelines import pipeline_json
from edgecaffe.serve.results import request_json
from edgecaffe.serve.service import Service

#: Images and JSON bodies up to this size are decoded on the event loop (a 256 KB JPEG: a few
#: ms); larger ones in a thread, so that other calls are not held up.
INLINE_DECODE_BYTES = 256 * 1024

#: HTTP code per call outcome (499: the client closed the connection, as nginx logs it).
CODES = {"completed": 200, "failed": 500, "cancelled": 500, "timeout": 504,
         "disconnected": 499, "shutdown": 503}


async def _multipart(request: Request, service: Service
                     ) -> tuple[list[tuple[str, Any]], list]:
    """([(text field, value)], [(part name, bytes)]) of a multipart body, read within the
    limits."""
    limits = service.limits
    stream = read_limited(request.stream(), limits.max_upload_bytes)
    parser = MultiPartParser(request.headers, stream, max_files=limits.max_inputs,
                             max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        # Starlette's own limits (files, fields, a text field's size) are 413s like ours.
        message = error.message
        if message.startswith("Too many") or "exceeded maximum size" in message:
            raise CallError(413, f"multipart body over a limit: {message}") from None
        raise CallError(400, f"malformed multipart body: {message}") from None
    fields: list[tuple[str, Any]] = []
    files: list[tuple[str, bytes]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                what = f"{key} ({value.filename})" if value.filename else key
                files.append((what, await value.read()))
            else:
                fields.append((key, value))
    finally:
        await form.close()
    return fields, files


async def _body(request: Request, service: Service) -> bytes:
    chunks = [c async for c in read_limited(request.stream(), service.limits.max_upload_bytes)]
    return b"".join(chunks)


async def read_call(request: Request, service: Service) -> Call:
    """The call's options and decoded inputs; `CallError` for anything wrong with them."""
    limits = service.limits
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_upload_bytes:
        raise CallError(413, f"request body of {length} bytes is larger than the limit of "
                         f"{limits.max_upload_bytes} bytes (--max-upload)")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    sources: list = [request.query_params.multi_items()]
    encoded: list[tuple[str, bytes]] = []
    tensors: list = []
    if ctype == "multipart/form-data":
        fields, encoded = await _multipart(request, service)
        sources.append(fields)
    elif ctype == "application/json":
        body = await _body(request, service)
        if len(body) <= INLINE_DECODE_BYTES:
            fields, tensors = json_inputs(body, limits)
        else:  # 15 MB of JSON numbers: ~0.6 s on the loop, which every other call waits for.
            # In a thread the loop runs between the steps; `json.loads` itself (~0.35 s of it)
            # holds the GIL throughout, so that part still stalls it.
            fields, tensors = await run_in_threadpool(json_inputs, body, limits)
        sources.append(fields.items())
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        encoded = [("body", await _body(request, service))]
    elif ctype:
        raise CallError(415, f"content type {ctype!r} not accepted; send multipart/form-data, "
                         "image/*, application/octet-stream or application/json")
    call = options_call(collect_options(*sources), service.network_names, service.pipeline_names,
                        service.failed)
    if len(encoded) + len(tensors) > limits.max_inputs:
        raise CallError(413, f"{len(encoded) + len(tensors)} inputs in one call; at most "
                         f"{limits.max_inputs}")
    for what, data in encoded:
        if len(data) <= INLINE_DECODE_BYTES:  # ~1 ms: cheaper than waking a thread
            image = decode_image(data, what, limits.max_pixels)
        else:  # a large image would hold up every other call meanwhile
            image = await run_in_threadpool(decode_image, data, what, limits.max_pixels)
        call.inputs.append((what, image))
    call.inputs += tensors
    if not call.inputs:
        raise CallError(400, "no input: upload an image (multipart file, or the body with an "
                         "image/* content type) or send a JSON tensor")
    check_shapes(call, service.input_shapes)
    return call


def _pipeline_entry(call: Call, what: str, future: Any, service: Service) -> dict[str, Any]:
    """A pipeline input's entry: the result tree and its stage requests' timings, or the
    error of the stage that failed."""
    metrics = service.metrics
    error = future.exception()
    if error is not None:
        metrics.requests.labels("failed").inc()
        return {"input": what, "status": "failed", "pipeline": call.pipeline,
                "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    result = future.result()
    requests = service.stages.take(result.request_ids)
    metrics.requests.labels("completed").inc()
    metrics.pipeline_response.labels(call.pipeline).observe(result.response_ms / 1e3)
    for request in requests:
        response_ms = request["timings"]["response_ms"]
        if response_ms is not None:
            metrics.network_response.labels(request["network"]).observe(response_ms / 1e3)
        if request["forced"]:
            metrics.forced.inc(request["forced"])
    return pipeline_json(what, result, requests, call.raw)


def _entries(call: Call, futures: list, service: Service, top_k: int) -> list[dict[str, Any]]:
    """The answer's entry per input, and the metrics of what ended."""
    from edgecaffe.engine import RequestError

    metrics = service.metrics
    entries = []
    for (what, _), future in zip(call.inputs, futures, strict=True):
        if future.cancelled():
            metrics.requests.labels("cancelled").inc()
            entries.append({"input": what, "status": "cancelled",
                            "error": "cancelled before it finished"})
            continue
        if call.pipeline is not None:
            entries.append(_pipeline_entry(call, what, future, service))
            continue
        error = future.exception()
        if error is None:
            result = future.result()
        else:  # a failed network keeps the others' results; an engine error has none
            result = error.result if isinstance(error, RequestError) else None
        if result is None:
            metrics.requests.labels("failed").inc()
            entries.append({"input": what, "status": "failed", "error": str(error)})
            continue
        metrics.requests.labels(result.status).inc()
        for network in result.networks.values():
            if network.response_ms is not None:
                metrics.network_response.labels(network.network).observe(
                    network.response_ms / 1e3)
            if network.forced:
                metrics.forced.inc(network.forced)
        entries.append(request_json(what, result, service.formats, top_k, call.raw))
    return entries


async def run_call(request: Request, service: Service) -> JSONResponse:
    """Read, admit, submit one request per input, wait, answer (see `settle` for deadlines
    and disconnects)."""
    started = time.perf_counter()
    service.check_open()
    service.admission.check_room()  # a full queue refuses before the body is even read
    call = await read_call(request, service)
    service.check_open()  # a shutdown may have begun while the body came in
    service.admission.admit(len(call.inputs))
    futures: list = []
    timeout_ms = call.timeout_ms or service.config.timeout_ms
    try:
        for _, x in call.inputs:
            futures.append(service.submit(x, call.networks) if call.pipeline is None
                           else service.submit_pipeline(x, call.pipeline))
        # The deadline counts from the call's arrival (reading and decoding included).
        left_s = None if not timeout_ms else timeout_ms / 1e3 - (time.perf_counter() - started)
        outcome = await settle(futures, None if left_s is None else max(0.0, left_s),
                               request.receive)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        service.admission.release(len(call.inputs))
        service.after_call()
    return answer(call, futures, outcome, service, started, timeout_ms)


def answer(call: Call, futures: list, outcome: str, service: Service, started: float,
           timeout_ms: float | None) -> JSONResponse:
    """The call's JSON answer and HTTP code: 200 when every request completed; 500 when a
    network failed; 504 past the deadline; 503 when a shutdown cancelled it; 499 (not seen by
    anyone) when the client left. Every entry that ended says how, with its outputs."""
    top_k = service.config.top_k if call.top_k is None else call.top_k
    entries = _entries(call, futures, service, top_k)
    if outcome == "done":
        statuses = {entry["status"] for entry in entries}
        outcome = next((s for s in ("failed", "cancelled") if s in statuses), "completed")
    if outcome == "cancelled" and service.state in ("draining", "stopped"):
        outcome = "shutdown"
    body: dict[str, Any] = {"status": outcome, "results": entries}
    if outcome == "timeout":
        body["error"] = (f"deadline of {timeout_ms:g} ms passed; the requests not done by then "
                         "were cancelled")
    elif outcome == "shutdown":
        body["error"] = (f"the service is shutting down: requests not done after the grace "
                         f"period of {service.config.grace_s:g} s were cancelled")
    elif outcome in ("failed", "cancelled"):
        body["error"] = "; ".join(f"{e['input']}: {e.get('error') or _network_errors(e)}"
                                  for e in entries if e["status"] != "completed")
    body["server_ms"] = round((time.perf_counter() - started) * 1e3, 3)
    service.metrics.calls.labels(outcome, str(CODES[outcome])).inc()
    service.metrics.call_seconds.observe(time.perf_counter() - started)
    return JSONResponse(body, status_code=CODES[outcome])


def _network_errors(entry: dict[str, Any]) -> str:
    return "; ".join(f"{key}: {network.get('error')}"
                     for key, network in entry.get("networks", {}).items()
                     if network["status"] != "completed")
