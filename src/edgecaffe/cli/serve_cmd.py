"""`edgecaffe serve`: the engine behind an HTTP service (the `serve` extra)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "serve", help="serve a folder of models over HTTP (inference, health, metrics, a live "
        "page)",
        description="Serve every model and pipeline of REPOSITORY (model package folders, "
        "original EdgeCaffe folders, PROTOTXT + CAFFEMODEL pairs, .onnx files, pipeline .yaml "
        "files; each built once at start) over HTTP with one engine under a memory budget: "
        "POST /v1/infer (?networks=A,B or ?pipeline=NAME), GET /v1/models, "
        "/health/live, /health/ready, /metrics (Prometheus) and a live page at /. SIGTERM or "
        "Ctrl-C stops it gracefully. Needs `pip install 'edgecaffe[serve]'`. See "
        "docs/serving.md.",
    )
    parser.add_argument("repository", metavar="REPOSITORY", help="the folder of models")
    parser.add_argument("--budget", default="512M", help="memory budget (default 512M)")
    parser.add_argument("--mode", default="masa", help="engine mode (default masa)")
    parser.add_argument("--policy", default=None, help="policy (default: the mode's)")
    parser.add_argument("--granularity", default="layer", choices=["layer", "network"],
                        help="memory accounting (default layer)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="BLAS threads (default: the cores shared out among the workers)")
    add_backend_flag(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default 8000; 0: any free port, printed at start)")
    parser.add_argument("--queue", type=int, default=32,
                        help="requests in flight at most; more are refused with 429 "
                        "(default 32)")
    parser.add_argument("--timeout-ms", type=float, default=None,
                        help="default deadline per call; a call's timeout_ms overrides it "
                        "(default: none)")
    parser.add_argument("--max-upload", default="16M",
                        help="largest request body (default 16M); larger ones get 413")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest image, width x height (default 40000000)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="classes per classifier output (default 5)")
    parser.add_argument("--allow-overcommit", action="store_true",
                        help="run requests with a task larger than the whole budget over it "
                        "(the progress rule) instead of refusing them at once with 503")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds a shutdown lets calls in flight finish before "
                        "cancelling them (default 10)")
    parser.add_argument("--keep-weights", action="store_true",
                        help="keep freed weights in memory while the budget has room (evicted "
                        "first when a request needs it), so that later calls read nothing")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.add_argument("--check", action="store_true",
                        help="build every model, list them and exit without serving")
    parser.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    from edgecaffe.serve.service import ServeConfig

    return ServeConfig(
        repository=args.repository, budget=args.budget, mode=args.mode, policy=args.policy,
        granularity=args.granularity, workers=args.workers, blas_threads=args.blas_threads,
        backend=args.backend, queue=args.queue, max_upload=args.max_upload,
        max_pixels=args.max_pixels, timeout_ms=args.timeout_ms, top_k=args.top_k,
        allow_overcommit=args.allow_overcommit, grace_s=args.grace,
        keep_weights=args.keep_weights)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check(service) -> int:
    """--check: build, list, stop."""
    from edgecaffe.serve.status import model_json

    service.start()
    ready = service.wait_ready()
    for entry in service.repository.entries.values():
        model = model_json(service, entry)
        if model["state"] == "ready" and model["kind"] == "pipeline":
            stages = ", ".join(f"{s['name']} ({s['network']})" for s in model["stages"])
            print(f"{model['name']:<20} {model['kind']:<8} stages {stages}  weights "
                  f"{model['memory']['weight_bytes'] / 2**20:.1f} MiB")
        elif model["state"] == "ready":
            memory = model.get("memory", {})
            print(f"{model['name']:<20} {model['kind']:<8} input "
                  f"{'x'.join(map(str, model['input_shape']))}  "
                  f"weights {memory.get('weight_bytes', 0) / 2**20:.1f} MiB  "
                  f"{len(model['labels'])} labels")
        else:
            print(f"{model['name']:<20} {model['kind']:<8} FAILED: {model.get('error')}")
    service.stop()
    if not ready:
        raise UsageError(service.error or "no model could be built")
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (`UsageError` if the address is taken or unknown).

    Its proto is IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    say they are TCP, and without that a keep-alive client waits ~40 ms for each answer (the
    body's segment held until the headers' delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from edgecaffe.serve import Service, create_app
    except ImportError as error:
        raise UsageError(f"edgecaffe serve needs the serve extra ({error.name} is missing): "
                         "pip install 'edgecaffe[serve]'") from None
    if args.queue < 1 or args.grace < 0 or args.top_k < 0:
        raise UsageError("--queue must be 1 or more; --grace and --top-k 0 or more")
    from edgecaffe.measure import return_freed_memory

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    # The process is the service's alone: freed arrays go back to the system, so that RSS
    # follows the ledger down after a burst instead of staying at its peak (glibc keeps large
    # freed blocks otherwise: measured under 2x overload, ~270 MiB after against ~180 MiB).
    return_freed_memory()
    service = Service(_config(args), progress=_say)
    if args.check:
        return _check(service)
    sock = listening_socket(args.host, args.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="info", access_log=args.access_log,
                            timeout_graceful_shutdown=args.grace + 5, lifespan="on")
    server = _Server(config, service)
    service.on_failed = lambda: setattr(server, "should_exit", True)
    received: list[int] = []
    # Restored by uvicorn after its own handling and raised again then: recording it here
    # ends the process normally once the graceful shutdown is over.
    previous = {sig: signal.signal(sig, lambda s, f: received.append(s))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"edgecaffe serve: http://{args.host}:{port}/ (live page; API under /v1, /health, "
          "/metrics); SIGTERM or Ctrl-C stops", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        service.stop()  # done by the app's lifespan, unless a second Ctrl-C skipped it
    _say(f"stopped{' on ' + signal.Signals(received[0]).name if received else ''}: "
         f"ledger {service.ledger_bytes()} bytes")
    if service.state == "failed":
        raise UsageError(f"{args.repository}: {service.error}")
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling the service when a shutdown begins (ready turns 503)."""

        def __init__(self, config, service) -> None:
            super().__init__(config)
            self.service = service

        def handle_exit(self, sig: int, frame) -> None:
            self.service.drain()
            super().handle_exit(sig, frame)

    return Server


def _Server(config, service):  # built lazily: uvicorn is an optional extra
    return _server_class()(config, service)
