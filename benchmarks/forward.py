"""Forward speed per network: our numpy kernels, our onnxruntime backend, OpenCV DNN 4.x and
onnxruntime running the whole model, interleaved, on the same thread count.

Networks: the ten zoo networks at batch 1 and FaceNet at 1340 x 1340 (`FaceNet@1340`; any zoo
name takes `@SIZE`). Each round times every contender once, in turn, so machine noise hits all
alike; medians over the rounds after a warm-up round. Printed per network: medians (ms), the
ratios numpy / OpenCV (issue 14's goal: <= 0.5) and fast / onnxruntime-whole (goal: <= 1.2;
`fast/best` against the faster of onnxruntime's default session, whose idle threads spin, and
one whose threads sleep as ours do), and the load average over the network's rounds: on a
shared machine the figures are noisy. Our backend's weights are prepared once before the
rounds (`Network.prepared_weights`), as the engine's load tasks and onnxruntime's session
creation do.

The whole-model onnxruntime peer needs `edgecaffe export`'s exporter
(`edgecaffe.model.onnx.export.export_onnx`); where it is not installed that column reads n/a.
At the end: RSS after `import edgecaffe`, after choosing the onnxruntime backend, and the cost
of creating one single-operator session.

    python benchmarks/forward.py [--threads 2] [--repeat 7] [NET ...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("numpy", "fast", "opencv", "ort_whole", "ort_nospin")


def rss_mb(code: str) -> float:
    """RSS (MB) of a fresh interpreter after running `code`."""
    script = f"{code}\nimport psutil; print(psutil.Process().memory_info().rss / 2**20)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def session_cost_ms(threads: int, count: int = 20) -> float:
    """Median ms to create a one-operator Conv session (a fresh signature every time)."""
    from edgecaffe.ops.fast import new_session
    from edgecaffe.ops.onnx_wire import one_node_model

    times = []
    for i in range(count):
        size = 16 + i
        model = one_node_model("Conv", {"X": (1, 64, size, size), "W": (64, 64, 3, 3)},
                               {"Y": (1, 64, size - 2, size - 2)}, {"kernel_shape": [3, 3]})
        started = time.perf_counter()
        new_session(model, threads)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def whole_model_session(net, folder: Path, threads: int, spinning: bool = True):
    """onnxruntime on the whole network exported to ONNX, or the reason it cannot run;
    `spinning` False: its idle threads sleep, as our backend's sessions' do."""
    try:
        from edgecaffe.model.onnx.export import export_onnx
    except ImportError:
        return None, "needs edgecaffe's ONNX exporter (the onnx branch)"
    import onnxruntime as ort

    path = folder / f"{net.name}.onnx"
    try:
        export_onnx(net, path, check=False)
    except Exception as error:  # an operator the exporter lacks: report, go on
        return None, f"export failed: {error}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), ""


def contenders(net, prototxt: Path, caffemodel: Path, folder: Path, threads: int):
    """name -> callable(x) for every contender that can run, and the reasons for those that
    cannot."""
    import cv2

    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)

    def opencv(x):
        reference.setInput(x)
        return reference.forward()

    # The fast backend's weights in its own layout (blocked convolution filters), prepared
    # once as the engine does when it loads a layer and as onnxruntime does when it builds
    # the whole-model session: neither side's timing includes that step.
    prepared = net.prepared_weights("onnxruntime")
    runs = {"numpy": lambda x: net.forward(x),
            "fast": lambda x: net.forward(x, backend="onnxruntime", weights=prepared),
            "opencv": opencv}
    # The whole-model peer twice: onnxruntime's defaults (idle threads spin) and with
    # sleeping threads like ours; spinning wins on a quiet machine, loses on a loaded one.
    for key, spinning in (("ort_whole", True), ("ort_nospin", False)):
        session, why = whole_model_session(net, folder, threads, spinning)
        if session is None:
            return runs, {"ort_whole": why}
        runs[key] = (lambda s, n: lambda x: s.run(None, {n: x}))(
            session, session.get_inputs()[0].name)
    return runs, {}


def parse_name(spec: str) -> tuple[str, int | None]:
    name, _, size = spec.partition("@")
    return name, int(size) if size else None


def bench_network(spec: str, args, folder: Path) -> dict[str, float]:
    import numpy as np

    import edgecaffe
    from edgecaffe.model.zoo import zoo_files

    name, size = parse_name(spec)
    prototxt, caffemodel = zoo_files(name, batch=args.batch)
    options = {"input_shape": (args.batch, 3, size, size)} if size else {}
    net = edgecaffe.load_caffe(prototxt, caffemodel, **options)
    x = np.random.default_rng(0).uniform(-100, 100, net.input_shape).astype(np.float32)
    runs, missing = contenders(net, prototxt, caffemodel, folder, args.threads)
    times: dict[str, list[float]] = {key: [] for key in runs}
    load = [os.getloadavg()[0]]
    rounds = args.repeat if size is None else max(3, args.repeat // 2)
    for _ in range(1 + rounds):  # the first round warms up (allocators, OpenCV's setup)
        for key, run in runs.items():
            started = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - started) * 1e3)
    load.append(os.getloadavg()[0])
    med = {key: statistics.median(values[1:]) for key, values in times.items()}
    cells = [f"{med[k]:>{w}.1f}" if k in med else f"{'n/a':>{w}}"
             for k, w in zip(CONTENDERS, (10, 10, 10, 10, 11), strict=True)]
    ratio_cv = med["numpy"] / med["opencv"]
    ratio_fast = med["fast"] / med.get("ort_whole", math.nan)
    # Against the faster of the two whole-model settings.
    ratio_best = med["fast"] / min(med.get("ort_whole", math.nan), med.get("ort_nospin", math.nan))
    print(f"{spec:<15}" + "".join(cells) + f"{ratio_cv:>9.2f}{ratio_fast:>9.2f}{ratio_best:>10.2f}"
          f"{med['fast'] / med['numpy']:>9.2f}   {load[0]:.1f}-{load[1]:.1f}", flush=True)
    for key, why in missing.items():
        print(f"{'':<15}{key}: {why}", flush=True)
    return {"numpy/opencv": ratio_cv, "fast/ort_whole": ratio_fast,
            "fast/faster_ort": ratio_best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*",
                        help="zoo networks, NAME@SIZE for another input size (default: the ten "
                        "at their size, and FaceNet@1340)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (halved for @SIZE)")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    # BLAS reads its thread count when numpy is first imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import cv2
    import numpy as np
    import onnxruntime as ort
    from threadpoolctl import threadpool_info

    from edgecaffe.model.zoo import ZOO

    cv2.setNumThreads(args.threads)
    blas = sorted({(i["internal_api"], i.get("architecture"), i["num_threads"])
                   for i in threadpool_info()})
    names = args.nets or [*(n for n, m in ZOO.items() if not m.tiny), "FaceNet@1340"]
    print(f"threads {args.threads}, batch {args.batch}, {args.repeat} rounds; OpenCV "
          f"{cv2.__version__}; onnxruntime {ort.__version__}; numpy {np.__version__} BLAS {blas}")
    print("load average: 1-minute, before-after each network's rounds (the machine may be "
          "shared: figures are noisy)")
    print(f"{'network':<15}{'numpy':>10}{'fast':>10}{'opencv':>10}{'ort-whole':>10}"
          f"{'ort-nospin':>11}{'np/cv':>9}{'fast/ort':>9}{'fast/best':>10}{'fast/np':>9}   load")
    print("(fast/ort: against ort-whole, onnxruntime's defaults; fast/best: against the faster "
          "of that and ort-nospin, its idle threads sleeping as ours do)")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in names:
            ratios.append(bench_network(spec, args, Path(folder)))
    for key in ("numpy/opencv", "fast/ort_whole", "fast/faster_ort"):
        values = [r[key] for r in ratios if not math.isnan(r[key])]
        if values:
            print(f"{key}: geometric mean {math.exp(statistics.mean(map(math.log, values))):.2f}"
                  f", worst {max(values):.2f} ({len(values)} networks)")
    base = rss_mb("import edgecaffe, edgecaffe.model.caffe")
    fast = rss_mb("import edgecaffe, edgecaffe.model.caffe\n"
                  "from edgecaffe.ops import backend_kernels; backend_kernels('onnxruntime')")
    print(f"RSS after import edgecaffe (+ Caffe reader): {base:.1f} MB; with the onnxruntime "
          f"backend chosen: {fast:.1f} MB (+{fast - base:.1f} MB)")
    print(f"one-operator session creation: {session_cost_ms(args.threads):.2f} ms (median of 20)")


if __name__ == "__main__":
    main()
