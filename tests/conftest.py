"""Shared helpers: write a Caffe prototxt + caffemodel, run EdgeCaffe and OpenCV DNN on the same
input, and compare every output within 1e-4 of the output's scale.

OpenCV (opencv-python-headless 4.x, the `oracle` extra) is a hard requirement of the test suite:
it is imported unconditionally so that a CI without it fails loudly instead of skipping.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecaffe.model.caffe import CaffeModelReader, LayerBlobs, load_caffe, write_caffemodel
from edgecaffe.model.caffe.synth import synthesize_caffemodel
from edgecaffe.model.network import Network

cv2.setNumThreads(1)

#: Acceptance criterion: max |ours - reference| <= RTOL * max(1, max |reference|).
RTOL = 1e-4


def tolerance(reference: np.ndarray) -> float:
    """The allowed absolute error for one output: 1e-4 of the reference's scale (at least 1)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return RTOL * max(1.0, scale)


def assert_close(ours: np.ndarray, reference: np.ndarray, what: str = "output") -> None:
    """Assert same shape and max abs difference within `tolerance(reference)`, explaining misses."""
    ours = np.asarray(ours)
    reference = np.asarray(reference)
    assert ours.shape == reference.shape, (
        f"{what}: EdgeCaffe shape {ours.shape} != OpenCV shape {reference.shape}"
    )
    assert np.all(np.isfinite(reference)), f"{what}: the OpenCV reference is not finite"
    assert np.all(np.isfinite(ours)), (
        f"{what}: EdgeCaffe output has {int(np.sum(~np.isfinite(ours)))} non-finite values"
    )
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    allowed = tolerance(reference)
    worst = float(diff.max()) if diff.size else 0.0
    if worst > allowed:
        index = np.unravel_index(int(np.argmax(diff)), diff.shape)
        bad = int(np.sum(diff > allowed))
        pytest.fail(
            f"{what} {ours.shape}: max |EdgeCaffe - OpenCV| = {worst:.6g} > {allowed:.3g} "
            f"(1e-4 of scale {float(np.max(np.abs(reference))):.6g}); worst at {index}: "
            f"EdgeCaffe {float(ours[index]):.7g}, OpenCV {float(reference[index]):.7g}; "
            f"{bad} of {diff.size} values out of tolerance",
            pytrace=False,
        )


def random_input(
    rng: np.random.Generator, shape: Sequence[int], scale: float = 10.0, positive: bool = False
) -> np.ndarray:
    """Float32 values uniform in [-scale, scale] ([scale/50, scale] when `positive`)."""
    low = scale / 50.0 if positive else -scale
    return rng.uniform(low, scale, size=tuple(shape)).astype(np.float32)


def random_weights(rng: np.random.Generator, shape: Sequence[int], fan_in: int | None = None,
                   mean: float = 0.0) -> np.ndarray:
    """Normal weights scaled by 1/sqrt(fan_in) (a plain N(mean, 1) without fan_in)."""
    std = 1.0 / np.sqrt(fan_in) if fan_in else 1.0
    return (mean + rng.standard_normal(tuple(shape)) * std).astype(np.float32)


