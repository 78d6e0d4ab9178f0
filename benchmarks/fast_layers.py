"""Per layer: our onnxruntime backend against onnxruntime running the whole model, same process.

    python benchmarks/fast_layers.py NET [--rounds 9] [--threads 2] [--all]

Each round runs the network once layer by layer through `BlobRunner` with the onnxruntime
backend (weights prepared, as an engine's load does; BLAS held as an engine's execution running
alone), then once as one whole-model onnxruntime session (exported by `edgecaffe export`, idle
threads sleeping as ours do, profiling on), after a pause each: the two alternate, so machine
noise hits both alike. Printed per layer: our median ms and the median of the whole model's
nodes that come from that layer (`<layer>_nchwc`, `fused <layer>`, `<layer>:Sub`...); the
whole model's reorder nodes, which belong to no layer, are summed on a line of their own.
Then the medians of both forward times and the load average: the machine may be shared, and
a sum of per-layer medians is not the median of the sums.

Layers under 0.05 ms on both sides are left out unless `--all`. Layers our runner passes
through (a ReLU fused into the layer before it, a BatchNorm folded into its Scale) show
~0.01 ms: their work is in the line of the layer that does it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def whole_model_profile(profile_path: str) -> dict[str, float]:
    """Layer name -> summed median ms of the whole model's nodes from that layer."""
    with open(profile_path) as file:
        events = json.load(file)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["name"][: -len("_kernel_time")]].append(event["dur"] / 1e3)
    per_layer: dict[str, float] = collections.defaultdict(float)
    for node, values in times.items():
        layer = node.removeprefix("fused ").split(":")[0].removesuffix("_nchwc")
        if layer.startswith(("ReorderInput", "ReorderOutput")):
            layer = "(reorders)"
        per_layer[layer] += statistics.median(values[1:] or values)  # first run: warm-up
    return per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", help="a zoo network (edgecaffe.model.zoo)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause-ms", type=float, default=100.0)
    parser.add_argument("--all", action="store_true", help="print every layer")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

    import numpy as np
    import onnxruntime as ort

    import edgecaffe
    from edgecaffe.blas import BlasHold
    from edgecaffe.model.network import BlobRunner
    from edgecaffe.model.onnx.export import export_onnx
    from edgecaffe.model.zoo import zoo_files

    net = edgecaffe.load_caffe(*zoo_files(args.net, batch=1))
    x = np.random.default_rng(0).uniform(-100, 100, net.input_shape).astype(np.float32)
    prepared = net.prepared_weights("onnxruntime")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{args.net}.onnx"
        export_onnx(net, path, check=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        ours: dict[str, list[float]] = {}
        totals: dict[str, list[float]] = {"ours": [], "whole": []}
        hold = BlasHold(args.threads, args.threads)
        hold.enter()
        BlasHold.exec_begin()
        try:
            for round_ in range(1 + args.rounds):  # the first round warms up
                time.sleep(args.pause_ms / 1e3)
                runner = BlobRunner(net, x, backend="onnxruntime")
                begun = time.perf_counter()
                for layer in runner.layers:
                    started = time.perf_counter()
                    runner.run(layer, prepared.get(layer.name, {}))
                    if round_:
                        ours.setdefault(layer.name, []).append(
                            (time.perf_counter() - started) * 1e3)
                ours_ms = (time.perf_counter() - begun) * 1e3
                time.sleep(args.pause_ms / 1e3)
                begun = time.perf_counter()
                session.run(None, feed)
                if round_:
                    totals["ours"].append(ours_ms)
                    totals["whole"].append((time.perf_counter() - begun) * 1e3)
        finally:
            BlasHold.exec_end()
            hold.leave()
        whole = whole_model_profile(session.end_profiling())
    ops = {layer.name: layer.op for layer in net.layers}
    print(f"{args.net}: ms per layer, medians of {args.rounds} alternating rounds, "
          f"{args.threads} threads")
    print(f"{'layer':<32}{'op':<12}{'ours':>9}{'whole':>9}")
    for name, values in ours.items():
        mine, theirs = statistics.median(values), whole.get(name, 0.0)
        if args.all or max(mine, theirs) >= 0.05:
            print(f"{name:<32}{ops[name]:<12}{mine:>9.2f}{theirs:>9.2f}")
    print(f"{'(reorders)':<32}{'':<12}{'':>9}{whole.get('(reorders)', 0.0):>9.2f}")
    print(f"forward: ours {statistics.median(totals['ours']):.1f} ms, whole model "
          f"{statistics.median(totals['whole']):.1f} ms; load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
