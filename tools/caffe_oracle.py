"""Caffe itself as the oracle: regenerate the fixtures of `tests/caffe_cases/` with pycaffe.

A case is `tests/caffe_cases/<case>.prototxt` plus an optional `<case>.yaml`:

    seed: 7                  # weights (edgecaffe's seeded synthesis) and inputs
    input_range: [-1, 1]     # inputs are uniform in this range
    stages: [deploy]         # NetState stages and level for load_caffe and caffe.Net
    level: 0
    input_shape: {data: [1, 3, 40, 40]}   # reshape inputs before the forward pass
    blobs: [conv1, prob]     # which blobs to save (default: every blob)
    blob_values: {bn1: {2: 0.0}}          # overwrite weight blob 2 of layer bn1 with a constant

For each case this script synthesizes the weights with our own code, writes them as a
caffemodel, runs pycaffe in the Debian bullseye chroot (`docs/oracles.md` tells how to build it),
checks that every parameter layer received non-zero weights (so a layer-name mismatch cannot pass
silently), and writes `tests/fixtures/caffe/<case>.npz`: the inputs, every requested blob and the
shapes of all blobs. Weights are not stored: the tests regenerate them by seed.

    python tools/caffe_oracle.py                # every case
    python tools/caffe_oracle.py pool_pad_w     # named cases
    python tools/caffe_oracle.py --list
    python tools/caffe_oracle.py --zoo [NAME...]  # outputs of the ten original networks
    python tools/caffe_oracle.py --opencv         # where OpenCV DNN differs from the fixtures

Runs on the host as root (chroot); the tests (`tests/test_caffe_oracle.py`) need no chroot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "caffe_cases"
FIXTURES = REPO / "tests" / "fixtures" / "caffe"
DEFAULT_ROOT = Path(os.environ.get("EDGECAFFE_CAFFE_CHROOT", "/work/oracle/bullseye"))
RUNNER = Path(__file__).resolve().parent / "pycaffe_runner.py"


@dataclass
class Case:
    """One oracle case: a prototxt and how to feed and load it."""

    name: str
    prototxt: Path
    seed: int = 7
    input_range: tuple[float, float] = (-1.0, 1.0)
    stages: list[str] = field(default_factory=list)
    level: int = 0
    input_shape: dict[str, list[int]] = field(default_factory=dict)
    blobs: list[str] = field(default_factory=list)
    blob_values: dict[str, dict[int, float]] = field(default_factory=dict)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `load_caffe` for this case's net state and input size."""
        kwargs: dict[str, Any] = {}
        if self.stages:
            kwargs["stages"] = list(self.stages)
        if self.level:
            kwargs["level"] = self.level
        if self.input_shape:
            kwargs["input_shape"] = {k: list(v) for k, v in self.input_shape.items()}
        return kwargs


def case_names() -> list[str]:
    return sorted(p.stem for p in CASES.glob("*.prototxt"))


def load_case(name: str) -> Case:
    """The case `name` of tests/caffe_cases, with its YAML settings (if any)."""
    prototxt = CASES / f"{name}.prototxt"
    if not prototxt.exists():
        raise SystemExit(f"no case {name!r}: {prototxt} does not exist")
    settings = {}
    config = CASES / f"{name}.yaml"
    if config.exists():
        settings = yaml.safe_load(config.read_text()) or {}
    unknown = set(settings) - (set(Case.__dataclass_fields__) - {"name", "prototxt"})
    if unknown:
        raise SystemExit(f"{config}: unknown keys {sorted(unknown)}")
    if "input_range" in settings:
        settings["input_range"] = tuple(float(v) for v in settings["input_range"])
    return Case(name=name, prototxt=prototxt, **settings)


def build_network(case: Case, caffemodel: Path | None = None):
    """Our `Network` for the case (weights from `caffemodel` when given)."""
    from edgecaffe.model.caffe import load_caffe

    return load_caffe(case.prototxt, caffemodel, **case.load_kwargs())