def input_layer(shape: Sequence[int], top: str = "data") -> str:
    """A V2 `Input` layer of one top."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "{top}" type: "Input" top: "{top}" '
            f"input_param {{ shape {{ {dims} }} }} }}\n")


def inputs_layer(shapes: Mapping[str, Sequence[int]], name: str = "inputs") -> str:
    """One V2 `Input` layer with several tops, one shape each."""
    tops = " ".join(f'top: "{top}"' for top in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }"
                    for shape in shapes.values())
    return f'layer {{ name: "{name}" type: "Input" {tops} input_param {{ {dims} }} }}\n'


@dataclass
class OracleRun:
    """Both sides of one comparison, for tests that want to check more than closeness."""

    network: Network
    inputs: dict[str, np.ndarray]
    ours: dict[str, np.ndarray]
    theirs: dict[str, np.ndarray]
    prototxt: Path
    caffemodel: Path | None
    #: EdgeCaffe blob -> (OpenCV layer name, output index) that was compared with it.
    pins: dict[str, tuple[str, int]] = field(default_factory=dict)


def producer_pins(network: Network, blobs: Sequence[str]) -> dict[str, tuple[str, int]]:
    """For each EdgeCaffe blob, the Caffe layer that wrote it and the output's index.

    EdgeCaffe keeps Caffe's layer names, so the producing layer's name is also OpenCV's.
    """
    pins = {}
    for blob in blobs:
        for layer in network.layers:
            if blob in layer.outputs:
                pins[blob] = (layer.name, layer.outputs.index(blob))
                break
        else:
            raise AssertionError(f"no layer of {network.name!r} produces blob {blob!r}")
    return pins


def opencv_forward(
    prototxt: Path, caffemodel: Path | None, inputs: Mapping[str, np.ndarray],
    pins: Mapping[str, tuple[str, int]], fusion: bool = True,
) -> dict[str, np.ndarray]:
    """Run OpenCV DNN's Caffe importer; returns blob -> the output at its (layer, index) pin.

    With `fusion` False OpenCV runs every layer on its own; with fusion on it folds layers into
    their producers and writes Concat inputs straight into the Concat's buffer, and then the
    output it reports for an intermediate, in-place-overwritten layer can be stale memory.
    """
    if caffemodel is None:
        net = cv2.dnn.readNetFromCaffe(str(prototxt))
    else:
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(fusion)
    if len(inputs) == 1:
        net.setInput(next(iter(inputs.values())))
    else:
        for name, array in inputs.items():
            net.setInput(array, name)
    layer_names = list(dict.fromkeys(name for name, _ in pins.values()))
    results = net.forwardAndRetrieve(layer_names)
    by_layer = dict(zip(layer_names, results, strict=True))
    theirs = {}
    for blob, (layer, index) in pins.items():
        outputs = by_layer[layer]
        assert index < len(outputs), (
            f"OpenCV layer {layer!r} gave {len(outputs)} output(s), wanted #{index} ({blob!r})"
        )
        theirs[blob] = np.array(outputs[index], dtype=np.float32)
    return theirs


def _without_scalar_blobs(model_path: Path | None) -> Path | None:
    """OpenCV cannot read the 0-d blobs Caffe writes (a shared PReLU slope, a Scale with
    num_axes 0): give it a copy where they are 1-d."""
    if model_path is None:
        return None
    with CaffeModelReader(model_path) as reader:
        layers = [(name, record.type, reader.read_blobs(name))
                  for name, record in reader.layers.items()]
    if not any(blob.ndim == 0 for _, _, blobs in layers for blob in blobs):
        return model_path
    copy = model_path.with_name(model_path.stem + ".opencv1d.caffemodel")
    write_caffemodel(copy, model_path.stem, [
        LayerBlobs(name, kind, [b.reshape(-1) for b in blobs]) for name, kind, blobs in layers])
    return copy


def compare_with_opencv(
    directory: Path,
    prototxt: str,
    *,
    layers: Sequence[LayerBlobs] | None = None,
    synth_seed: int | None = None,
    inputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    input_scale: float = 10.0,
    positive: bool = False,
    outputs: Sequence[str] | None = None,
    name: str = "net",
    opencv_prototxt: str | None = None,
    opencv_layers: Sequence[LayerBlobs] | None = None,
    opencv_fusion: bool = True,
) -> OracleRun:
    """Write `prototxt` (+ a caffemodel) to `directory`, run both engines, compare the outputs.

    Weights come from `layers` (written with `write_caffemodel`), or from
    `synthesize_caffemodel(seed=synth_seed)`, or there are none (parameter-free networks).
    Inputs default to `random_input(rng, shape, input_scale, positive)` for each network input.
    `outputs` are EdgeCaffe blob names (default: the network's outputs); each is compared with
    the output of the OpenCV layer of the same name that produced it.

    Where OpenCV's Caffe importer departs from Caffe (a parameter it ignores, a layer type it
    lacks), `opencv_prototxt` (+ `opencv_layers`) give OpenCV an equivalent network built from
    what it does implement; its layers producing the compared blobs must carry the same names.
    `opencv_fusion=False` turns OpenCV's layer fusion off, for comparing intermediate blobs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    proto_path = directory / f"{name}.prototxt"
    proto_path.write_text(prototxt)
    model_path: Path | None = None
    if layers is not None:
        assert synth_seed is None, "give either layers or synth_seed"
        model_path = directory / f"{name}.caffemodel"
        write_caffemodel(model_path, name, layers)
    elif synth_seed is not None:
        model_path = directory / f"{name}.caffemodel"
        synthesize_caffemodel(proto_path, model_path, seed=synth_seed)

    cv_proto_path, cv_model_path = proto_path, _without_scalar_blobs(model_path)
    if opencv_prototxt is not None:
        cv_proto_path = directory / f"{name}.opencv.prototxt"
        cv_proto_path.write_text(opencv_prototxt)
        cv_model_path = None
        if opencv_layers is not None:
            cv_model_path = directory / f"{name}.opencv.caffemodel"
            write_caffemodel(cv_model_path, name, opencv_layers)
    else:
        assert opencv_layers is None, "opencv_layers needs opencv_prototxt"

    network = load_caffe(proto_path, model_path)
    if inputs is None:
        rng = rng if rng is not None else np.random.default_rng(0)
        feeds = {blob: random_input(rng, network.blob_shapes[blob], input_scale, positive)
                 for blob in network.inputs}
    elif isinstance(inputs, Mapping):
        feeds = {blob: np.ascontiguousarray(a, dtype=np.float32) for blob, a in inputs.items()}
    else:
        feeds = {network.inputs[0]: np.ascontiguousarray(inputs, dtype=np.float32)}

    wanted = list(network.outputs if outputs is None else outputs)
    pins = producer_pins(network, wanted)
    # Copies, so neither engine can see what the other may have written into its input.
    ours = network.forward({b: a.copy() for b, a in feeds.items()}, outputs=wanted)
    theirs = opencv_forward(cv_proto_path, cv_model_path,
                            {b: a.copy() for b, a in feeds.items()}, pins, opencv_fusion)
    for blob in wanted:
        layer, index = pins[blob]
        assert_close(ours[blob], theirs[blob],
                     f"{network.name}: blob {blob!r} (layer {layer!r} output {index})")
    return OracleRun(network, feeds, ours, theirs, proto_path, model_path, pins)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible per test, different between tests."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode("utf-8")))


