"""`edgecaffe pipeline list | show PIPELINE | run PIPELINE IMAGE... [-o OUT] [--json]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "pipeline", help="run networks gated on other networks' detections (faces -> age, "
        "gender)",
        description="Context-aware pipelines: a detector's detections are cropped and fed to "
        "the networks gated on it, only when its condition holds. PIPELINE is a built-in name "
        "(see 'pipeline list') or a YAML file (docs/pipelines.md).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the built-in pipelines")
    listing.set_defaults(handler=list_pipelines)
    show = actions.add_parser("show", help="a pipeline's stages, networks and conditions")
    show.add_argument("pipeline", metavar="PIPELINE", help="built-in name or YAML file")
    show.set_defaults(handler=show_pipeline)
    run = actions.add_parser("run", help="run a pipeline on images")
    run.add_argument("pipeline", metavar="PIPELINE", help="built-in name or YAML file")
    run.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    run.add_argument("-o", "--output", help="write the image annotated with boxes and labels "
                     "(one image: this file; several: a folder)")
    run.add_argument("--json", action="store_true", help="print the result tree as JSON")
    from edgecaffe.sched import CONTEXTS, MODES  # plain names: no numpy, no model format

    run.add_argument("--mode", choices=list(MODES), default="masa",
                     help="engine mode (default masa)")
    run.add_argument("--budget", default="512M", help="memory budget (default 512M)")
    run.add_argument("--granularity", choices=("layer", "network"), default="layer",
                     help="memory accounting (default layer)")
    run.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    run.add_argument("--keep-weights", action=argparse.BooleanOptionalAction, default=True,
                     help="keep freed weights in memory while the budget has room, so that "
                     "the next image's loads read nothing (default on; --no-keep-weights: "
                     "read every layer for every image, as the paper's engine)")
    run.add_argument("--context", choices=list(CONTEXTS), default="aware",
                     help="when the gated stages' networks load: aware (once their condition "
                     "holds; the default), aware-idle (also speculatively while the detector "
                     "runs, only into budget nothing else asks for; dropped when the condition "
                     "fails) or oblivious (speculatively, as if they will run)")
    add_backend_flag(run)
    run.set_defaults(handler=run_pipeline)


def list_pipelines(args: argparse.Namespace) -> int:
    from edgecaffe.pipeline.builtin import BUILTIN

    for name, (_, summary) in BUILTIN.items():
        print(f"{name:<12} {summary}")
    return 0


def show_pipeline(args: argparse.Namespace) -> int:
    from edgecaffe.pipeline import get_pipeline

    pipeline = get_pipeline(args.pipeline)
    print(f"pipeline {pipeline.name} ({pipeline.source}){': ' if pipeline.description else ''}"
          f"{pipeline.description}")
    for stage in pipeline.stages:
        network = stage.network + (f" + {stage.weights}" if stage.weights else "")
        print(f"  {stage.name}: {stage.output}, network {network}")
        if stage.parent is None:
            print("    input: the image")
        else:
            condition = stage.condition
            classes = "" if condition is None or condition.classes is None else \
                f" of class {sorted(condition.classes)}"
            print(f"    input: crops of {stage.parent}'s detections, margin "
                  f"{stage.crop.margin:g}, shape {stage.crop.shape}; batch <= "
                  f"{stage.batch}")
            if condition is not None:
                print(f"    when: >= {condition.min_count} detection(s) with score >= "
                      f"{condition.min_score:g}{classes}")
        shown = {k: v for k, v in vars(stage.preprocess).items() if v is not None}
        if shown:
            print(f"    preprocess: {', '.join(f'{k} {v}' for k, v in shown.items())}")
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    from edgecaffe.pipeline import PipelineRunner, get_pipeline

    if args.workers < 1:
        raise UsageError("--workers must be 1 or more")
    outputs = _outputs(args)
    pipeline = get_pipeline(args.pipeline)
    with PipelineRunner(pipeline, mode=args.mode, budget=args.budget,
                        granularity=args.granularity, workers=args.workers,
                        backend=args.backend, keep_weights=args.keep_weights,
                        context=args.context) as runner:
        futures = [runner.submit(image) for image in args.images]
        results = [future.result() for future in futures]
    if args.json:
        import json

        documents = [{"image": image, **result.to_dict()}
                     for image, result in zip(args.images, results, strict=True)]
        json.dump(documents[0] if len(documents) == 1 else documents, sys.stdout, indent=2)
        print()
    else:
        for image, result in zip(args.images, results, strict=True):
            print("\n".join(describe(result, image)))
    for image, result, output in zip(args.images, results, outputs, strict=True):
        if output is not None:
            from edgecaffe.pipeline.draw import annotate

            annotate(image, result, output)
            if not args.json:
                print(f"wrote {output}")
    return 0


def _outputs(args: argparse.Namespace) -> list[Path | None]:
    if args.output is None:
        return [None] * len(args.images)
    target = Path(args.output)
    if len(args.images) == 1 and not target.is_dir():
        return [target]
    target.mkdir(parents=True, exist_ok=True)
    stems = [Path(image).stem for image in args.images]
    return [target / (f"{stem}-annotated.jpg" if stems.count(stem) == 1 else
                      f"{stem}-{index}-annotated.jpg")
            for index, stem in enumerate(stems, 1)]


def describe(result: Any, image: str) -> list[str]:
    """Readable lines for one image's result tree."""
    width, height = result.image_size
    lines = [f"{image} ({width}x{height}), pipeline {result.pipeline}, "
             f"{result.response_ms:.0f} ms"]
    for name, value in result.outputs.items():
        lines += _describe(name, value, "  ")
    for name, count in result.skipped.items():
        lines.append(f"  {name}: not run (its condition failed {count} time(s))")
    return lines


def _describe(name: str, value: Any, indent: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{indent}{name}: {_classification(name, value)[len(name) + 1:]}"]
    lines = [f"{indent}{name}: {len(value)} detection(s)"]
    for number, detection in enumerate(value, 1):
        box = ", ".join(f"{v:.0f}" for v in detection.box)
        classes = [_classification(child, output)
                   for child, output in detection.children.items()
                   if not isinstance(output, list)]
        lines.append(f"{indent}  {detection.name} {number}: score {detection.score:.3f}, box "
                     f"({box})" + "".join(f", {text}" for text in classes))
        for child, output in detection.children.items():
            if isinstance(output, list):
                lines += _describe(child, output, indent + "    ")
    return lines


def _classification(name: str, output: Any) -> str:
    best = output.top[0]
    if output.expected is not None:
        return f"{name} {output.expected:.0f} (top class {best.label}, " \
               f"{100 * best.probability:.0f}%)"
    return f"{name} {best.label} ({100 * best.probability:.0f}%)"