def write_weights(case: Case, path: Path, scalar_as_1d: bool = False) -> list[str]:
    """Write the case's seeded synthetic weights as a caffemodel; returns the parameter layers.

    `scalar_as_1d` writes 0-d blobs as 1-d (for OpenCV, which cannot read 0-d blobs)."""
    from edgecaffe.model.caffe import LayerBlobs, write_caffemodel
    from edgecaffe.model.caffe.layers import weights_to_blobs
    from edgecaffe.model.synth import synthesize_weights

    network = build_network(case)
    layers = []
    for layer in network.layers:
        if not layer.params:
            continue
        blobs = weights_to_blobs(layer, synthesize_weights(layer, case.seed))
        for index, value in case.blob_values.get(layer.name, {}).items():
            blobs[int(index)] = np.full_like(blobs[int(index)], value)
        if scalar_as_1d:
            blobs = [blob.reshape(1) if blob.ndim == 0 else blob for blob in blobs]
        layers.append(LayerBlobs(layer.name, _caffe_type(case, layer.name), blobs))
    write_caffemodel(path, network.name, layers)
    return [layer.name for layer in layers]


def _caffe_type(case: Case, layer_name: str) -> str:
    from edgecaffe.model.caffe import read_prototxt
    from edgecaffe.model.caffe.importer import caffe_layers

    for message in caffe_layers(read_prototxt(case.prototxt)):
        if message.name == layer_name:
            return message.type
    return ""


def make_inputs(case: Case) -> dict[str, np.ndarray]:
    """Seeded uniform inputs in `case.input_range`, one per input blob, in input order."""
    network = build_network(case)
    rng = np.random.default_rng(case.seed)
    low, high = case.input_range
    return {name: rng.uniform(low, high, network.blob_shapes[name]).astype(np.float32)
            for name in network.inputs}


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(inputs, blobs, meta) of a committed fixture."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        meta = json.loads(str(data["meta"]))
        inputs = {n: data[f"i{i}"] for i, n in enumerate(meta["inputs"])}
        blobs = {n: data[f"b{i}"] for i, n in enumerate(meta["blobs"])}
    return inputs, blobs, meta


def _chroot(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OPENBLAS_NUM_THREADS": "2",
           "GLOG_minloglevel": "2", "LANG": "C.UTF-8"}
    return subprocess.run(["chroot", str(root), *args], env=env, capture_output=True, text=True,
                          check=False)


def run_case(case: Case, root: Path) -> Path:
    """Run one case in pycaffe and write its fixture; returns the fixture's path."""
    inputs, blobs, meta = run_pycaffe(case, root)
    names = meta["inputs"]
    FIXTURES.mkdir(parents=True, exist_ok=True)
    target = FIXTURES / f"{case.name}.npz"
    np.savez_compressed(target, meta=json.dumps(meta),
                        **{f"i{i}": inputs[n] for i, n in enumerate(names)},
                        **{f"b{i}": blobs[n] for i, n in enumerate(meta["blobs"])})
    return target


ZOO_FIXTURES = FIXTURES / "zoo"


def zoo_case(name: str, folder: Path) -> Case:
    """The zoo network `name` as a case: its prototxt written to `folder`, weights by seed 7,
    inputs uniform in [-50, 50], saving the outputs and the logits before each Softmax."""
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.zoo import get_zoo_model

    model = get_zoo_model(name)
    prototxt = folder / f"{model.name}.prototxt"
    prototxt.write_text(model.prototxt(1))
    network = load_caffe(prototxt)
    producers = {blob: layer for layer in network.layers for blob in layer.outputs}
    blobs = list(network.outputs)
    blobs += [producers[b].inputs[0] for b in network.outputs if producers[b].op == "Softmax"]
    return Case(name=f"zoo_{model.name}", prototxt=prototxt, seed=7, input_range=(-50.0, 50.0),
                blobs=blobs)


