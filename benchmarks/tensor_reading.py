"""Reading one layer's weight file: our reader (`read_tensors`, one `readinto` per tensor into a
fresh array) against the `safetensors` library (`safetensors.numpy.load_file` and `safe_open`).

Each read runs in a fresh interpreter; printed: median wall time over the runs (warm page cache)
and the peak RSS the read added (VmHWM after minus RSS before, MiB). Layers: VGG-19's fc6
(4096x25088 + 4096 float32, 411 MB) and a small conv (64x3x3x3). Run:
`python benchmarks/tensor_reading.py [--runs N]`. Numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgecaffe.model.package.tensorfile import write_tensors

READERS = {
    "edgecaffe read_tensors": "from edgecaffe.model.package.tensorfile import read_tensors\n"
                              "arrays = read_tensors(PATH)",
    "safetensors load_file": "from safetensors.numpy import load_file\narrays = load_file(PATH)",
    "safetensors safe_open": "from safetensors import safe_open\n"
                             "with safe_open(PATH, framework='np') as f:\n"
                             "    arrays = {k: f.get_tensor(k) for k in f.keys()}",
}
PROBE = """
import sys, time
PATH = sys.argv[1]
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import numpy
{imports}
before = status('VmRSS:')
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
assert sum(a.nbytes for a in arrays.values()) > 0
print(seconds, status('VmHWM:') - before)
"""


def measure(path: Path, reader: str, runs: int) -> tuple[float, float]:
    body = READERS[reader]
    imports = "\n".join(line for line in body.splitlines() if line.startswith("from "))
    code = PROBE.format(imports=imports, body="\n".join(
        line for line in body.splitlines() if not line.startswith("from ")))
    times, peaks = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, check=True).stdout.split()
        times.append(float(out[0]))
        peaks.append(int(out[1]))
    return statistics.median(times) * 1e3, statistics.median(peaks) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers = {
        "fc6 (4096x25088, 411 MB)": {"weight": rng.standard_normal((4096, 25088), np.float32),
                                     "bias": rng.standard_normal(4096, np.float32)},
        "conv1_1 (64x3x3x3, 7 KB)": {"weight": rng.standard_normal((64, 3, 3, 3), np.float32),
                                     "bias": rng.standard_normal(64, np.float32)},
    }
    with tempfile.TemporaryDirectory() as folder:
        for label, tensors in layers.items():
            path = Path(folder) / "layer.safetensors"
            size, _ = write_tensors(path, tensors)
            print(f"{label}: file {size / 2**20:.1f} MiB")
            for reader in READERS:
                ms, peak = measure(path, reader, args.runs)
                print(f"  {reader:<24} {ms:9.2f} ms   peak RSS added {peak:7.1f} MiB")


if __name__ == "__main__":
    main()
