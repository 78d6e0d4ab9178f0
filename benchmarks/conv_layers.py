"""Per-layer convolution speed against a plain sgemm of the same shape, in the same run.

For every Conv layer of a zoo network (FaceNet at 1340x1340 by default) it times our kernel and
`np.matmul` of the layer's GEMM shape (M = outputs per group, K = inputs per group * kh * kw,
N = output pixels, once per group), interleaved, and prints both GFLOP/s and their ratio: what
the kernel loses to im2col, bias, banding and allocation.

    python benchmarks/conv_layers.py [--net FaceNet] [--size 1340] [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="FaceNet")
    parser.add_argument("--size", type=int, default=1340, help="input height and width (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--cpu", action="store_true",
                        help="time in process CPU seconds, not wall clock: on a shared machine "
                        "with --threads 1 it measures the work itself (BLAS threads that spin "
                        "while waiting count as work, so not with more threads)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    import edgecaffe
    from edgecaffe.model.network import BlobRunner
    from edgecaffe.model.zoo import zoo_files
    from edgecaffe.ops import backend_kernels, get_op

    kernel = backend_kernels(args.backend).get("Conv")

    def run(inputs, weights, attrs):
        if kernel is None:
            return get_op("Conv").run(inputs, weights, attrs)
        return kernel(inputs, weights, attrs, args.threads)

    prototxt, caffemodel = zoo_files(args.net)
    net = edgecaffe.load_caffe(prototxt, caffemodel, input_shape=(1, 3, args.size, args.size))
    rng = np.random.default_rng(0)
    x = rng.uniform(-50, 50, net.input_shape).astype(np.float32)
    # Every blob once, so each conv can be timed on its real input.
    runner = BlobRunner(net, x, outputs=list(net.blob_shapes))
    for layer in runner.layers:
        runner.run(layer, net.weights.get(layer.name, {}))
    blobs = runner.results()
    print(f"{args.net} at {args.size}px, {args.threads} threads, backend {args.backend}, "
          f"{'CPU' if args.cpu else 'wall'} time, "
          f"load average {os.getloadavg()}")
    print(f"{'layer':<10} {'M':>5} {'K':>6} {'N':>7} {'g':>3} {'GFLOP':>7} {'conv ms':>9} "
          f"{'sgemm ms':>9} {'conv GF/s':>10} {'sgemm GF/s':>10} {'ratio':>6}")
    total_conv = total_gemm = 0.0
    for layer in net.layers:
        if layer.op != "Conv":
            continue
        a = layer.attrs
        xin = blobs[layer.inputs[0]]
        g = a["group"]
        _, _, oh, ow = net.blob_shapes[layer.outputs[0]]
        m, n = a["out_channels"] // g, oh * ow
        k = xin.shape[1] // g * a["kernel"][0] * a["kernel"][1]
        w = rng.standard_normal((g, m, k)).astype(np.float32)
        cols = rng.standard_normal((g, k, n)).astype(np.float32)
        out = np.empty((g, m, n), np.float32)
        weights = net.weights[layer.name]
        conv_t, gemm_t = [], []
        for _ in range(args.repeat):
            t = clock()
            run([xin], weights, a)
            conv_t.append(clock() - t)
            t = clock()
            np.matmul(w, cols, out=out)
            gemm_t.append(clock() - t)
        c_ms, g_ms = statistics.median(conv_t) * 1e3, statistics.median(gemm_t) * 1e3
        gflop = 2 * g * m * k * n / 1e9
        total_conv += c_ms
        total_gemm += g_ms
        print(f"{layer.name:<10} {m:>5} {k:>6} {n:>7} {g:>3} {gflop:>7.2f} {c_ms:>9.1f} "
              f"{g_ms:>9.1f} {gflop / c_ms * 1e3:>10.1f} {gflop / g_ms * 1e3:>10.1f} "
              f"{c_ms / g_ms:>6.2f}", flush=True)
    print(f"{'total':<10} {'':>38} {total_conv:>9.1f} {total_gemm:>9.1f} {'':>21} "
          f"{total_conv / total_gemm:>6.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
