"""`edgecaffe split SOURCE -o DIR`: make a model package (manifest + one weight file per layer)."""

from __future__ import annotations

import argparse

from edgecaffe.cli.caffe_args import add_caffe_flags, caffe_kwargs


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "split", help="split a model into a package with one weight file per layer",
        description="Write a model package: manifest.yaml (layers, shapes, bytes, FLOPs, "
        "preprocessing, labels) and weights/NNN_<layer>.safetensors for every weight-bearing "
        "layer. SOURCE is a zoo name, one of the original EdgeCaffe's network folders "
        "(description.yaml + prototxt + caffemodel), MODEL.onnx (with its side file's labels and "
        "preprocessing), or PROTOTXT CAFFEMODEL. Caffe models stream: one layer's weights in "
        "memory at a time.",
    )
    parser.add_argument("source", nargs="+", metavar="SOURCE",
                        help="zoo name | original network folder | MODEL.onnx | "
                        "PROTOTXT CAFFEMODEL")
    parser.add_argument("--input-shape", default=None, metavar="DIMS",
                        help="ONNX input shape, e.g. 4,3,224,224 (fills symbolic dims)")
    parser.add_argument("-o", "--output", required=True, help="package folder to write")
    parser.add_argument("--synthetic", action="store_true",
                        help="seeded synthetic weights instead of the caffemodel's")
    parser.add_argument("--seed", type=int, default=0, help="seed for synthetic weights")
    parser.add_argument("--batch", type=int, default=1, help="input batch of zoo networks")
    add_caffe_flags(parser)
    parser.add_argument("--image", default=None, metavar="FILE",
                        help="the image an original folder with `use-scales: true` will run on: "
                        "its input becomes the image enlarged 5x, as the original does")
    parser.add_argument("--max-block", default=None, metavar="SIZE",
                        help="split Dense (InnerProduct) and group-1 Conv layers with more "
                        "weight bytes than SIZE (e.g. 64M) into blocks along their outputs, "
                        "so that a network runs under a budget smaller than its largest "
                        "layer; outputs stay bit-for-bit the same")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing package at --output (a folder that is not a "
                        "package is never replaced)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecaffe.cli.progress import Progress
    from edgecaffe.errors import UsageError
    from edgecaffe.model.package import split

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.force:
        raise UsageError(f"{output}: already exists and is not empty; refusing to overwrite it "
                         "(pass --force to replace a package there)")

    options = caffe_kwargs(args)
    if args.image:
        from edgecaffe.model.preprocess import load_image

        options["image_size"] = load_image(args.image).shape[:2]
    if args.input_shape:
        if "input_shape" in options:
            raise UsageError("give --input-shape (all dims, ONNX) or --input-size (H x W), "
                             "not both")
        options["input_shape"] = [int(d) for d in args.input_shape.split(",")]
    if args.max_block:
        from edgecaffe.sched.budget import parse_bytes

        options["max_block_bytes"] = parse_bytes(args.max_block)
    bar = Progress(0, "split")  # total unknown until the network is read: shows MB done
    package = split(args.source, args.output, seed=args.seed, batch=args.batch,
                    synthetic=args.synthetic, progress=lambda layer, n: bar.advance(n, layer),
                    **options)
    seconds = bar.close()
    weighted = sum(1 for layer in package.network.layers if layer.params)
    print(f"wrote package {args.output}: {package.name}, {len(package.network.layers)} layers "
          f"({weighted} with weights), {package.weight_bytes / 1e6:.1f} MB, {seconds:.1f} s")
    return 0
