"""`edgecaffe export MODEL -o model.onnx`: any network as ONNX (plus its side file)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a network as ONNX (zoo name, package, .onnx, Caffe model)",
        description="Write MODEL as an ONNX file (opset 17) that onnxruntime and other tools "
        "run with the same outputs; layer and blob names are kept, weights become "
        "initializers named LAYER.WEIGHT. Labels and preprocessing go to the side file "
        "OUTPUT.yaml. MODEL is a zoo name, a package folder (read one layer at a time), one "
        "of the original EdgeCaffe's network folders, an .onnx file, or PROTOTXT CAFFEMODEL.",
    )
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="zoo name, package folder, original network folder, MODEL.onnx, "
                        "or PROTOTXT CAFFEMODEL")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--input-shape", default=None, metavar="DIMS",
                        help="input shape of an ONNX MODEL, e.g. 1,3,224,224")
    parser.add_argument("--seed", type=int, default=0, help="zoo weight seed (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="zoo input batch (default 1)")
    parser.add_argument("--no-check", action="store_true", help="skip onnx's checker")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgecaffe.cli.run_cmd import _load
    from edgecaffe.model.onnx.export import export_onnx

    options = SimpleNamespace(model=args.model, seed=args.seed, batch=args.batch, whole=False,
                              input_shape=args.input_shape, input=None)
    net, _ = _load(options)
    if hasattr(net, "network"):  # a package: weights are read one layer at a time
        network, weights_for = net.network, (lambda layer: net.read(layer.name))
    else:
        network, weights_for = net, None
    path = export_onnx(network, args.output, weights_for, check=not args.no_check)
    side = f" (labels and preprocessing in {path}.yaml)" if path.with_name(
        path.name + ".yaml").exists() else ""
    print(f"wrote {path}: {network.name}, {len(network.layers)} layers, "
          f"{network.weight_bytes / 1e6:.1f} MB weights{side}")
    return 0
