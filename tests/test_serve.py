"""The HTTP service through Starlette's TestClient: the repository, inference answers equal to
an in-process `Engine`'s, bad input, metrics, health and the live page's figures."""

from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecaffe.engine import Engine
from edgecaffe.serve import ServeConfig, Service, create_app
from tests.serve_helpers import image, make_repository, png, wait_idle

with warnings.catch_warnings():  # Starlette >= 1.x prefers the httpx2 fork; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECAFFE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def repository(tmp_path_factory, zoo_packages, zoo_model, cache):
    return make_repository(tmp_path_factory.mktemp("serve") / "models", zoo_packages, zoo_model)


@pytest.fixture(scope="module")
def client(repository):
    service = Service(ServeConfig(repository, budget="64M", workers=2, max_upload="1M",
                                  max_pixels=200_000))
    with TestClient(create_app(service)) as test_client:
        assert service.wait_ready(120), service.error
        test_client.service = service
        yield test_client


def metrics(client) -> dict:
    """name{labels} -> value of every sample of a scrape, parsed by prometheus-client."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_models_lists_every_kind_with_shapes_labels_and_memory(client):
    answer = client.get("/v1/models").json()
    models = {m["name"]: m for m in answer["models"]}
    assert {name: m["kind"] for name, m in models.items()} == {
        "TinyAlex": "package", "Res": "caffe", "Feat": "caffe", "Incept": "onnx",
        "Orig": "original", "faces": "pipeline"}
    assert models["Orig"]["labels"] == ["cat", "dog", "owl", "fox", "elk"]
    assert all(m["state"] == "ready" for name, m in models.items() if name != "faces")
    # Not a pipeline (no stages): listed as failed, one line naming the file and the key.
    assert models["faces"]["state"] == "failed"
    assert "faces.yaml: pipeline: unknown key `networks`" in models["faces"]["error"]
    assert models["TinyAlex"]["input_shape"] == [1, 3, 35, 35]
    assert models["Res"]["input_shape"] == [1, 3, 20, 20]
    assert models["Feat"]["outputs"] == ["conv"]
    package = client.service.repository.packages["TinyAlex"]
    memory = models["TinyAlex"]["memory"]
    assert memory["weight_bytes"] == package.weight_bytes > 0
    assert memory["fits_budget"] is True
    assert 0 < memory["largest_layer_bytes"] <= memory["weight_bytes"]
    notes = " ".join(answer["notes"])
    assert [n for n in answer["notes"] if n.startswith("faces.yaml: not served: ")] == \
        [f"faces.yaml: not served: {models['faces']['error']}"]
    assert all("\n" not in note for note in answer["notes"])
    assert "Lonely.prototxt: no Lonely.caffemodel" in notes
    assert "notes.txt" in notes
    assert client.get("/v1/models/Res").json()["kind"] == "caffe"
    assert client.get("/v1/models/Nope").status_code == 404


def in_process(client, inputs, networks):
    """The same inputs through an `Engine` of our own on the same packages."""
    packages = client.service.repository.packages
    with Engine({n: packages[n] for n in networks}, mode="masa", budget="64M",
                workers=2) as engine:
        return [f.result(timeout=60) for f in engine.map(inputs, networks)]


def assert_same_outputs(entry, expected, raw: bool = True) -> None:
    for key, network in entry["networks"].items():
        assert network["status"] == "completed"
        for blob, array in expected[key].items():
            answer = network["outputs"][blob]
            assert answer["shape"] == list(array.shape)
            if raw or "values" in answer:
                got = np.asarray(answer["values"], dtype=np.float32)
                np.testing.assert_array_equal(got, array)  # the same float32 bits
            if "top" in answer:
                order = np.argsort(array[0].reshape(-1))[::-1][:len(answer["top"])]
                assert [c["index"] for c in answer["top"]] == order.tolist()
                assert [c["score"] for c in answer["top"]] == \
                    [float(array[0].reshape(-1)[i]) for i in order]


def test_multipart_images_answer_exactly_the_engines_outputs(client):
    networks = ["TinyAlex", "Res", "Incept", "Feat", "Orig"]
    images = [image(1), image(2, (64, 30))]
    files = [("image", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    response = client.post("/v1/infer", params={"networks": ",".join(networks), "raw": "1"},
                           files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed" and len(body["results"]) == 2
    expected = in_process(client, images, networks)
    ids = set()
    for entry, result in zip(body["results"], expected, strict=True):
        assert_same_outputs(entry, result)
        ids.add(entry["request_id"])
        timings = entry["networks"]["TinyAlex"]["timings"]
        assert set(timings) == {"queued_ms", "init_ms", "load_ms", "exec_ms", "response_ms"}
        assert timings["response_ms"] >= timings["exec_ms"] > 0
    assert len(ids) == 2  # one engine request per image
    feat = body["results"][0]["networks"]["Feat"]["outputs"]["conv"]
    assert "top" not in feat and np.asarray(feat["values"]).shape == (1, 2, 6, 6)
    top = body["results"][0]["networks"]["Orig"]["outputs"]["prob"]["top"]
    assert [c["label"] for c in top] == \
        [["cat", "dog", "owl", "fox", "elk"][c["index"]] for c in top]


def test_raw_body_json_tensor_and_base64_forms(client):
    picture = image(5)
    expected = in_process(client, [picture], ["TinyAlex", "Res"])[0]
    raw = client.post("/v1/infer?networks=TinyAlex,Res&top_k=3", content=png(picture),
                      headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    entry = raw.json()["results"][0]
    assert_same_outputs(entry, expected, raw=False)
    assert len(entry["networks"]["TinyAlex"]["outputs"]["prob"]["top"]) == 3
    encoded = client.post("/v1/infer", json={"networks": "TinyAlex,Res",
                                              "images": [base64.b64encode(png(picture)).decode()],
                                              "raw": True})
    assert_same_outputs(encoded.json()["results"][0], expected)
    tensor = np.random.default_rng(3).standard_normal((1, 3, 35, 35)).astype(np.float32)
    answer = client.post("/v1/infer", json={"networks": ["TinyAlex"], "inputs": [tensor.tolist()],
                                            "raw": True})
    assert answer.status_code == 200, answer.text
    assert_same_outputs(answer.json()["results"][0], in_process(client, [tensor], ["TinyAlex"])[0])


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"content": b"not an image", "headers": {"Content-Type": "image/jpeg"}}, 422,
     "not an image"),
    ({"content": b"", "headers": {"Content-Type": "image/png"}}, 422, "empty image"),
    ({"params": {"networks": "Nope"}}, 404, "unknown model(s) Nope"),
    ({"params": {"networks": ""}}, 400, "no networks named"),
    ({"json": {"networks": ["TinyAlex"], "inputs": [[[1.0, 2.0]]]}}, 422,
     "does not match TinyAlex's input shape (1, 3, 35, 35)"),
    ({"json": {"networks": ["TinyAlex"], "inputs": [[[1.0], [2.0, 3.0]]]}}, 422,
     "not a rectangular array"),
    ({"content": b'{"networks": ["TinyAlex"], "inputs": [', "headers":
      {"Content-Type": "application/json"}}, 400, "malformed JSON body"),
    ({"json": [1, 2]}, 400, "must be an object"),
    ({"json": {"networks": ["TinyAlex"], "input": None}}, 422,
     "inputs[0]: a tensor must be an array, got null"),
    ({"content": b"[" * 100000, "headers": {"Content-Type": "application/json"}}, 400,
     "nested too deeply"),
    ({"json": {"networks": ["TinyAlex"], "inputs": [[["a", "b"]]]}}, 422,
     "not a rectangular array of numbers"),
    ({"json": {"networks": ["TinyAlex"], "images": ["%%%"]}}, 422, "not base64"),
    ({"content": b"x" * (2 * 2**20), "headers": {"Content-Type": "image/png"}}, 413,
     "larger than the limit"),
    ({"content": "big", "headers": {"Content-Type": "image/png"}}, 413, "pixels exceeds"),
    # Over twice Pillow's own limit, it refuses to open it at all: still our 413.
    ({"content": "bomb", "headers": {"Content-Type": "image/png"}}, 413,
     "image of 400000000 pixels exceeds the limit of 200000 pixels (--max-pixels)"),
    ({"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, "not accepted"),
    ({"params": {"networks": "TinyAlex", "top_k": "many"}}, 400, "top_k: 'many' is not"),
    ({"params": {"networks": "TinyAlex", "timeout_ms": "-5"}}, 400, "timeout_ms"),
    ({"params": {"networks": "TinyAlex"}}, 400, "no input"),
    ({"files": {"image": ("x.png", b"garbage", "image/png")}}, 422, "image (x.png)"),
    ({"files": [("image", (f"{i}.png", b"x", "image/png")) for i in range(65)]}, 413,
     "multipart body over a limit: Too many files. Maximum number of files is 64."),
])
def test_bad_input_gets_a_4xx_with_one_line_and_the_service_goes_on(client, kwargs, status,
                                                                     words):
    kwargs = dict(kwargs)
    kwargs.setdefault("params", {"networks": "TinyAlex"})
    if kwargs.get("content") == "big":
        kwargs["content"] = png(np.zeros((500, 500, 3), np.uint8))  # 250000 > 200000 pixels
    if kwargs.get("content") == "bomb":
        kwargs["content"] = png_header(20000, 20000)
    response = client.post("/v1/infer", **kwargs)
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    assert words in reason and "\n" not in reason
    good = client.post("/v1/infer?networks=TinyAlex", content=png(image()),
                       headers={"Content-Type": "image/png"})
    assert good.status_code == 200
    wait_idle(client.service.engine)
    assert client.service.engine.budget.used_bytes == 0


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, header (IHDR: 8-bit grey) and end, no pixel data: what a
    decompression bomb shows before its (tiny, highly compressed) data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_metrics_count_calls_requests_and_read_the_ledger(client):
    before = metrics(client)
    client.post("/v1/infer?networks=TinyAlex,Res", files=[
        ("a", ("a.png", png(image(1)), "image/png")), ("b", ("b.png", png(image(2)), "image/png"))])
    client.post("/v1/infer?networks=Nope", content=png(image()),
                headers={"Content-Type": "image/png"})
    after = metrics(client)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("edgecaffe_infer_requests_total", status="completed", code="200") == 1
    assert grew("edgecaffe_infer_requests_total", status="invalid", code="404") == 1
    assert grew("edgecaffe_requests_total", status="completed") == 2
    assert grew("edgecaffe_network_response_seconds_count", network="Res") == 2
    assert after[("edgecaffe_ledger_bytes", ())] == 0
    assert after[("edgecaffe_queue_depth", ())] == 0
    assert after[("edgecaffe_queue_capacity", ())] == 32
    assert after[("edgecaffe_budget_bytes", ())] == 64 * 2**20
    assert after[("edgecaffe_rss_bytes", ())] > 10 * 2**20
    assert after[("edgecaffe_models", (("state", "ready"),))] == 5
    assert after[("edgecaffe_models", (("state", "failed"),))] == 1  # faces.yaml
    assert ("edgecaffe_forced_tasks_total", ()) in after


def test_health_and_live_page_figures(client):
    assert client.get("/health/live").json()["status"] == "live"
    assert client.get("/health/ready").status_code == 200
    client.post("/v1/infer?networks=TinyAlex,Res", content=png(image()),
                headers={"Content-Type": "image/png"})
    status = client.get("/v1/status").json()
    assert status["state"] == "ready" and status["workers"] == 2
    assert status["budget_bytes"] == 64 * 2**20 and status["ledger_bytes"] == 0
    assert status["tasks"], "recent tasks for the Gantt chart"
    for worker, network, kind, start, end, _forced, running in status["tasks"]:
        assert running is False  # the call was answered: nothing runs now
        assert worker in (0, 1) and network in status["models"]
        assert kind in ("init", "load", "exec") and start <= end <= status["now_s"]
    assert status["ledger"][-1][1] == 0 and status["samples"]
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for marker in ('id="memory"', 'id="gantt"', "/v1/status", "setInterval"):
        assert marker in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # no CDN


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/v2/nothing").json()["error"] == "Not Found"
    assert client.get("/v1/infer").status_code == 405


def test_kinds_and_a_repository_without_models(tmp_path):
    from edgecaffe.errors import ConfigError
    from edgecaffe.serve.repository import KINDS, scan

    assert [kind.name for kind in KINDS] == ["package", "original", "caffe", "onnx", "pipeline"]
    (tmp_path / "notes.txt").write_text("nothing\n")
    with pytest.raises(ConfigError, match="no models found.*notes.txt: not a model"):
        scan(tmp_path)
    with pytest.raises(ConfigError, match="must be a folder"):
        scan(tmp_path / "missing")


def test_a_model_that_fails_to_build_is_listed_and_the_others_serve(tmp_path, repository):
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(repository / "TinyAlex", folder / "TinyAlex")
    (folder / "Broken.onnx").write_bytes(b"not onnx at all")
    service = Service(ServeConfig(folder, budget="64M"))
    with TestClient(create_app(service)) as test_client:
        assert service.wait_ready(60)
        models = {m["name"]: m for m in test_client.get("/v1/models").json()["models"]}
        assert models["Broken"]["state"] == "failed" and "Broken.onnx" in models["Broken"]["error"]
        response = test_client.post("/v1/infer?networks=Broken,Nope", content=png(image()),
                                    headers={"Content-Type": "image/png"})
        # The reason says why, as the listing does: not "unknown" for a file that is there.
        assert response.status_code == 404
        assert response.json()["error"] == (
            f"unknown model(s) Nope; Broken failed to build: {models['Broken']['error']}; "
            "served: TinyAlex")
        assert test_client.post("/v1/infer?networks=TinyAlex", content=png(image()),
                                headers={"Content-Type": "image/png"}).status_code == 200


def test_a_repeated_option_is_never_silently_dropped(client):
    """httpx (and most clients) send a list as a repeated key: every network named runs,
    from the query string and form fields alike; two different values of one option are a
    400, not one of them dropped."""
    import httpx

    url = httpx.URL("/v1/infer", params={"networks": ["TinyAlex", "Res"]})
    assert str(url).endswith("?networks=TinyAlex&networks=Res")
    answer = client.post(str(url), content=png(image()), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert list(answer.json()["results"][0]["networks"]) == ["TinyAlex", "Res"]
    answer = client.post("/v1/infer?networks=TinyAlex", data={"networks": "Res,Feat"},
                         files={"image": ("a.png", png(image()), "image/png")})
    assert list(answer.json()["results"][0]["networks"]) == ["TinyAlex", "Res", "Feat"]
    answer = client.post("/v1/infer?networks=TinyAlex&top_k=1&top_k=3", content=png(image()),
                         headers={"Content-Type": "image/png"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "top_k given twice, as '1' and '3'"
    answer = client.post("/v1/infer?networks=TinyAlex&pipeline=", content=png(image()),
                         headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text  # an empty pipeline= names none


def test_json_answer_is_plain_json(client):
    """No NaN or Infinity tokens, which browsers' JSON.parse refuses."""
    text = client.post("/v1/infer?networks=Feat&raw=1", content=png(image()),
                       headers={"Content-Type": "image/png"}).text
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard {token}"))