def input_digest(inputs: dict[str, np.ndarray]) -> str:
    """SHA-256 of the inputs, so a test can tell that it regenerated the same ones by seed."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(inputs):
        digest.update(name.encode() + np.ascontiguousarray(inputs[name]).tobytes())
    return digest.hexdigest()


def run_zoo(name: str, root: Path) -> Path:
    """pycaffe's outputs (and pre-softmax logits) of a zoo network; the inputs are not stored,
    the test regenerates them by seed (their digest is)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        case = zoo_case(name, Path(tmp))
        inputs, blobs, meta = run_pycaffe(case, root)
    meta["input_digest"] = input_digest(inputs)
    ZOO_FIXTURES.mkdir(parents=True, exist_ok=True)
    target = ZOO_FIXTURES / f"{name}.npz"
    np.savez_compressed(target, meta=json.dumps(meta),
                        **{f"b{i}": blobs[n] for i, n in enumerate(meta["blobs"])})
    return target


def chroot_ready(root: Path = DEFAULT_ROOT) -> bool:
    """True when `root` is a chroot with pycaffe and we may enter it (root)."""
    return os.geteuid() == 0 and (root / "usr/lib/python3/dist-packages/caffe").exists()


def run_pycaffe(case: Case, root: Path
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Run one case in pycaffe: (inputs, blob name -> array, meta). Raises RuntimeError when
    pycaffe fails or a parameter layer got no weights there."""
    work = root / "cases" / case.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(RUNNER, root / "cases" / RUNNER.name)
    shutil.copy(case.prototxt, work / "net.prototxt")
    ours = write_weights(case, work / "weights.caffemodel")
    inputs = make_inputs(case)
    names = list(inputs)
    np.savez(work / "inputs.npz", names=json.dumps(names),
             **{f"i{i}": inputs[n] for i, n in enumerate(names)})
    request = {"stages": case.stages, "level": case.level, "blobs": case.blobs}
    (work / "request.json").write_text(json.dumps(request))
    done = _chroot(root, "/usr/bin/python3", f"/cases/{RUNNER.name}", f"/cases/{case.name}")
    if done.returncode != 0:
        raise RuntimeError(f"{case.name}: pycaffe failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    result = json.loads((work / "result.json").read_text())
    missing = sorted(set(ours) - set(result["param_layers"]))
    if result["zero_param_layers"] or missing:
        raise RuntimeError(f"{case.name}: parameter layers without weights in pycaffe: "
                           f"{result['zero_param_layers'] + missing}")
    meta = {"case": case.name, "seed": case.seed, "caffe_version": result["caffe_version"],
            "inputs": names, "blobs": result["blobs"], "shapes": result["shapes"],
            "param_layers": result["param_layers"], "layers": result["layers"]}
    with np.load(work / "outputs.npz") as outputs:
        blobs = {name: outputs[f"b{i}"] for i, name in enumerate(result["blobs"])}
    shutil.rmtree(work)
    return inputs, blobs, meta


def compare_opencv(name: str) -> list[str]:
    """How OpenCV DNN's Caffe importer differs from the committed pycaffe fixture of `name`.

    Each saved blob is computed by OpenCV from a prototxt pruned to the layers it depends on (so
    one layer OpenCV refuses does not hide the others), with weights 1-d where Caffe's are 0-d
    (OpenCV cannot read 0-d blobs). Returns one line per blob OpenCV cannot produce or gets
    wrong (max abs error over 1e-4 of the blob's scale); empty when OpenCV agrees everywhere.
    """
    import tempfile

    import cv2
    from google.protobuf import text_format

    from edgecaffe.model.caffe import read_prototxt
    from edgecaffe.model.caffe.importer import caffe_layers

    case = load_case(name)
    inputs, expected, _ = load_fixture(name)
    network = build_network(case)
    net_param = read_prototxt(case.prototxt)
    messages = caffe_layers(net_param, **{k: v for k, v in case.load_kwargs().items()
                                          if k in ("stages", "level")})
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "w.caffemodel"
        has_weights = write_weights(case, model, scalar_as_1d=True)
        for blob, reference in expected.items():
            if blob in inputs:
                continue
            needed = {layer.name for layer in network.needed_layers([blob])}
            producer = next(layer for layer in network.layers if blob in layer.outputs)
            pruned = type(net_param)()
            pruned.CopyFrom(net_param)
            del pruned.layer[:]
            del pruned.layers[:]
            pruned.layer.extend(m for m in messages if m.name in needed or m.type == "Input")
            text = Path(tmp) / "net.prototxt"
            text.write_text(text_format.MessageToString(pruned))
            try:
                net = (cv2.dnn.readNetFromCaffe(str(text), str(model)) if has_weights
                       else cv2.dnn.readNetFromCaffe(str(text)))
                net.enableFusion(False)
                for input_name, array in inputs.items():
                    net.setInput(array, input_name)
                outputs = net.forwardAndRetrieve([producer.name])[0]
                got = np.asarray(outputs[producer.outputs.index(blob)])
            except cv2.error as error:
                lines.append(f"{blob}: OpenCV fails: {_last_line(error)}")
                continue
            lines.extend(_difference(blob, got, reference))
    return lines


def _last_line(error: Exception) -> str:
    text = [line for line in str(error).strip().splitlines() if "error:" in line] or [str(error)]
    return text[-1].split("error:")[-1].strip()[:150]


def _difference(blob: str, got: np.ndarray, reference: np.ndarray) -> list[str]:
    if got.shape != reference.shape:
        return [f"{blob}: shape {tuple(got.shape)}, Caffe {reference.shape}"]
    plain = np.isfinite(reference) & (np.abs(reference) < 3e38)
    scale = max(float(np.max(np.abs(reference[plain]), initial=0.0)), 1e-6)
    error = float(np.max(np.abs(got[plain] - reference[plain]), initial=0.0))
    special = ~(np.isnan(got[~plain]) & np.isnan(reference[~plain]))
    differ = int(np.sum((got[~plain] != reference[~plain]) & special))
    if error <= 1e-4 * scale and not differ:
        return []
    return [f"{blob}: max error {error:.3g} ({error / scale:.1%} of scale {scale:.3g}); "
            f"{differ} of Caffe's NaN/-FLT_MAX values differ"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"the bullseye chroot with python3-caffe (default {DEFAULT_ROOT})")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--zoo", action="store_true",
                        help="write tests/fixtures/caffe/zoo/<NAME>.npz for zoo networks (the "
                        "ten original ones by default): outputs and logits only")
    parser.add_argument("--opencv", action="store_true",
                        help="compare OpenCV DNN with the committed fixtures (no chroot needed)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(case_names()))
        return 0
    if args.opencv:
        for name in args.cases or case_names():
            lines = compare_opencv(name)
            print(f"{name}: " + ("agrees with Caffe" if not lines else "\n  ".join(["", *lines])))
        return 0
    if not (args.root / "usr/lib/python3/dist-packages/caffe").exists():
        parser.error(f"{args.root} is not a chroot with python3-caffe (see docs/oracles.md)")
    failures = 0
    if args.zoo:
        from edgecaffe.model.zoo import ZOO

        names = args.cases or [n for n, model in ZOO.items() if not model.tiny]
    for name in (names if args.zoo else args.cases or case_names()):
        try:
            target = run_zoo(name, args.root) if args.zoo else run_case(load_case(name), args.root)
        except Exception as error:  # report every case, then fail
            failures += 1
            print(f"FAIL {name}: {error}", file=sys.stderr)
            continue
        print(f"ok   {name}: {target.relative_to(REPO)} ({target.stat().st_size} bytes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
