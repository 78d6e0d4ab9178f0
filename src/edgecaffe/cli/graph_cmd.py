"""`edgecaffe graph MODE NET... -o FILE.dot`: draw the task graph a mode makes of a request."""

from __future__ import annotations

import argparse

from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "graph", help="write the task graph of a mode as Graphviz DOT (optionally PNG)",
        description="Plan one request (or N requests) holding the given networks under MODE and "
        "write the task graph as Graphviz DOT: one node per init / load / exec task, coloured "
        "by network, shaped by kind, one cluster per network instance, an edge from each task "
        "to the tasks that wait for it (red between networks: the mode's cross-network links); "
        "pool-1 tasks (DeepEye's fc worker) have a dashed border. Several requests show how "
        "bulk, linear and execprio-inter chain networks across requests. No weights are read.",
    )
    parser.add_argument("mode", metavar="MODE",
                        help="scheduler mode, e.g. bulk, linear, masa, deepeye (an unknown name "
                        "lists them all)")
    parser.add_argument("networks", nargs="+", metavar="NET",
                        help="zoo network name, package folder (from `edgecaffe split`) or "
                        ".onnx file")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.dot",
                        help="DOT file to write")
    parser.add_argument("--png", action="store_true",
                        help="also render FILE.png with Graphviz's `dot` (if installed)")
    parser.add_argument("--requests", type=int, default=1, metavar="N",
                        help="requests to plan, each holding all the networks (default 1)")
    parser.set_defaults(handler=run)


def source_info(source: str):
    """A NetworkInfo from a package folder or, without weights, from a zoo network's structure."""
    from pathlib import Path

    from edgecaffe.model.errors import ModelError
    from edgecaffe.model.info import network_info, package_info
    from edgecaffe.model.zoo import ZOO, get_zoo_model

    if Path(source).is_dir():
        from edgecaffe import open_package

        return package_info(open_package(source))
    if source.lower().endswith(".onnx"):
        from edgecaffe.model.onnx import load_onnx
        from edgecaffe.model.package.manifest import stages

        network = load_onnx(source)
        return network_info(network, stages(network))
    try:
        model = get_zoo_model(source)
    except ModelError:
        raise ModelError(f"{source!r} is neither a zoo network, a package folder nor an .onnx "
                         "file; the zoo "
                         f"has: {', '.join(ZOO)}") from None
    from edgecaffe.model.caffe import build_layers, parse_prototxt
    from edgecaffe.model.network import Network
    from edgecaffe.model.package.manifest import stages

    network = Network(model.name, build_layers(parse_prototxt(model.prototxt(), model.name),
                                               model.name))
    return network_info(network, stages(network),
                                    mean_exec_ms=model.original_mean_exec_ms)


def render_png(dot_path, png_path) -> str | None:
    """Run `dot -Tpng`; None when Graphviz is not installed."""
    import shutil
    import subprocess

    dot = shutil.which("dot")
    if dot is None:
        return None
    done = subprocess.run([dot, "-Tpng", str(dot_path), "-o", str(png_path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"dot -Tpng failed ({done.returncode}): {done.stderr.strip()}")
    return str(png_path)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from edgecaffe.sched import MODES, Planner
    from edgecaffe.sched.dot import edges, task_graph_dot

    if args.mode not in MODES:
        raise UsageError(f"unknown mode {args.mode!r}; modes: {', '.join(MODES)}")
    if args.requests < 1:
        raise UsageError("--requests must be 1 or more")
    infos = [source_info(source) for source in args.networks]
    planner = Planner(args.mode)
    instances = []
    for request in range(args.requests):
        instances += planner.plan(request, infos)

    names = ", ".join(info.name for info in infos)
    requests = f"{args.requests} request{'s' if args.requests > 1 else ''}"
    title = f"{args.mode}: {names} ({requests})"
    output = Path(args.output)
    output.write_text(task_graph_dot(instances, title), encoding="utf-8")
    tasks = sum(len(instance.tasks) for instance in instances)
    print(f"wrote {output}: {tasks} tasks, {len(edges(instances))} edges, {len(instances)} "
          f"instances ({args.mode}, {requests})")
    if args.png:
        png = output.with_suffix(".png")
        if render_png(output, png) is None:
            print(f"--png needs Graphviz's `dot` program, which is not on PATH; install Graphviz "
                  f"(e.g. `apt-get install graphviz`) and run `dot -Tpng {output} -o {png}`. "
                  f"The .dot file was written.", file=sys.stderr)
        else:
            print(f"rendered {png}")
    return 0
