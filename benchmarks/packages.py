"""Memory and load speed of model packages, on the VGG-19 zoo model (ObjectNet, 575 MB).

Each figure comes from a fresh interpreter, so peaks do not mix: the peak RSS (VmHWM) of
splitting the caffemodel into a package, of a layer-by-layer forward from the package and of a
whole-model forward; and the load throughput (MB/s) of per-layer reads from the package against
reading the whole caffemodel, with a warm page cache and a cold one (pages dropped first).

    python benchmarks/packages.py [--net ObjectNet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRELUDE = """
import json, time, numpy as np
from edgecaffe.measure import peak_rss_bytes, rss_bytes
from edgecaffe.model.package import open_package, split, drop_page_cache
from edgecaffe.model.caffe import load_caffe
from edgecaffe.model.preprocess import preprocess, sample_image
def image(net):
    return preprocess(sample_image(), net.input_shape)
idle = rss_bytes()
"""

PHASES = {
    "split": "split([PROTOTXT, CAFFEMODEL], PACKAGE)\nresult = {}",
    "layer_by_layer": "p = open_package(PACKAGE)\np.forward(image(p))\nresult = {}",
    "whole_model": "net = load_caffe(PROTOTXT, CAFFEMODEL)\nnet.forward(image(net))\nresult = {}",
    "package_loads": """
p = open_package(PACKAGE)
started = time.perf_counter()
for layer in p.network.layers:
    p.load(layer.name, cold=COLD)
    p.free(layer.name)
result = {"seconds": time.perf_counter() - started, "bytes": p.weight_bytes}
""",
    "caffemodel_load": """
if COLD:
    drop_page_cache(CAFFEMODEL)
started = time.perf_counter()
net = load_caffe(PROTOTXT, CAFFEMODEL)
result = {"seconds": time.perf_counter() - started, "bytes": net.weight_bytes}
""",
}


def run_phase(phase: str, files: dict[str, str], cold: bool = False) -> dict:
    script = PRELUDE + "\n".join(f"{k} = {v!r}" for k, v in files.items()) + f"\nCOLD = {cold}\n"
    script += PHASES[phase] + "\nresult.update(peak=peak_rss_bytes(), idle=idle)\n"
    script += "print(json.dumps(result))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="ObjectNet")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from edgecaffe.model.network import Network  # noqa: F401 - fail early if not installed
    from edgecaffe.model.package import open_package
    from edgecaffe.model.zoo import zoo_files

    prototxt, caffemodel = zoo_files(args.net)
    with tempfile.TemporaryDirectory() as folder:
        files = {"PROTOTXT": str(prototxt), "CAFFEMODEL": str(caffemodel),
                 "PACKAGE": str(Path(folder) / "pkg")}
        mib = 2**20
        split_run = run_phase("split", files)
        package = open_package(files["PACKAGE"])
        largest = max(layer.weight_bytes for layer in package.network.layers)
        total = package.weight_bytes
        activations = max(package.network.blob_bytes(b) for b in package.network.blob_shapes)
        print(f"{args.net}: {total / 1e6:.1f} MB of weights, largest layer {largest / 1e6:.1f} MB,"
              f" largest activation {activations / 1e6:.1f} MB")
        print(f"split peak RSS: {split_run['peak'] / mib:.0f} MiB (idle interpreter "
              f"{split_run['idle'] / mib:.0f} MiB); goal < 2 x largest layer + 100 MB = "
              f"{(2 * largest + 100e6) / mib:.0f} MiB")
        layered = run_phase("layer_by_layer", files)
        whole = run_phase("whole_model", files)
        print(f"forward peak RSS: layer by layer {layered['peak'] / mib:.0f} MiB, whole model "
              f"{whole['peak'] / mib:.0f} MiB (ratio {layered['peak'] / whole['peak']:.2f}); "
              f"goal layer by layer <= largest layer + activations + 80 MB = "
              f"{(largest + activations + 80e6) / mib:.0f} MiB")
        for cold in (False, True):
            label = "cold" if cold else "warm"
            rates = {}
            for phase in ("package_loads", "caffemodel_load"):
                runs = [run_phase(phase, files, cold) for _ in range(args.repeat)]
                rates[phase] = statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)
            print(f"load throughput ({label} page cache, median of {args.repeat}): per-layer "
                  f"package reads {rates['package_loads']:.0f} MB/s, whole caffemodel "
                  f"{rates['caffemodel_load']:.0f} MB/s "
                  f"(ratio {rates['package_loads'] / rates['caffemodel_load']:.2f})")


if __name__ == "__main__":
    main()
