"""`afloc-bench build`: tables from runs beside the paper's numbers."""

from __future__ import annotations

import argparse
import sys

HELP = "tables from one or more runs (md, csv, latex, html) with the paper's values beside"
DESCRIPTION = """\
Build tables from run folders: one table per dataset and task, models as rows, metrics as
columns, cells `point [lo, hi]`, the protocol and versions, the sanity floor, and beside each
cell the paper's value, the difference and a † when the reproduced value lies outside the
paper's CI. Runs made with --limit are marked.

example:
  afloc-bench build results/runs/paper --format md > tables.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders or results.json files")
    parser.add_argument("--format", choices=("md", "csv", "latex", "html"), default="md")
    parser.add_argument("--digits", type=int, default=3, help="decimals (default 3)")
    parser.add_argument("--paper-version", default=None, help="paper version to compare with (e.g. arxiv_v5)")
    parser.add_argument("--no-paper", action="store_true", help="omit the paper's values")
    parser.add_argument("--category", default="all", help="category rows to show (default: overall 'all')")
    parser.add_argument("-o", "--output", default=None, help="write to a file instead of stdout")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="put unlike runs (other samples, limit, protocol or versions) in one table")


def run(args: argparse.Namespace) -> int:
    from benchmark.build import build_tables, render
    from benchmark.records import atomic_write_text

    try:
        tables = build_tables(args.runs, digits=args.digits, paper_version=args.paper_version,
                              with_paper=not args.no_paper, category=args.category,
                              allow_mismatch=args.allow_mismatch)
    except (FileNotFoundError, ValueError) as exc:
        print(f"afloc-bench build: error: {exc}", file=sys.stderr)
        return 2
    if not tables:
        print("afloc-bench build: the runs hold no results", file=sys.stderr)
        return 2
    text = render(tables, args.format)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        print(text)
    return 0
