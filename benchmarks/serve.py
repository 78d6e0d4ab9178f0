"""The HTTP service under load, on loopback: `edgecaffe serve` as a subprocess, driven by
real HTTP clients (httpx), bounded in count and time.

Phases (the README batch's networks, AgeNet and GenderNet by default; `--full` adds FaceNet;
zoo packages with synthetic weights; one JPEG of the built-in sample picture per call):

1. paired: calls one at a time, alternating an `Engine` in this process (the same settings,
   `allow_overcommit` included; decode the JPEG, submit, wait: the peer) and one HTTP client,
   so both see the same noise; the service's overhead is the median of the pairs'
   differences, and (call time - the engine's own response time) over HTTP against
   in-process, as a difference of medians and as the median of each pair's difference
   (goal: <= 5 ms added);
2. closed loop: `--clients` clients, each sending its next call when the previous is answered;
   its throughput is the service's capacity;
3. open loop: Poisson arrivals at 0.7x that capacity (latency counted from each arrival's due
   time, so a late client counts against the service);
4. overload: Poisson arrivals at 2x the capacity: every call must be answered (done or
   refused with 429), the ledger must be 0 and the queue empty afterwards, RSS before, at
   its peak and after is printed;
then SIGTERM: the server must exit 0 with the ledger at 0.

Printed per phase: answers/s, p50/p95/p99 (ms), the refused share, and the load average (the
machine may be shared: figures are noisy).

    python benchmarks/serve.py [--networks AgeNet,GenderNet] [--requests 60] [--clients 4]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def percentiles(values: list[float]) -> str:
    if not values:
        return "no answers"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {statistics.median(ordered):7.1f}  p95 {at(0.95):7.1f}  p99 {at(0.99):7.1f} ms"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def sample_jpeg() -> bytes:
    from PIL import Image

    from edgecaffe.model.preprocess import sample_image

    buffer = io.BytesIO()
    Image.fromarray(sample_image()[:, :, ::-1]).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def repository(networks: list[str], folder: Path) -> Path:
    """A repository of zoo packages (split into the cache once), linked into `folder`."""
    from edgecaffe.model.zoo import zoo_package

    folder.mkdir()
    for name in networks:
        (folder / name).symlink_to(zoo_package(name).directory, target_is_directory=True)
    return folder


def paired(client, url: str, folder: Path, networks: list[str], args, jpeg: bytes) -> None:
    """Calls one at a time, alternating an in-process `Engine` (decode the JPEG, submit, wait)
    and the service over HTTP, so that both see the same machine noise. Prints both medians,
    the median of the pairs' differences, and each side's call time minus the engine's own
    response time (what the caller waits beyond the engine's work)."""
    from edgecaffe.engine import Engine
    from edgecaffe.serve.inputs import decode_image

    names = ",".join(networks)
    local, remote, local_extra, remote_extra = [], [], [], []
    with Engine({n: folder / n for n in networks}, mode=args.mode, budget=args.budget,
                workers=args.workers, allow_overcommit=args.allow_overcommit) as engine:
        for index in range(args.sequential + 2):
            started = time.perf_counter()
            result = engine.submit(decode_image(jpeg, "body", 40_000_000), networks).result()
            local_ms = (time.perf_counter() - started) * 1e3
            code, remote_ms, engine_ms = call(client, url, names, jpeg)
            if index < 2 or code != 200:  # two warm-up pairs
                continue
            local.append(local_ms)
            remote.append(remote_ms)
            local_extra.append(local_ms - result.response_ms)
            remote_extra.append(remote_ms - engine_ms)
    differences = [r - loc for r, loc in zip(remote, local, strict=True)]
    added = [r - loc for r, loc in zip(remote_extra, local_extra, strict=True)]
    inside = [server - engine for server, engine in SERVER_MS[-len(remote):]]
    print(f"{'in-process':<12} {len(local):4d} calls one at a time: {percentiles(local)}")
    print(f"{'HTTP':<12} {len(remote):4d} calls one at a time: {percentiles(remote)}; {load()}")
    print(f"overhead: median of paired differences {statistics.median(differences):+.1f} ms; "
          f"call minus the engine's response: HTTP {statistics.median(remote_extra):.1f} ms, "
          f"in-process {statistics.median(local_extra):.1f} ms, added "
          f"{statistics.median(remote_extra) - statistics.median(local_extra):+.1f} ms "
          f"(difference of medians), median of the pairs' added "
          f"{statistics.median(added):+.1f} ms (goal: <= 5 ms); of the HTTP call's extra, "
          f"inside the server (server_ms - the "
          f"engine's response) {statistics.median(inside):.1f} ms, the rest is the two "
          "processes' HTTP and scheduling")


class Server:
    def __init__(self, folder: Path, args, scratch: Path) -> None:
        self.stderr_path = scratch / "serve.err"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in stop)
        command = [str(Path(sys.executable).parent / "edgecaffe"), "serve", str(folder),
                   "--budget", args.budget, "--mode", args.mode, "--workers",
                   str(args.workers), "--queue", str(args.queue), "--port", "0"]
        if args.allow_overcommit:
            command.append("--allow-overcommit")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True)
        line = self.process.stdout.readline()
        if "http://" not in line:
            raise SystemExit(f"the server did not start:\n{self.stderr_path.read_text()}")
        self.url = line.split()[2].rstrip("/")

    def wait_ready(self, client) -> None:
        deadline = time.monotonic() + 300
        while client.get(f"{self.url}/health/ready").status_code != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"not ready:\n{self.stderr_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self.stderr.close()
        return code, self.stderr_path.read_text()


