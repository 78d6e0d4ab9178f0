"""`edgecaffe report RESULTS... -o REPORT_DIR`: Markdown and HTML reports with plots."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="turn results folders into a Markdown and HTML report with plots",
        description="Reads results folders (from `edgecaffe experiment` or `edgecaffe demo`, "
        "given directly or found below the folders given) and writes report.md and report.html "
        "(self-contained) with mean/median/p95 response per set x budget x mode, a grouped bar "
        "chart, response-time CDFs, and per run a Gantt chart of tasks per worker and the "
        "memory ledger against measured RSS. Plots need matplotlib (the `plot` extra).",
    )
    parser.add_argument("results", nargs="+", help="results folders")
    parser.add_argument("-o", "--output", default="report", help="report folder (default report)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgecaffe.experiment.report import write_report

    markdown, page = write_report(args.results, args.output)
    print(f"wrote {markdown} and {page}")
    return 0
