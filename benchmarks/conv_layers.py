"""Per-layer convolution speed against a plain sgemm of the same shape, in the same run.

For every Conv layer of a zoo network (FaceNet at 1340x1340 by default; `--size 0`: the
network's own input size) it times our kernel, the same kernel with the Winograd path off
(im2col + GEMM), and a plain product of the layer's im2col GEMM shape (M = outputs per group,
K = inputs per group * kh * kw, N = output pixels, once per group), interleaved, and prints
GFLOP/s (the im2col GEMM's FLOPs over each time) and the ratios: what the kernel loses to
im2col, bias, banding and allocation, or gains by Winograd (`path`: wino, im2col or 1x1).

`--engine` times as an engine runs a network alone: OpenBLAS on one thread, products split
across `--threads` of our threads (the plain product is then `ops.gemm.matmul`, split the
same way); without it, `np.matmul` on OpenBLAS's own `--threads` threads.

    python benchmarks/conv_layers.py [--net FaceNet] [--size 1340] [--threads 2] [--repeat 5]
                                     [--engine]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="FaceNet")
    parser.add_argument("--size", type=int, default=1340,
                        help="input height and width (px); 0: the network's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--cpu", action="store_true",
                        help="time in process CPU seconds, not wall clock: on a shared machine "
                        "with --threads 1 it measures the work itself (BLAS threads that spin "
                        "while waiting count as work, so not with more threads)")
    parser.add_argument("--engine", action="store_true",
                        help="split products across our threads as an engine does")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    from unittest import mock

    import numpy as np

    import edgecaffe
    from edgecaffe.blas import BlasHold
    from edgecaffe.model.network import BlobRunner
    from edgecaffe.model.zoo import zoo_files
    from edgecaffe.ops import backend_kernels, gemm, get_op, winograd
    from edgecaffe.ops.base import output_chunk

    kernel = backend_kernels(args.backend).get("Conv")

    def run(inputs, weights, attrs):
        if kernel is None:
            return get_op("Conv").run(inputs, weights, attrs)
        return kernel(inputs, weights, attrs, args.threads)

    prototxt, caffemodel = zoo_files(args.net)
    shape = {"input_shape": (1, 3, args.size, args.size)} if args.size else {}
    net = edgecaffe.load_caffe(prototxt, caffemodel, **shape)
    product = np.matmul
    if args.engine:
        BlasHold(args.threads, args.threads).enter()
        BlasHold.exec_begin()
        product = gemm.matmul
    im2col_only = mock.patch.object(winograd, "applies", lambda *a: False)
    rng = np.random.default_rng(0)
    x = rng.uniform(-50, 50, net.input_shape).astype(np.float32)
    # Every blob once, so each conv can be timed on its real input.
    runner = BlobRunner(net, x, outputs=list(net.blob_shapes))
    for layer in runner.layers:
        runner.run(layer, net.weights.get(layer.name, {}))
    blobs = runner.results()
    print(f"{args.net} at {net.input_shape[2]}px, {args.threads} threads "
          f"({'ours, OpenBLAS on 1' if args.engine else 'OpenBLAS'}), backend {args.backend}, "
          f"{'CPU' if args.cpu else 'wall'} time, "
          f"load average {os.getloadavg()}")
    print(f"{'layer':<16} {'path':>6} {'M':>5} {'K':>6} {'N':>7} {'g':>3} {'GFLOP':>7} "
          f"{'conv ms':>8} {'im2col':>8} {'sgemm':>8} {'conv GF/s':>10} {'sgemm GF/s':>10} "
          f"{'conv/sg':>8} {'i2c/sg':>7}")
    total_conv = total_gemm = total_im2col = 0.0
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
        conv_t, gemm_t, im2col_t = [], [], []
        pointwise = tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1) \
            and not any(a["pad"])
        path = "1x1" if pointwise else "im2col"
        chunked = g == 1 and output_chunk(weights["weight"].nbytes) is not None
        if winograd.applies(xin.shape[1], a["kernel"], a["stride"], a["dilation"], g, (oh, ow),
                            a["out_channels"], chunked):
            path = "wino"
        for _ in range(args.repeat):
            t = clock()
            run([xin], weights, a)
            conv_t.append(clock() - t)
            with im2col_only:
                t = clock()
                run([xin], weights, a)
                im2col_t.append(clock() - t)
            t = clock()
            product(w, cols, out=out)
            gemm_t.append(clock() - t)
        c_ms, g_ms = statistics.median(conv_t) * 1e3, statistics.median(gemm_t) * 1e3
        i_ms = statistics.median(im2col_t) * 1e3
        gflop = 2 * g * m * k * n / 1e9
        total_conv += c_ms
        total_gemm += g_ms
        total_im2col += i_ms
        print(f"{layer.name:<16} {path:>6} {m:>5} {k:>6} {n:>7} {g:>3} {gflop:>7.2f} "
              f"{c_ms:>8.1f} {i_ms:>8.1f} {g_ms:>8.1f} {gflop / c_ms * 1e3:>10.1f} "
              f"{gflop / g_ms * 1e3:>10.1f} {c_ms / g_ms:>8.2f} {i_ms / g_ms:>7.2f}", flush=True)
    print(f"{'total':<16} {'':>45} {total_conv:>8.1f} {total_im2col:>8.1f} {total_gemm:>8.1f} "
          f"{'':>21} {total_conv / total_gemm:>8.2f} {total_im2col / total_gemm:>7.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