@pytest.fixture
def oracle(tmp_path: Path, rng: np.random.Generator) -> Callable[..., OracleRun]:
    """`oracle(prototxt, layers=..., ...)`: `compare_with_opencv` bound to tmp_path and rng."""

    def run(prototxt: str, **kwargs) -> OracleRun:
        kwargs.setdefault("rng", rng)
        return compare_with_opencv(tmp_path, prototxt, **kwargs)

    return run


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """Write a zoo network (seed 7) once per test session; returns (prototxt, caffemodel)."""
    from edgecaffe.model.zoo import write_zoo_model

    folder = tmp_path_factory.mktemp("zoo")
    written: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in written:
            written[name] = write_zoo_model(name, folder, seed=7)
        return written[name]

    return get


@pytest.fixture(scope="session")
def zoo_packages(tmp_path_factory: pytest.TempPathFactory,
                 zoo_model: Callable[[str], tuple[Path, Path]]) -> Callable[..., Path]:
    """A folder of model packages split from zoo networks (seed 7), made once per set of names
    per session: `zoo_packages(["TinyAlex", "TinyResidual"])`. Tests copy before changing."""
    from edgecaffe.model.package import split

    made: dict[tuple[str, ...], Path] = {}

    def get(names: Sequence[str]) -> Path:
        key = tuple(names)
        if key not in made:
            folder = made[key] = tmp_path_factory.mktemp("packages")
            for name in key:
                split(list(zoo_model(name)), folder / name)
        return made[key]

    return get


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV file as dicts."""
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
