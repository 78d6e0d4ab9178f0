"""`edgecaffe split SOURCE -o DIR`: make a model package (manifest + one weight file per layer)."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "split", help="split a model into a package with one weight file per layer",
        description="Write a model package: manifest.yaml (layers, shapes, bytes, FLOPs, "
        "preprocessing, labels) and weights/NNN_<layer>.safetensors for every weight-bearing "
        "layer. SOURCE is a zoo name, one of the original EdgeCaffe's network folders "
        "(description.yaml + prototxt + caffemodel), or PROTOTXT CAFFEMODEL. Streams: one "
        "layer's weights in memory at a time.",
    )
    parser.add_argument("source", nargs="+", metavar="SOURCE",
                        help="zoo name | original network folder | PROTOTXT CAFFEMODEL")
    parser.add_argument("-o", "--output", required=True, help="package folder to write")
    parser.add_argument("--synthetic", action="store_true",
                        help="seeded synthetic weights instead of the caffemodel's")
    parser.add_argument("--seed", type=int, default=0, help="seed for synthetic weights")
    parser.add_argument("--batch", type=int, default=1, help="input batch of zoo networks")
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

    bar = Progress(0, "split")  # total unknown until the network is read: shows MB done
    package = split(args.source, args.output, seed=args.seed, batch=args.batch,
                    synthetic=args.synthetic, progress=lambda layer, n: bar.advance(n, layer))
    seconds = bar.close()
    weighted = sum(1 for layer in package.network.layers if layer.params)
    print(f"wrote package {args.output}: {package.name}, {len(package.network.layers)} layers "
          f"({weighted} with weights), {package.weight_bytes / 1e6:.1f} MB, {seconds:.1f} s")
    return 0