def call(client, url: str, networks: str, jpeg: bytes) -> tuple[int, float, float | None]:
    """(HTTP code or -1 when unanswered, ms, the engine's response ms if completed). The
    server's own view of the call (`server_ms`) is kept in `SERVER_MS`."""
    import httpx

    started = time.perf_counter()
    try:
        answer = client.post(f"{url}/v1/infer", params={"networks": networks},
                             content=jpeg, headers={"Content-Type": "image/jpeg"})
    except httpx.HTTPError:
        return -1, (time.perf_counter() - started) * 1e3, None
    elapsed = (time.perf_counter() - started) * 1e3
    engine_ms = None
    if answer.status_code == 200:
        body = answer.json()
        engine_ms = body["results"][0]["response_ms"]
        SERVER_MS.append((body["server_ms"], engine_ms))
    return answer.status_code, elapsed, engine_ms


#: (server_ms, engine response ms) of the completed calls, in order.
SERVER_MS: list[tuple[float, float]] = []


def closed_loop(client, url, networks, jpeg, clients: int, total: int, limit_s: float):
    """`clients` clients, each sending its next call when the previous one is answered, until
    `total` calls were sent or `limit_s` passed."""
    results: list = []
    issued = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + limit_s
    started = time.perf_counter()

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= total:
                    return
                issued[0] += 1
            outcome = call(client, url, networks, jpeg)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def open_loop(client, url, networks, jpeg, rate_per_s: float, total: int, seed: int = 1):
    """Poisson arrivals; each call's time counts from its due time."""
    rng = random.Random(seed)
    due, t = [], 0.0
    for _ in range(total):
        t += rng.expovariate(rate_per_s)
        due.append(t)
    results: list = [None] * total
    started = time.perf_counter()

    def fire(index: int) -> None:
        delay = started + due[index] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        code, _, engine_ms = call(client, url, networks, jpeg)
        results[index] = (code, (time.perf_counter() - started - due[index]) * 1e3, engine_ms)

    with ThreadPoolExecutor(max_workers=min(total, 128)) as pool:
        list(pool.map(fire, range(total)))
    return results, time.perf_counter() - started


def report(name: str, results: list, seconds: float) -> None:
    codes = [code for code, _, _ in results]
    done = [ms for code, ms, _ in results if code == 200]
    refused = sum(1 for code in codes if code in (429, 503))
    lost = sum(1 for code in codes if code not in (200, 429, 503))
    print(f"{name:<12} {len(results):4d} calls in {seconds:6.1f} s: "
          f"{len(done) / seconds:6.2f} answered/s; {percentiles(done)}; refused "
          f"{refused / len(results):5.1%}; unanswered or errors {lost}; {load()}")


def rss_sampler(client, url: str, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.25):
        try:
            text = client.get(f"{url}/metrics").text
        except Exception:
            continue
        for line in text.splitlines():
            if line.startswith("edgecaffe_rss_bytes "):
                peak[0] = max(peak[0], float(line.split()[1]))


def metrics_value(client, url: str, name: str) -> float:
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="AgeNet,GenderNet")
    parser.add_argument("--full", action="store_true", help="add FaceNet (slow)")
    parser.add_argument("--budget", default="512M")
    parser.add_argument("--mode", default="masa")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=20, help="calls one at a time")
    parser.add_argument("--requests", type=int, default=60, help="calls per loaded phase")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per phase")
    parser.add_argument("--allow-overcommit", action="store_true",
                        help="the server's flag; the in-process engine gets the same setting")
    args = parser.parse_args()
    import httpx

    networks = args.networks.split(",") + (["FaceNet"] if args.full else [])
    names = ",".join(networks)
    jpeg = sample_jpeg()
    with tempfile.TemporaryDirectory(prefix="edgecaffe-serve-bench-") as scratch:
        folder = repository(networks, Path(scratch) / "models")
        print(f"networks {names}; budget {args.budget}, mode {args.mode}, {args.workers} "
              f"workers, queue {args.queue}; one {len(jpeg)}-byte JPEG per call; {load()}")
        server = Server(folder, args, Path(scratch))
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        with httpx.Client(timeout=300, limits=limits) as client:
            server.wait_ready(client)
            paired(client, server.url, folder, networks, args, jpeg)
            run_phases(client, server.url, names, jpeg, args)
        code, stderr = server.stop()
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    print(f"SIGTERM: exit {code}; {last}")


def run_phases(client, url, names, jpeg, args) -> None:
    results, seconds = closed_loop(client, url, names, jpeg, args.clients, args.requests,
                                   args.seconds)
    report("closed loop", results, seconds)
    capacity = sum(1 for code, _, _ in results if code == 200) / seconds
    results, seconds = open_loop(client, url, names, jpeg, 0.7 * capacity, args.requests)
    report("open 0.7x", results, seconds)
    rss_before = metrics_value(client, url, "edgecaffe_rss_bytes")
    stop, peak = threading.Event(), [rss_before]
    sampler = threading.Thread(target=rss_sampler, args=(client, url, stop, peak))
    sampler.start()
    results, seconds = open_loop(client, url, names, jpeg, 2 * capacity, args.requests * 2,
                                 seed=2)
    stop.set()
    sampler.join()
    report("open 2x", results, seconds)
    unanswered = sum(1 for code, _, _ in results if code not in (200, 429, 503))
    status = client.get(f"{url}/v1/status").json()
    rss_after = metrics_value(client, url, "edgecaffe_rss_bytes")
    print(f"after overload: {unanswered} unanswered; ledger {status['ledger_bytes']} bytes, "
          f"queue {status['queue']['depth']}; RSS before {rss_before / 2**20:.1f} MiB, peak "
          f"{peak[0] / 2**20:.1f}, after {rss_after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
