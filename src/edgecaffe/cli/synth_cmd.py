"""`edgecaffe synth PROTOTXT -o OUT.caffemodel`: seeded synthetic weights for any deploy net."""

from __future__ import annotations

import argparse

from edgecaffe.cli.caffe_args import add_caffe_flags, caffe_kwargs


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "synth", help="fill a deploy prototxt with seeded synthetic weights",
        description="Write a real caffemodel holding deterministic He-scaled random weights for "
        "every weight-bearing layer of PROTOTXT (V1 or V2), one layer at a time.",
    )
    parser.add_argument("prototxt", help="deploy .prototxt")
    parser.add_argument("-o", "--output", required=True, help="output .caffemodel")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    add_caffe_flags(parser)
    parser.set_defaults(handler=synth)


def synth(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.caffe.synth import synthesize_caffemodel

    options = caffe_kwargs(args)
    total = load_caffe(args.prototxt, **options).weight_bytes
    bar = Progress(total, "synth")
    network = synthesize_caffemodel(
        args.prototxt, args.output, seed=args.seed,
        progress=lambda layer, nbytes: bar.advance(nbytes, layer), **options,
    )
    seconds = bar.close()
    weighted = sum(1 for layer in network.layers if layer.params)
    print(f"wrote {args.output}: {weighted} weight-bearing layers, {total / 1e6:.1f} MB, "
          f"seed {args.seed}, {seconds:.1f} s")
    return 0
