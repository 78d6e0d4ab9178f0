"""`edgecaffe report RESULTS... -o REPORT_DIR`: Markdown and HTML reports with plots."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="turn results folders into a Markdown and HTML report with plots",
        description="Reads results folders (from `edgecaffe experiment` or `edgecaffe demo`, "
        "given directly or found below the folders given) and writes report.md and report.html "
        "(self-contained) with mean/median/p95 response per set x budget x mode, a grouped bar "
        "chart, response-time CDFs, per run a chart of tasks per worker and the memory ledger "
        "against measured RSS, and each run's settings, date, host, versions and BLAS. Long "
        "runs are sampled or aggregated in the plots (the captions say how). Plots need "
        "matplotlib (the `plot` extra).",
    )
    parser.add_argument("results", nargs="+", help="results folders")
    parser.add_argument("-o", "--output", default="report", help="report folder (default report)")
    parser.set_defaults(handler=run)


def warn_without_matplotlib(what: str) -> bool:
    """Say once, before any work, that `what` will have no plots; True when matplotlib is
    there."""
    from edgecaffe.experiment.report_plots import matplotlib_available

    if matplotlib_available():
        return True
    from edgecaffe.experiment.report import PLOT_HINT

    print(f"note: matplotlib is not installed, so {what} will have tables but no plots; "
          f"install it with: {PLOT_HINT}", file=sys.stderr)
    return False


def run(args: argparse.Namespace) -> int:
    from edgecaffe.cli.progress import Progress
    from edgecaffe.experiment.report import find_folders, write_report

    warn_without_matplotlib("the report")
    folders = find_folders(args.results)
    bar = Progress(2 * len(folders) + 2, "report", unit="steps", scale=1)
    markdown, page = write_report(folders, args.output, lambda what: bar.advance(1, what))
    elapsed = bar.close()
    print(f"wrote {markdown} and {page} ({len(folders)} run(s), {elapsed:.1f} s)")
    return 0