def test_options_as_form_fields_and_a_chunked_body_over_the_limit(client):
    answer = client.post("/v1/infer", data={"networks": "TinyAlex", "top_k": "2"},
                         files={"image": ("a.png", png(image()), "image/png")})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"][0]["networks"]["TinyAlex"]["outputs"]["prob"]["top"]) == 2

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * 65536

    big = client.post("/v1/infer?networks=TinyAlex", content=chunks(),
                      headers={"Content-Type": "image/png"})
    assert big.status_code == 413
    assert big.json()["error"].startswith("request body larger than the limit of 1048576")
    big = client.post("/v1/infer?networks=TinyAlex", content=chunks(),
                      headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert big.status_code == 413


def test_a_network_that_fails_in_the_engine_is_a_500_naming_it_and_the_others_answer(
        tmp_path, zoo_packages):
    import shutil

    source = zoo_packages(["TinyAlex", "TinyResidual"])
    for name in ("TinyAlex", "TinyResidual"):
        shutil.copytree(source / name, tmp_path / name)
    damaged = sorted((tmp_path / "TinyAlex" / "weights").glob("*conv2*"))[0]
    data = bytearray(damaged.read_bytes())
    data[-8:] = bytes(8)  # same size, other bytes: the checksum at first load tells
    damaged.write_bytes(bytes(data))
    service = Service(ServeConfig(tmp_path, budget="64M"))
    with TestClient(create_app(service)) as test_client:
        assert service.wait_ready(60)
        answer = test_client.post("/v1/infer?networks=TinyAlex,TinyResidual",
                                  content=png(image()), headers={"Content-Type": "image/png"})
        assert answer.status_code == 500
        body = answer.json()
        networks = body["results"][0]["networks"]
        assert networks["TinyAlex"]["status"] == "failed"
        assert "conv2" in networks["TinyAlex"]["error"] and "conv2" in body["error"]
        assert networks["TinyResidual"]["status"] == "completed"
        assert networks["TinyResidual"]["outputs"]["prob"]["top"]
        wait_idle(service.engine)
        assert service.engine.budget.used_bytes == 0
        again = test_client.post("/v1/infer?networks=TinyResidual", content=png(image()),
                                 headers={"Content-Type": "image/png"})
        assert again.status_code == 200


def test_import_edgecaffe_and_its_cli_load_no_serving_stack():
    import subprocess
    import sys

    code = ("import sys, edgecaffe, edgecaffe.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'starlette', 'uvicorn', 'prometheus_client', 'multipart', 'anyio', 'numpy'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
