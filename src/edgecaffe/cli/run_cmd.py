"""`edgecaffe run`: one network on one image; prints output shapes, top-5 and timings."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgecaffe.errors import UsageError


def _floats(text: str) -> list[float]:
    """'104,117,123' -> [104.0, 117.0, 123.0] (argparse reports a ValueError as a bad value)."""
    return [float(value) for value in text.split(",")]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "run", help="run a network on an image (zoo name, package, or prototxt + caffemodel)",
        description="Run one network on one image and print its outputs and timings. MODEL is "
        "a zoo name (written with synthetic weights on first use), a package folder (run layer "
        "by layer: load, execute, free), one of the original EdgeCaffe's network folders, or a "
        "deploy prototxt followed by its caffemodel.",
    )
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="zoo name, package folder, original network folder, or "
                        "PROTOTXT CAFFEMODEL")
    parser.add_argument("--input", "-i", default=None,
                        help="image file or .npy NCHW array (default: the built-in sample image)")
    parser.add_argument("--mean", default=None, type=_floats,
                        help="per-channel mean in the input's channel order, e.g. 104,117,123")
    parser.add_argument("--scale", type=float, default=None, help="multiply after the mean")
    parser.add_argument("--rgb", action="store_true", help="the network expects RGB, not BGR")
    parser.add_argument("--outputs", default=None,
                        help="comma-separated blob names to return instead of the outputs")
    parser.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed passes after the first, warm-up pass (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="zoo weight seed (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="zoo input batch (default 1)")
    parser.add_argument("--whole", action="store_true",
                        help="for a package: load every layer first instead of layer by layer")
    parser.set_defaults(handler=run)


def _load(args: argparse.Namespace):
    """(runnable, load ms): a Network, or a ModelPackage run layer by layer."""
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.original import is_original_folder, read_original
    from edgecaffe.model.zoo import get_zoo_model, zoo_files

    started = time.perf_counter()
    if len(args.model) == 2:
        net = load_caffe(*args.model)
    elif len(args.model) != 1:
        raise UsageError("give a zoo name, a package folder, an original network folder, or a "
                         "prototxt and a caffemodel")
    elif (Path(args.model[0]) / "manifest.yaml").exists():
        net = open_package(args.model[0])
        if args.whole:
            net = net.load_all()
    elif is_original_folder(Path(args.model[0])):
        folder = read_original(args.model[0])
        if not folder.caffemodel.exists():
            raise UsageError(f"{folder.caffemodel}: caffemodel not found; make one with "
                             f"`edgecaffe synth {folder.prototxt} -o {folder.caffemodel}`")
        net = load_caffe(folder.prototxt, folder.caffemodel, name=folder.name)
        net.meta.update(folder.preprocess(), labels=folder.labels())
    else:
        model = get_zoo_model(args.model[0])
        prototxt, caffemodel = zoo_files(model.name, seed=args.seed, batch=args.batch)
        started = time.perf_counter()
        net = load_caffe(prototxt, caffemodel, name=model.name)
        net.meta.update(model.meta)
    return net, (time.perf_counter() - started) * 1e3


def _input(args: argparse.Namespace, net):
    import numpy as np

    from edgecaffe.model.preprocess import load_image, preprocess, sample_image

    if args.input and Path(args.input).suffix == ".npy":
        return np.load(args.input), args.input
    image = load_image(args.input) if args.input else sample_image()
    mean = net.meta.get("mean", (0.0, 0.0, 0.0))
    if args.mean:
        mean = args.mean
    scale = args.scale if args.scale is not None else net.meta.get("scale", 1.0)
    order = "RGB" if args.rgb else net.meta.get("channel_order", "BGR")
    x = preprocess(image, net.input_shape, mean=mean, scale=scale, channel_order=order)
    return x, args.input or "built-in sample image"


def _describe(name: str, array, labels: list[str], top: int) -> list[str]:
    import numpy as np

    lines = [f"{name}: shape {'x'.join(map(str, array.shape))}"]
    if array.ndim >= 2 and array.shape[0] > 1:
        lines[0] += f" (showing batch item 0 of {array.shape[0]})"
    scores = array[0].reshape(-1) if array.ndim >= 2 else array.reshape(-1)
    squeezed = [d for d in array.shape[1:] if d != 1]
    if len(squeezed) == 1 and scores.size >= 2 and top > 0:
        order = np.argsort(scores)[::-1][:top]
        for rank, index in enumerate(order, 1):
            label = labels[index] if len(labels) == scores.size else f"class {index}"
            lines.append(f"  {rank}. {label:<16} {scores[index]:.4f}")
    else:
        lines.append(f"  min {array.min():.4g}  max {array.max():.4g}  mean {array.mean():.4g}")
    return lines


def run(args: argparse.Namespace) -> int:
    net, load_ms = _load(args)
    x, source = _input(args, net)
    outputs = args.outputs.split(",") if args.outputs else None
    times_ms = []
    for _ in range(1 + max(0, args.repeat)):
        started = time.perf_counter()
        results = net.forward(x, outputs=outputs)
        times_ms.append((time.perf_counter() - started) * 1e3)
    layers = net.network.layers if hasattr(net, "network") else net.layers
    flops = sum(layer.flops for layer in layers)
    how = " layer by layer from its package" if hasattr(net, "network") else ""
    print(f"{net.name}: {len(layers)} layers, {net.weight_bytes / 1e6:.1f} MB weights, "
          f"{flops / 1e9:.2f} GFLOP{how}; input {'x'.join(map(str, x.shape))} from {source}")
    steady = times_ms[1:] or times_ms
    print(f"open {load_ms:.1f} ms; forward {statistics.median(steady):.1f} ms "
          f"(median of {len(steady)}; first {times_ms[0]:.1f} ms)")
    for name, array in results.items():
        print("\n".join(_describe(name, array, net.meta.get("labels", []), args.top)))
    return 0
