"""Forward speed per network: our numpy kernels, our onnxruntime backend, OpenCV DNN 4.x and
onnxruntime running the whole model, interleaved, on the same thread count.

Our kernels run as an engine runs them (`numpy`, `fast`): OpenBLAS on one thread, each product
split across `--threads` of our own threads (`blas.BlasHold`, `ops/gemm.py`). Optional
contenders for before/after tables in the same run: `im2col` (numpy with the Winograd path
off: every convolution as im2col + GEMM) and `numpy_ob` (what `Network.forward` does outside
an engine: OpenBLAS's own `--threads` threads, Winograd off: the kernels before issue 14's
Winograd work). Choose with `--contenders` (any subset: a ratio whose two sides did not both
run reads nan).

Networks: the ten zoo networks at batch 1 and FaceNet at 1340 x 1340 (`FaceNet@1340`; any zoo
name takes `@SIZE`). Each round times every contender once, in turn, so machine noise hits all
alike (in a new random order each round, after a pause: OpenBLAS's, OpenCV's and onnxruntime's
threads spin for a while after a run and slow whoever comes next); medians over the rounds
after a warm-up round. Printed per network: medians (ms), the ratios numpy / OpenCV (issue
14's goal: <= 0.5) and fast / onnxruntime-whole (goal: <= 1.2; also against `ort_nospin`, the
whole model with its idle threads sleeping as ours do: spinning wins on a quiet machine, loses
on a loaded one), and the load average over the network's rounds: on a shared machine the
figures are noisy. Our backend's weights are prepared once before the rounds
(`Network.prepared_weights`), as the engine's load tasks and onnxruntime's session creation do.

The whole-model onnxruntime peer needs `edgecaffe export`'s exporter
(`edgecaffe.model.onnx.export.export_onnx`); where it is not installed that column reads n/a.
At the end: RSS after `import edgecaffe`, after choosing the onnxruntime backend, and the cost
of creating one single-operator session.

    python benchmarks/forward.py [--threads 2] [--repeat 7] [--contenders numpy,opencv,...]
                                 [--cpu] [NET ...]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("numpy", "fast", "opencv", "ort_whole", "ort_nospin")
EXTRA = ("im2col", "numpy_ob")
#: Ratios printed per network (nan where a contender did not run).
RATIOS = (("numpy", "opencv"), ("fast", "ort_whole"), ("fast", "ort_nospin"), ("fast", "numpy"),
          ("im2col", "opencv"), ("numpy_ob", "opencv"))
SHORT = {"numpy": "np", "opencv": "cv", "fast": "fast", "ort_whole": "ort", "im2col": "i2c",
         "numpy_ob": "ob", "ort_nospin": "nospin"}


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


def as_engine(run, threads: int):
    """`run` as an engine's execution running alone: BLAS held (OpenBLAS on one thread, our
    products split across `threads`), one execution begun."""
    from edgecaffe.blas import BlasHold

    def held(x):
        hold = BlasHold(threads, threads)
        hold.enter()
        BlasHold.exec_begin()
        try:
            return run(x)
        finally:
            BlasHold.exec_end()
            hold.leave()
    return held


def without_winograd(run):
    """`run` with every convolution on im2col + GEMM (the kernel before Winograd)."""
    from unittest import mock

    from edgecaffe.ops import winograd

    def im2col(x):
        with mock.patch.object(winograd, "applies", lambda *args: False):
            return run(x)
    return im2col


def contenders(net, prototxt: Path, caffemodel: Path, folder: Path, threads: int,
               chosen: list[str]):
    """name -> callable(x) for every chosen contender that can run, and the reasons for
    those that cannot."""
    import cv2

    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)

    def opencv(x):
        reference.setInput(x)
        return reference.forward()

    # The fast backend's weights in its own layout (blocked convolution filters), prepared
    # once as the engine does when it loads a layer and as onnxruntime does when it builds
    # the whole-model session: neither side's timing includes that step.
    prepared = net.prepared_weights("onnxruntime") if "fast" in chosen else None
    runs = {"numpy": as_engine(lambda x: net.forward(x), threads),
            "fast": as_engine(lambda x: net.forward(x, backend="onnxruntime",
                                                    weights=prepared), threads),
            "opencv": opencv,
            "im2col": as_engine(without_winograd(lambda x: net.forward(x)), threads),
            "numpy_ob": without_winograd(lambda x: net.forward(x))}
    runs = {key: run for key, run in runs.items() if key in chosen}
    missing = {}
    # The whole-model peer: onnxruntime's defaults (idle threads spin), and with sleeping
    # threads like ours.
    for key, spinning in (("ort_whole", True), ("ort_nospin", False)):
        if key not in chosen:
            continue
        session, why = whole_model_session(net, folder, threads, spinning)
        if session is None:
            missing[key] = why
            continue
        runs[key] = (lambda s, n: lambda x: s.run(None, {n: x}))(
            session, session.get_inputs()[0].name)
    return runs, missing


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
    runs, missing = contenders(net, prototxt, caffemodel, folder, args.threads, args.contenders)
    times: dict[str, list[float]] = {key: [] for key in runs}
    load = [os.getloadavg()[0]]
    rounds = args.repeat if size is None else max(3, args.repeat // 2)
    shuffle = random.Random(0).shuffle
    for _ in range(1 + rounds):  # the first round warms up (allocators, OpenCV's setup)
        # A new order every round, after a pause: OpenBLAS's, OpenCV's and onnxruntime's
        # threads spin for a while after a run, which slows whoever comes next (measured: in a
        # fixed order, the numpy kernels after OpenBLAS's and OpenCV's runs took 1.6x the time
        # of the same kernels elsewhere in the round).
        order = list(runs)
        shuffle(order)
        for key in order:
            time.sleep(args.pause_ms / 1e3)
            started = args.clock()
            runs[key](x)
            times[key].append((args.clock() - started) * 1e3)
    load.append(os.getloadavg()[0])
    med = {key: statistics.median(values[1:]) for key, values in times.items()}
    cells = [f"{med[k]:>11.1f}" if k in med else f"{'n/a':>11}" for k in args.contenders]
    ratios = {f"{a}/{b}": med[a] / med[b] if a in med and b in med else math.nan
              for a, b in RATIOS}
    print(f"{spec:<15}" + "".join(cells) + "".join(f"{r:>12.2f}" for r in ratios.values())
          + f"   {load[0]:.1f}-{load[1]:.1f}", flush=True)
    for key, why in missing.items():
        print(f"{'':<15}{key}: {why}", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*",
                        help="zoo networks, NAME@SIZE for another input size (default: the ten "
                        "at their size, and FaceNet@1340)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (halved for @SIZE)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, from {', '.join(CONTENDERS + EXTRA)} "
                        "(default: %(default)s)")
    parser.add_argument("--pause-ms", type=float, default=100.0,
                        help="idle time before each timed run (other runtimes' threads settle)")
    parser.add_argument("--cpu", action="store_true",
                        help="time in process CPU seconds, not wall clock: with --threads 1 on "
                        "a shared machine it measures the work itself (threads that spin while "
                        "waiting count as work, so not with more threads)")
    args = parser.parse_args()
    args.clock = time.process_time if args.cpu else time.perf_counter
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(args.contenders) - set(CONTENDERS + EXTRA)
    if unknown or not args.contenders:
        parser.error(f"contenders: unknown {sorted(unknown)}, or none chosen")
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
    print(f"threads {args.threads}, batch {args.batch}, {args.repeat} rounds, "
          f"{'CPU' if args.cpu else 'wall'} time; OpenCV "
          f"{cv2.__version__}; onnxruntime {ort.__version__}; numpy {np.__version__} BLAS {blas}")
    print("load average: 1-minute, before-after each network's rounds (the machine may be "
          "shared: figures are noisy)")
    print(f"{'network':<15}" + "".join(f"{c:>11}" for c in args.contenders)
          + "".join(f"{SHORT[a]}/{SHORT[b]}".rjust(12) for a, b in RATIOS) + "   load")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in names:
            ratios.append(bench_network(spec, args, Path(folder)))
    for key in (f"{a}/{b}" for a, b in RATIOS):
        values = [r[key] for r in ratios if not math.isnan(r[key])]
        if values:
            print(f"{key}: geometric mean {math.exp(statistics.mean(map(math.log, values))):.2f}"
                  f", worst {max(values):.2f} ({len(values)} networks)")
    if "fast" not in args.contenders:
        return
    base = rss_mb("import edgecaffe, edgecaffe.model.caffe")
    fast = rss_mb("import edgecaffe, edgecaffe.model.caffe\n"
                  "from edgecaffe.ops import backend_kernels; backend_kernels('onnxruntime')")
    print(f"RSS after import edgecaffe (+ Caffe reader): {base:.1f} MB; with the onnxruntime "
          f"backend chosen: {fast:.1f} MB (+{fast - base:.1f} MB)")
    print(f"one-operator session creation: {session_cost_ms(args.threads):.2f} ms (median of 20)")


if __name__ == "__main__":
    main()
