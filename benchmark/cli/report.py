"""`afloc-bench report`: an HTML page with the tables and figures of a run."""

from __future__ import annotations

import argparse
import sys

HELP = "write an HTML report (tables, CI bar charts, per-pathology bars, heatmap overlays) for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder")
    parser.add_argument("-o", "--output", required=True, help="folder for index.html and figures/")
    parser.add_argument("--overlays", type=int, default=4, help="samples per dataset in the overlay figure")


def run(args: argparse.Namespace) -> int:
    from benchmark.report import write_report

    try:
        path = write_report(args.run, args.output, n_overlay=args.overlays)
    except (FileNotFoundError, ValueError) as exc:
        print(f"afloc-bench report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
