"""Forward speed of EdgeCaffe's numpy kernels vs OpenCV DNN 4.x on the zoo networks.

Same caffemodel, same input, same thread count, runs interleaved (ours, OpenCV, ours, ...) so
machine noise hits both alike. Prints per-network medians, the ratio ours / OpenCV (< 1 means we
are faster) and its geometric mean, and the resident memory right after `import edgecaffe`.

    python benchmarks/forward.py [--threads 2] [--repeat 15] [NET ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def import_rss_mb() -> float:
    """RSS of a fresh interpreter after `import edgecaffe` and reading a model (numpy+protobuf)."""
    script = (
        "import edgecaffe, edgecaffe.model.caffe, psutil;"
        "print(psutil.Process().memory_info().rss / 2**20)"
    )
    return float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", help="zoo networks (default: all ten)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    # BLAS reads its thread count when numpy is first imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import cv2
    import numpy as np
    from threadpoolctl import threadpool_info

    import edgecaffe
    from edgecaffe.model.preprocess import preprocess, sample_image
    from edgecaffe.model.zoo import ZOO, zoo_files

    cv2.setNumThreads(args.threads)
    blas = {(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()}
    names = args.nets or [name for name, model in ZOO.items() if not model.tiny]
    print(f"threads {args.threads}, batch {args.batch}, repeat {args.repeat}; "
          f"OpenCV {cv2.__version__}; numpy {np.__version__} BLAS {sorted(blas)}")
    print(f"{'network':<15} {'ours ms':>9} {'OpenCV ms':>10} {'ratio':>7} {'first ours':>11} "
          f"{'first cv':>9}")
    ratios = []
    for name in names:
        prototxt, caffemodel = zoo_files(name, batch=args.batch)
        net = edgecaffe.load_caffe(prototxt, caffemodel)
        reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        x = preprocess(sample_image(), net.input_shape, mean=ZOO[name].mean_bgr)
        ours, theirs = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            net.forward(x)
            ours.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            reference.setInput(x)
            reference.forward()
            theirs.append((time.perf_counter() - started) * 1e3)
        # The first call of each is warm-up (OpenCV allocates and tunes on it).
        ours_ms, theirs_ms = statistics.median(ours[1:]), statistics.median(theirs[1:])
        ratios.append(ours_ms / theirs_ms)
        print(f"{name:<15} {ours_ms:>9.1f} {theirs_ms:>10.1f} {ratios[-1]:>7.2f} "
              f"{ours[0]:>11.1f} {theirs[0]:>9.1f}", flush=True)
        del net, reference
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(f"geometric mean ratio (ours / OpenCV): {geomean:.2f}")
    print(f"RSS after import edgecaffe (+ Caffe reader): {import_rss_mb():.1f} MB")


if __name__ == "__main__":
    main()
