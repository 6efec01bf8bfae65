"""`afloc-bench build`: tables from runs beside the paper's numbers."""

from __future__ import annotations

import argparse
import sys

HELP = "tables from one or more runs (md, latex, html; csv: one row per cell) with the paper's values beside"
DESCRIPTION = """\
Build tables from run folders.

Paper tables: each table of the paper that the runs fill at least one cell of, in the paper's
rows and columns, the reproduced `point [lo, hi]` beside the published value (rows the runs do
not fill are left out and named). Run tables: one per dataset and task, models as rows, the
headline metrics as columns (--metrics all adds the per-threshold ones), and beside a metric the
paper has numbers for, the paper's value, the difference and a † when the reproduced value lies
outside the paper's CI. Each table says its protocol, versions and n used of n. Runs made with
--limit are marked.

--format csv writes every cell of the runs (all metrics and categories) as one row: dataset,
task, model, metric, category, point, lo, hi, n, prompt_set and the paper's value beside it.

examples:
  afloc-bench build results/runs/paper --format md > tables.md
  afloc-bench build results/runs/paper --layout paper --format latex > tables.tex
  afloc-bench build results/runs/paper --format csv -o cells.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders or results.json files")
    parser.add_argument("--format", choices=("md", "csv", "latex", "html"), default="md")
    parser.add_argument("--layout", choices=("auto", "paper", "run"), default="auto",
                        help="paper: the paper's tables the runs fill; run: one table per dataset and task; "
                             "auto (default): both, paper tables first")
    parser.add_argument("--metrics", choices=("headline", "all"), default="headline",
                        help="run tables' columns: headline metrics (default) or also the per-threshold ones")
    parser.add_argument("--digits", type=int, default=3, help="decimals of run tables (default 3)")
    parser.add_argument("--paper-version", default=None, help="paper version to compare with (e.g. arxiv_v5)")
    parser.add_argument("--no-paper", action="store_true", help="omit the paper's values and tables")
    parser.add_argument("--category", default="all", help="category rows of run tables (default: overall 'all')")
    parser.add_argument("-o", "--output", default=None, help="write to a file instead of stdout")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="put unlike runs (other samples, limit, protocol or versions) in one table")


def run(args: argparse.Namespace) -> int:
    from benchmark.build import build_tables, paper_layout_tables, render, tidy_cells
    from benchmark.records import atomic_write_text

    try:
        if args.format == "csv":
            frame = tidy_cells(args.runs, paper_version=args.paper_version, with_paper=not args.no_paper,
                               allow_mismatch=args.allow_mismatch)
            text = frame.to_csv(index=False) if not frame.empty else ""
        else:
            tables = []
            if args.layout in ("auto", "paper") and not args.no_paper:
                tables += paper_layout_tables(args.runs, paper_version=args.paper_version,
                                              allow_mismatch=args.allow_mismatch)
            if args.layout in ("auto", "run"):
                tables += build_tables(args.runs, digits=args.digits, paper_version=args.paper_version,
                                       with_paper=not args.no_paper, category=args.category,
                                       allow_mismatch=args.allow_mismatch, metrics=args.metrics)
            text = render(tables, args.format) if tables else ""
    except (FileNotFoundError, ValueError) as exc:
        print(f"afloc-bench build: error: {exc}", file=sys.stderr)
        return 2
    if not text:
        what = "paper table they fill" if args.layout == "paper" else "result"
        print(f"afloc-bench build: the runs hold no {what}", file=sys.stderr)
        return 2
    if args.output:
        atomic_write_text(args.output, text)
    else:
        print(text)
    return 0
