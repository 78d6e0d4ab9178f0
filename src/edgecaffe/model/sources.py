"""Why one command-line argument is not a model, said in the user's terms.

`run`, `split` and `profile` take a model as a zoo name, a package folder, an original network
folder, an `.onnx` file, or a prototxt with its caffemodel. When a single argument is none of
these, the usual mistakes (an image given as the model, a prototxt without its weights, a
caffemodel without its description, a folder that is not a package) each get their own message
instead of "no zoo network ...".
"""

from __future__ import annotations

from pathlib import Path

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def explain_source(text: str, command: str = "run") -> str | None:
    """The reason `text` (one argument) is not a model, with the command that would work, or
    None when it names no file or folder (the caller then tries it as a zoo name)."""
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        where = "" if path.exists() else " (and there is no such file)"
        return (f"{text}: an image, not a model{where}; give the model first, e.g. "
                f"`edgecaffe run AgeNet --input {text}`" if command == "run" else
                f"{text}: an image, not a model{where}")
    if suffix == ".prototxt":
        if not path.exists():
            return f"{text}: no such file"
        weights = path.with_suffix(".caffemodel")
        hint = (f"`edgecaffe {command} {text} {weights}`" if weights.exists() else
                f"`edgecaffe {command} {text} WEIGHTS.caffemodel` (no {weights.name} beside it; "
                f"`edgecaffe synth {text} -o {weights}` makes seeded weights"
                + (", or pass --synthetic)" if command == "split" else ")"))
        return (f"{text}: a Caffe description needs its weights: give the caffemodel after "
                f"it, {hint}")
    if suffix == ".caffemodel":
        if not path.exists():
            return f"{text}: no such file"
        return (f"{text}: Caffe weights need their description: give the deploy prototxt "
                f"first, `edgecaffe {command} NET.prototxt {text}`")
    if path.is_dir():
        return (f"{text}: a folder, but neither a package (no manifest.yaml; make one with "
                f"`edgecaffe split`) nor an original network folder (no description.yaml)")
    if path.is_file():
        return (f"{text}: not a model file (expected a zoo name, a package folder, an .onnx "
                "file, or a .prototxt with its .caffemodel)")
    if "/" in text or suffix in {".onnx", ".yaml", ".yml"}:
        return f"{text}: no such file or folder"
    return None
