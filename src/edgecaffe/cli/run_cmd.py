"""`edgecaffe run`: one network on one image; prints output shapes, top-5 (or, for a detector's
DetectionOutput, the boxes and scores) and timings, or all of it as JSON."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.cli.caffe_args import add_caffe_flags, caffe_kwargs
from edgecaffe.errors import UsageError
from edgecaffe.model.classes import top_classes


def _floats(text: str) -> list[float]:
    """'104,117,123' -> [104.0, 117.0, 123.0] (argparse reports a ValueError as a bad value)."""
    return [float(value) for value in text.split(",")]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "run", help="run a network on an image (zoo name, package, .onnx, or prototxt + "
        "caffemodel)",
        description="Run one network on one image and print its outputs (named top-k classes "
        "when the model carries labels) and timings. MODEL is a zoo name (written with "
        "synthetic weights on first use), a package folder (run layer by layer: load, execute, "
        "free), one of the original EdgeCaffe's network folders, an .onnx file (labels and "
        "preprocessing from its side file MODEL.onnx.yaml), or a deploy prototxt followed by "
        "its caffemodel.",
    )
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="zoo name, package folder, original network folder, MODEL.onnx, "
                        "or PROTOTXT CAFFEMODEL")
    parser.add_argument("--input-shape", default=None, metavar="DIMS",
                        help="ONNX input shape, e.g. 1,3,224,224 (fills symbolic dims such as "
                        "the batch; default: the file's, symbolic dims 1)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (outputs, top classes, timings) instead")
    parser.add_argument("--input", "--image", "-i", default=None,
                        help="image file or .npy NCHW array (default: the built-in sample image)")
    parser.add_argument("--mean", default=None, type=_floats,
                        help="per-channel mean in the input's channel order, e.g. 104,117,123")
    parser.add_argument("--scale", type=float, default=None, help="multiply after the mean")
    parser.add_argument("--rgb", action="store_true", help="the network expects RGB, not BGR")
    parser.add_argument("--nhwc", action="store_true",
                        help="the network's input is NHWC (TensorFlow exports), not NCHW")
    parser.add_argument("--outputs", default=None,
                        help="comma-separated blob names to return instead of the outputs")
    parser.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="detectors (SSD DetectionOutput): show boxes scoring at least this "
                        "(default 0.5)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed passes after the first, warm-up pass (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="zoo weight seed (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="zoo input batch (default 1)")
    parser.add_argument("--whole", action="store_true",
                        help="for a package: load every layer first instead of layer by layer")
    add_caffe_flags(parser)
    add_backend_flag(parser)
    parser.set_defaults(handler=run)


def _load(args: argparse.Namespace):
    """(runnable, load ms): a Network, or a ModelPackage run layer by layer."""
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.original import is_original_folder, read_original
    from edgecaffe.model.sources import explain_source
    from edgecaffe.model.zoo import ZOO, get_zoo_model, zoo_files

    if args.batch < 1:
        raise UsageError("--batch must be 1 or more")
    started = time.perf_counter()
    options = caffe_kwargs(args)
    if len(args.model) == 1 and Path(args.model[0]).suffix.lower() == ".onnx":
        from edgecaffe.model.onnx import load_onnx

        if options:
            raise ValueError("--stage, --level and --input-size apply to Caffe files; give an "
                             "ONNX model's shape with --input-shape")
        shape = [int(d) for d in args.input_shape.split(",")] if args.input_shape else None
        net = load_onnx(args.model[0], input_shape=shape)
    elif len(args.model) == 2:
        net = load_caffe(*args.model, **options)
    elif len(args.model) != 1:
        raise UsageError("give a zoo name, a package folder, an original network folder, or a "
                         "prototxt and a caffemodel")
    elif (Path(args.model[0]) / "manifest.yaml").exists():
        if options:
            raise ValueError("--stage, --level and --input-size apply to Caffe files; a package "
                             "has its shapes fixed: split it again with them")
        net = open_package(args.model[0])
        if args.whole:
            net = net.load_all()
    elif is_original_folder(Path(args.model[0])):
        folder = read_original(args.model[0])
        if not folder.caffemodel.exists():
            raise UsageError(f"{folder.caffemodel}: caffemodel not found; make one with "
                             f"`edgecaffe synth {folder.prototxt} -o {folder.caffemodel}`")
        image_hw = _image_size(args) if folder.use_scales else None
        net = load_caffe(folder.prototxt, folder.caffemodel, name=folder.name,
                         **{**folder.load_options(image_hw), **options})
        net.meta.update(folder.preprocess(), labels=folder.labels())
    elif args.model[0].lower() not in {name.lower() for name in ZOO} and \
            (reason := explain_source(args.model[0])) is not None:
        raise UsageError(reason)  # a zoo name wins over a folder that happens to share it
    else:
        model = get_zoo_model(args.model[0])
        prototxt, caffemodel = zoo_files(model.name, seed=args.seed, batch=args.batch)
        started = time.perf_counter()
        net = load_caffe(prototxt, caffemodel, name=model.name, **options)
        net.meta.update(model.meta, zoo=True, seed=args.seed)
    return net, (time.perf_counter() - started) * 1e3


def _image_size(args: argparse.Namespace) -> tuple[int, int] | None:
    """H, W of the input image (None for a .npy input, whose shape is already the net's)."""
    from edgecaffe.model.preprocess import load_image, sample_image

    if args.input and Path(args.input).suffix == ".npy":
        return None
    image = load_image(args.input) if args.input else sample_image()
    return image.shape[0], image.shape[1]


def _input(args: argparse.Namespace, net):
    import numpy as np

    from edgecaffe.model.preprocess import load_image, preprocess_for, sample_image

    if args.input and Path(args.input).suffix == ".npy":
        return np.load(args.input), args.input, None
    image = load_image(args.input) if args.input else sample_image()
    meta = dict(net.meta)
    if args.mean:
        meta["mean"] = args.mean
    if args.scale is not None:
        meta["scale"] = args.scale
    if args.rgb:
        meta["channel_order"] = "RGB"
    if args.nhwc:
        meta["layout"] = "NHWC"
    x = preprocess_for(image, net.input_shape, meta)
    return x, args.input or "built-in sample image", image.shape[:2]


def _describe(name: str, array, labels: list[str], top: int, ranked: bool) -> list[str]:
    """Lines for one output blob: its top classes when it holds class scores (see
    `top_classes`), else its value range (a feature vector or map)."""
    lines = [f"{name}: shape {'x'.join(map(str, array.shape))}"]
    if array.ndim >= 2 and array.shape[0] > 1:
        lines[0] += f" (showing batch item 0 of {array.shape[0]})"
    classes = top_classes(array, labels, top, ranked)
    if classes is not None:
        lines[0] += f", top {len(classes)} classes"
        lines += [f"  {c['rank']}. {c['label']:<16} {c['score']:.4f}" for c in classes]
    else:
        squeezed = [d for d in array.shape[1:] if d != 1]
        kind = "feature vector" if len(squeezed) == 1 else "values"
        lines.append(f"  {kind}: min {array.min():.4g}  max {array.max():.4g}  "
                     f"mean {array.mean():.4g}")
    return lines


def _labels_for(net, name: str) -> list[str]:
    """Labels apply to the output the model names (`output`), or to any when it names none."""
    wanted = net.meta.get("output")
    return list(net.meta.get("labels", [])) if wanted in (None, name) else []


def _synthetic_note(net, model: list[str]) -> str | None:
    """Why the outputs mean nothing, when the weights are seeded synthetic ones (a zoo network,
    or a package split from one or with --synthetic)."""
    manifest = getattr(net, "manifest", None)
    source = (manifest or {}).get("source") or {}
    if manifest is None and not (len(model) == 1 and net.meta.get("zoo")):
        return None
    if manifest is not None and not source.get("synthetic"):
        return None
    seed = source.get("seed", net.meta.get("seed"))
    return (f"note: {net.name} has seeded synthetic (random) weights"
            + (f", seed {seed}" if seed is not None else "") + ": the outputs below show "
            "that the network runs and how fast, not what the image shows")


def describe_detections(name: str, array, image_size: tuple[int, int] | None,
                        threshold: float, labels: list[str]) -> list[str]:
    """Lines for an SSD DetectionOutput blob (1 x 1 x N x 7 rows [image, label, score, xmin,
    ymin, xmax, ymax], corners relative to the image): the rows scoring >= threshold, with
    corners in pixels of the original image when its (height, width) is known."""
    rows = array.reshape(-1, 7)
    found = rows[(rows[:, 1] >= 0) & (rows[:, 2] >= threshold)]
    unit = "relative to the image"
    scale = [1.0, 1.0, 1.0, 1.0]
    if image_size is not None:
        height, width = image_size
        unit = f"pixels of the {width}x{height} image"
        scale = [width, height, width, height]
    lines = [f"{name}: {len(found)} detection(s) with score >= {threshold:g} "
             f"(of {int(sum(rows[:, 1] >= 0))} the net kept); boxes in {unit}"]
    for image, label, score, *box in found:
        named = labels[int(label)] if 0 <= int(label) < len(labels) else f"class {int(label)}"
        corners = ", ".join(f"{v * s:.1f}" if image_size else f"{v:.4f}"
                            for v, s in zip(box, scale, strict=True))
        lines.append(f"  image {int(image)}  {named:<12} score {score:.4f}  "
                     f"box (xmin, ymin, xmax, ymax) = ({corners})")
    return lines


def run(args: argparse.Namespace) -> int:
    net, load_ms = _load(args)
    x, source, image_size = _input(args, net)
    outputs = args.outputs.split(",") if args.outputs else None
    extra = {}
    if args.backend != "numpy" and not hasattr(net, "network"):
        # A whole model in memory: its weights in the backend's layout once, as part of
        # opening it (a package prepares each layer as it loads it).
        started = time.perf_counter()
        extra["weights"] = net.prepared_weights(args.backend)
        load_ms += (time.perf_counter() - started) * 1e3
    times_ms = []
    for _ in range(1 + max(0, args.repeat)):
        started = time.perf_counter()
        results = net.forward(x, outputs=outputs, backend=args.backend, **extra)
        times_ms.append((time.perf_counter() - started) * 1e3)
    layers = net.network.layers if hasattr(net, "network") else net.layers
    flops = sum(layer.flops for layer in layers)
    note = _synthetic_note(net, args.model)
    softmax = {blob for layer in layers if layer.op == "Softmax" for blob in layer.outputs}
    if args.json:
        _print_json(net, x, source, results, layers, flops, load_ms, times_ms, args.top,
                    softmax, note)
        return 0
    if note:
        print(note)
    how = " layer by layer from its package" if hasattr(net, "network") else ""
    print(f"{net.name}: {len(layers)} layers, {net.weight_bytes / 1e6:.1f} MB weights, "
          f"{flops / 1e9:.2f} GFLOP{how}; input {'x'.join(map(str, x.shape))} from {source}")
    steady = times_ms[1:] or times_ms
    print(f"open {load_ms:.1f} ms; forward {statistics.median(steady):.1f} ms "
          f"(median of {len(steady)}; first {times_ms[0]:.1f} ms)")
    detections = {blob for layer in layers if layer.op == "DetectionOutput"
                  for blob in layer.outputs}
    for name, array in results.items():
        labels = _labels_for(net, name)
        if name in detections:
            lines = describe_detections(name, array, image_size, args.threshold, labels)
        else:
            lines = _describe(name, array, labels, args.top, name in softmax)
        print("\n".join(lines))
    return 0


def _print_json(net, x, source, results, layers, flops, load_ms, times_ms, top, softmax,
                note) -> None:
    import json

    steady = times_ms[1:] or times_ms
    outputs = {}
    for name, array in results.items():
        entry = {"shape": list(array.shape)}
        classes = top_classes(array, _labels_for(net, name), top, name in softmax)
        if classes is not None:
            entry["top"] = classes
        if array.size <= 1000:
            entry["values"] = array.tolist()
        outputs[name] = entry
    print(json.dumps({
        "model": net.name, "layers": len(layers), "weight_bytes": int(net.weight_bytes),
        "flops": int(flops), "input": source, "input_shape": list(x.shape),
        "open_ms": round(load_ms, 3), "forward_ms": round(statistics.median(steady), 3),
        "first_forward_ms": round(times_ms[0], 3), "synthetic_weights": note is not None,
        "outputs": outputs}, indent=2))
