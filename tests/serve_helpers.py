"""Shared by the service's tests: a model repository of every kind, images, a task gate."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from edgecaffe.engine.tasks import run_task

#: A network without a Softmax: its output is raw values, not classes.
FEAT_PROTOTXT = """name: "Feat"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


ORIGINAL_DESCRIPTION = """\
name: TinyOriginal
network-file: deploy.prototxt
model-file: weights.caffemodel
mean-scalar: [104, 117, 123]
uses-result-vector: true
result-vector: [cat, dog, owl, fox, elk]
"""


def make_repository(folder: Path, zoo_packages, zoo_model) -> Path:
    """A repository with a package (TinyAlex), a Caffe pair (Res: TinyResidual), a Caffe pair
    without Softmax (Feat), an .onnx file (Incept: TinyInception), an original EdgeCaffe
    folder with labels (Orig: TinyAlex), a pipeline file, a lone prototxt and a stray text
    file."""
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.caffe.synth import synthesize_caffemodel
    from edgecaffe.model.onnx.export import export_onnx

    folder.mkdir(parents=True)
    shutil.copytree(zoo_packages(["TinyAlex"]) / "TinyAlex", folder / "TinyAlex")
    prototxt, caffemodel = zoo_model("TinyResidual")
    shutil.copy(prototxt, folder / "Res.prototxt")
    shutil.copy(caffemodel, folder / "Res.caffemodel")
    (folder / "Feat.prototxt").write_text(FEAT_PROTOTXT)
    synthesize_caffemodel(folder / "Feat.prototxt", folder / "Feat.caffemodel", seed=3)
    export_onnx(load_caffe(*zoo_model("TinyInception")), folder / "Incept.onnx")
    original = folder / "Orig"  # one of the original EdgeCaffe's network folders
    original.mkdir()
    prototxt, caffemodel = zoo_model("TinyAlex")
    shutil.copy(prototxt, original / "deploy.prototxt")
    shutil.copy(caffemodel, original / "weights.caffemodel")
    (original / "description.yaml").write_text(ORIGINAL_DESCRIPTION)
    (folder / "faces.yaml").write_text("networks: [TinyAlex]\n")
    (folder / "Lonely.prototxt").write_text(FEAT_PROTOTXT)
    (folder / "notes.txt").write_text("not a model\n")
    return folder


def image(seed: int = 0, size: tuple[int, int] = (40, 50)) -> np.ndarray:
    """A random H x W x 3 uint8 BGR image."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    """A BGR image as PNG bytes (lossless: decoding gives the same array back)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array[:, :, ::-1])).save(buffer, format="PNG")
    return buffer.getvalue()


class Gate:
    """A task runner that holds every task until `open` is set, then runs it for real."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, task, package) -> None:
        self.entered.set()
        self.open.wait(60)
        run_task(task, package, per_layer=True)


def wait_idle(engine, timeout_s: float = 30.0) -> None:
    """Wait until the engine has no request open (cancelled requests finish their running
    task first)."""
    deadline = time.monotonic() + timeout_s
    while engine.book.open or engine.budget.used_bytes:
        assert time.monotonic() < deadline, f"engine still busy: {engine.book.open}"
        time.sleep(0.01)


class ServerProcess:
    """`edgecaffe serve ARGS --port 0` as a real process: `url` once it listens, `ready()`
    waits for /health/ready; leaving the `with` block stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None) -> None:
        import os
        import subprocess
        import sys

        self.stderr_path = cwd / f"serve-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in __exit__)
        command = [str(Path(sys.executable).parent / "edgecaffe"), "serve", *args,
                   "--port", "0"]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True,
                                        env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()
        if "http://" not in line:
            self.process.wait(30)
            raise AssertionError(f"no URL printed: {line!r}\n{self.stderr()}")
        self.url = line.split()[2].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    def ready(self, timeout_s: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server ended:\n{self.stderr()}"
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout_s} s:\n{self.stderr()}")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self._stderr.close()


async def call_then_leave(app, body: bytes, query: bytes, started) -> int:
    """POST `body` (a PNG) to /v1/infer?`query` straight through the ASGI app, then, once
    `started()` (an awaitable) returns, the client goes away (`http.disconnect`). Returns the
    status the app answered (499: nobody reads it)."""
    import asyncio

    gone = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/infer",
             "raw_path": b"/v1/infer", "query_string": query, "root_path": "",
             "headers": [(b"content-type", b"image/png")], "client": ("127.0.0.1", 5000),
             "server": ("serve", 80)}
    call = asyncio.create_task(app(scope, receive, send))
    await started()
    gone.set()
    await asyncio.wait_for(call, 60)
    return sent[0]["status"]
