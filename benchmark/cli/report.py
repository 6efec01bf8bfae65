"""`afloc-bench report`: an HTML page with the tables and figures of a run."""

from __future__ import annotations

import argparse
import sys

HELP = "write an HTML report (tables, CI charts, threshold curves, paired comparisons, heatmap overlays) for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (or a fine-tuning folder: a page of its tables)")
    parser.add_argument("-o", "--output", required=True, help="folder for index.html and figures/")
    parser.add_argument("--overlays", default="first", metavar="HOW",
                        help="samples drawn in the overlay figures, among those whose maps the run saved: best, "
                             "worst (by the reference model's per-sample score), random, first (default) or "
                             "comma-separated sample ids")
    parser.add_argument("--n-overlays", type=int, default=4, help="samples per dataset in the overlay figure")
    parser.add_argument("--reference", default=None,
                        help="model the others are compared with (default afloc, else the first non-floor model)")
    parser.add_argument("--finetune", action="append", default=[], metavar="DIR",
                        help="folder of `afloc-bench finetune` runs whose tables (Supplementary Table 7's layout) the "
                             "page adds; repeatable")


def run(args: argparse.Namespace) -> int:
    from benchmark.report import write_report

    how = args.overlays
    choice = how if how in ("best", "worst", "random", "first") else [s.strip() for s in how.split(",") if s.strip()]
    try:
        path = write_report(args.run, args.output, n_overlay=args.n_overlays, overlay_choice=choice,
                            reference=args.reference, finetune=args.finetune)
    except (FileNotFoundError, ValueError) as exc:
        print(f"afloc-bench report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
