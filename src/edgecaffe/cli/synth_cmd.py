"""`edgecaffe synth PROTOTXT -o OUT.caffemodel`: seeded synthetic weights for any deploy net."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "synth", help="fill a deploy prototxt with seeded synthetic weights",
        description="Write a real caffemodel holding deterministic He-scaled random weights for "
        "every weight-bearing layer of PROTOTXT (V1 or V2), one layer at a time.",
    )
    parser.add_argument("prototxt", help="deploy .prototxt")
    parser.add_argument("-o", "--output", required=True, help="output .caffemodel")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.set_defaults(handler=synth)


def synth(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.model.caffe import load_caffe
    from edgecaffe.model.caffe.synth import synthesize_caffemodel

    total = load_caffe(args.prototxt).weight_bytes
    bar = Progress(total, "synth")
    network = synthesize_caffemodel(
        args.prototxt, args.output, seed=args.seed,
        progress=lambda layer, nbytes: bar.advance(nbytes, layer),
    )
    seconds = bar.close()
    weighted = sum(1 for layer in network.layers if layer.params)
    print(f"wrote {args.output}: {weighted} weight-bearing layers, {total / 1e6:.1f} MB, "
          f"seed {args.seed}, {seconds:.1f} s")
    return 0
