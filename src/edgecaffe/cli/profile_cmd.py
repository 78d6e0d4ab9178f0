"""`edgecaffe profile DIR`: measure a package per layer and record it in its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecaffe.cli.backend_flag import add_backend_flag
from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "profile", help="measure per-layer load and execution times of a package",
        description="Run the package layer by layer RUNS times and record, per layer, the "
        "median load and execution ms, weight and activation bytes; per network the mean "
        "execution time and the peak memory of a whole-model and of a layer-by-layer run. "
        "Writes the figures into the package's manifest and prints a table.",
    )
    parser.add_argument("package", help="package folder (from `edgecaffe split`), or an .onnx "
                        "file (split into the cache first; the figures go to that package)")
    parser.add_argument("--runs", type=int, default=5, help="passes to take medians over")
    parser.add_argument("--cold", action="store_true",
                        help="drop each weight file from the page cache before loading it")
    parser.add_argument("--plot", metavar="FILE.png", help="draw per-layer load vs exec time")
    parser.add_argument("--no-write", action="store_true", help="do not update the manifest")
    parser.add_argument("--refresh", action="store_true",
                        help="measure again even when the stored profile is fresh (this host, "
                        "recent, runs that agreed, a quiet machine)")
    add_backend_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.model.package import open_package
    from edgecaffe.model.package.profile import plot_profile, profile_package, stale_reasons

    if args.runs < 1:
        raise UsageError("--runs must be 1 or more")
    from edgecaffe.experiment.report_plots import matplotlib_available

    if args.plot and not matplotlib_available():  # said before the work, not after it
        from edgecaffe.experiment.report import PLOT_HINT

        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT} "
                         "(or leave out --plot)")
    if args.package.lower().endswith(".onnx"):
        from edgecaffe.model.package import onnx_package

        package = onnx_package(args.package)
        print(f"profiling the package of {args.package} at {package.directory}")
    elif Path(args.package).is_file():
        raise UsageError(f"{args.package}: profile takes a package folder or an .onnx file; "
                         f"make a package first: `edgecaffe split {args.package} ... -o PACKAGE`")
    else:
        package = open_package(args.package)
    stale = stale_reasons(package.manifest)
    stored = package.manifest.get("profile") or {}
    if (stale or args.refresh or args.cold != stored.get("cold", False)
            or args.backend != stored.get("backend", "numpy")):
        bar = Progress(args.runs, f"profile {package.name}", unit="runs", scale=1)
        summary = profile_package(package, runs=args.runs, cold=args.cold,
                                  progress=lambda done: bar.advance(1), backend=args.backend)
        bar.close()
    else:
        summary = package.manifest["profile"]
        print(f"{package.name}: profiled on {summary['host']} at {summary['date']} (load "
              f"average {max(summary['load_average']):.1f}, runs within "
              f"{summary['spread']:.0%}); showing it (--refresh to measure again)")
        args.no_write = True
    cache = "cold" if args.cold else "warm"
    print(f"{'layer':<28} {'op':<9} {'stage':<5} {'load ms':>9} {'exec ms':>9} "
          f"{'weights MB':>10} {'output MB':>9}")
    for entry in package.manifest["layers"]:
        p = entry["profile"]
        print(f"{entry['name'][:28]:<28} {entry['op']:<9} {entry['stage']:<5} "
              f"{p['load_ms']:>9.3f} {p['exec_ms']:>9.3f} {p['weight_bytes'] / 1e6:>10.2f} "
              f"{p['activation_bytes'] / 1e6:>9.2f}")
    print(f"{package.name}: mean execution {summary['mean_exec_ms']:.1f} ms, total load "
          f"{summary['load_ms_total']:.1f} ms ({cache} cache), {args.runs} runs; peak RSS above "
          f"idle: whole model {summary['peak_rss_whole_model_bytes'] / 2**20:.1f} MiB, layer by "
          f"layer {summary['peak_rss_layer_by_layer_bytes'] / 2**20:.1f} MiB")
    print(f"BLAS: {summary.get('blas', 'unknown')}, {summary.get('blas_threads')} thread(s); "
          f"load average {summary.get('load_average')}, runs spread {summary.get('spread', 0):.0%}")
    for doubt in summary.get("warnings") or []:
        print(f"warning: {doubt}")
    if not args.no_write:
        package.save_manifest()
        print(f"recorded in {package.directory / 'manifest.yaml'}")
    if args.plot:
        plot_profile(package, args.plot)
        print(f"plot: {args.plot}")
    return 0
