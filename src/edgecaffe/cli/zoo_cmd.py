"""`edgecaffe zoo list` and `edgecaffe zoo write NAME -o DIR`."""

from __future__ import annotations

import argparse

from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "zoo", help="list the built-in networks or write one as prototxt + caffemodel",
        description="The ten networks of the original EdgeCaffe experiments (and tiny test "
        "networks), defined by EdgeCaffe, with seeded synthetic weights.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list the zoo's networks")
    listing.add_argument("--all", action="store_true", help="include the tiny test networks")
    listing.set_defaults(handler=list_zoo)
    write = actions.add_parser("write", help="write NAME.prototxt and NAME.caffemodel")
    write.add_argument("names", nargs="+", metavar="NAME", help="zoo network(s), or 'all'")
    write.add_argument("-o", "--output", required=True, help="output folder")
    write.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    write.add_argument("--batch", type=int, default=1, help="input batch size (default 1)")
    write.add_argument("--force", action="store_true",
                       help="overwrite NAME.prototxt and NAME.caffemodel if they exist")
    write.set_defaults(handler=write_zoo)


def list_zoo(args: argparse.Namespace) -> int:
    from edgecaffe.model.caffe import build_layers, parse_prototxt
    from edgecaffe.model.network import Network
    from edgecaffe.model.zoo import ZOO

    print(f"{'name':<15} {'input':<16} {'layers':>6} {'weights MB':>10} {'GFLOP':>7}  summary")
    for name, model in ZOO.items():
        if model.tiny and not args.all:
            continue
        net = Network(name, build_layers(parse_prototxt(model.prototxt(), name), name))
        shape = "x".join(map(str, net.input_shape))
        print(f"{name:<15} {shape:<16} {len(net.layers):>6} {net.weight_bytes / 1e6:>10.1f} "
              f"{net.flops / 1e9:>7.2f}  {model.summary}")
    return 0


def write_zoo(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.model.caffe import build_layers, parse_prototxt
    from edgecaffe.model.network import Network
    from edgecaffe.model.zoo import ZOO, get_zoo_model, write_zoo_model

    names = [n for n, m in ZOO.items() if not m.tiny] if args.names == ["all"] else args.names
    models = [get_zoo_model(name) for name in names]
    if args.batch < 1:
        raise UsageError("--batch must be 1 or more")
    from pathlib import Path

    existing = [str(path) for model in models
                for path in (Path(args.output) / f"{model.name}.prototxt",
                             Path(args.output) / f"{model.name}.caffemodel") if path.exists()]
    if existing and not args.force:
        raise UsageError(f"{', '.join(existing)} already exist(s); refusing to overwrite "
                         "(pass --force to replace)")
    for model in models:
        text = model.prototxt(args.batch)
        total = Network(model.name, build_layers(parse_prototxt(text), model.name)).weight_bytes
        bar = Progress(total, f"{model.name:<14}")
        prototxt, caffemodel = write_zoo_model(
            model.name, args.output, seed=args.seed, batch=args.batch,
            progress=lambda layer, nbytes, bar=bar: bar.advance(nbytes, layer),
        )
        seconds = bar.close()
        print(f"wrote {prototxt} and {caffemodel} ({total / 1e6:.1f} MB, seed {args.seed}, "
              f"{seconds:.1f} s)")
    return 0
