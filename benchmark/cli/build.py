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

Fine-tuning runs (afloc-bench finetune: a run folder, a --seeds folder with summary.json, or a
folder of such folders) give one table per task and dataset, encoders as rows and label fractions
as columns; Dice on SIIM in Supplementary Table 7's layout, each cell (mean ± SD over seeds, or
point [95% CI] of one seed) beside the published value.

examples:
  afloc-bench build results/runs/paper --format md > tables.md
  afloc-bench build results/runs/paper --layout paper --format latex > tables.tex
  afloc-bench build results/runs/paper --format csv -o cells.csv
  afloc-bench build runs/ft_afloc_1 runs/ft_afloc_10 runs/ft_random_10 --format md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders or results.json files; fine-tuning run or seeds "
                                                "folders (or a folder of them)")
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
    from benchmark.build import build_tables, finetune_tables, finetune_tidy, paper_layout_tables, render, tidy_cells
    from benchmark.records import atomic_write_text
    from benchmark.regress import finetune_runs

    try:
        finetuned, evaluated = [], []
        for path in args.runs:
            found = finetune_runs(path)
            if found is None:
                evaluated.append(path)
            else:
                finetuned += found
        if args.format == "csv":
            import pandas as pd

            frames = []
            if evaluated:
                frames.append(tidy_cells(evaluated, paper_version=args.paper_version, with_paper=not args.no_paper,
                                         allow_mismatch=args.allow_mismatch))
            if finetuned:
                frames.append(finetune_tidy(finetuned, paper_version=args.paper_version, with_paper=not args.no_paper))
            frames = [f for f in frames if not f.empty]
            text = pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
        else:
            tables = []
            if evaluated and args.layout in ("auto", "paper") and not args.no_paper:
                tables += paper_layout_tables(evaluated, paper_version=args.paper_version,
                                              allow_mismatch=args.allow_mismatch)
            if finetuned:
                tables += finetune_tables(finetuned, digits=args.digits, paper_version=args.paper_version,
                                          with_paper=not args.no_paper and args.layout != "run",
                                          metrics=args.metrics, allow_mismatch=args.allow_mismatch)
            if evaluated and args.layout in ("auto", "run"):
                tables += build_tables(evaluated, digits=args.digits, paper_version=args.paper_version,
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
