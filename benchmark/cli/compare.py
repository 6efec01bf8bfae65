"""`afloc-bench compare`: paired bootstrap comparison of two runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmark.cli import n_boot_arg

HELP = "paired bootstrap comparison of two runs (difference, CI, p-value per dataset and metric)"

DESCRIPTION = """\
Compare two run folders (each with samples/<dataset>__<model>.parquet) sample by sample.

Samples are aligned by sample_id; both models are resampled with the SAME indices (whole
images, or patients with --unit patient), so the interval is the one of the difference
A - B. For each dataset and per-sample metric (iou, dice, cnr, hit, their @threshold
variants, box_acc; AUROC when both runs have score and label columns) the table gives
A and B (macro mean over categories, on the pairs where both have a value), the
difference, its percentile CI, a two-sided bootstrap p-value and a Benjamini-Hochberg
q-value across the overall rows. Comparing a run with itself gives a zero difference.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="run folder A")
    parser.add_argument("run_b", help="run folder B")
    parser.add_argument("--metric", action="append",
                        help="per-sample metric column to compare (repeatable); default all")
    parser.add_argument("--dataset", help="only this dataset")
    parser.add_argument("--n-boot", type=n_boot_arg, default=1000,
                        help="bootstrap replicates (default 1000; 0 = differences only, no CI or p-value)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared resampling (default 0)")
    parser.add_argument("--unit", choices=("image", "patient"), default="image", help="resampling unit")
    parser.add_argument("--all-categories", action="store_true", help="print per-category rows too")
    parser.add_argument("--json", help="write all rows to this JSON file")
    parser.add_argument("--csv", help="write all rows to this CSV file")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare runs that differ in samples, limit, protocol or versions (printed)")


def run(args: argparse.Namespace) -> int:
    from benchmark.compare import compare_runs
    from benchmark.dataset import DataError

    try:
        df = compare_runs(args.run_a, args.run_b, metric=args.metric, n_boot=args.n_boot, seed=args.seed,
                          unit=args.unit, dataset=args.dataset, allow_mismatch=args.allow_mismatch)
    except (DataError, ValueError) as exc:
        print(f"afloc-bench compare: error: {exc}", file=sys.stderr)
        return 2
    if df.empty:
        print("afloc-bench compare: no dataset with per-sample records in both runs", file=sys.stderr)
        return 1
    from tabulate import tabulate

    shown = df if args.all_categories else df[df["category"] == "all"]
    for m in df.attrs.get("mismatches", []):
        print(f"MISMATCH (allowed): {m}")
    if df.attrs.get("limit_note"):
        print(df.attrs["limit_note"])
    print(f"A = {args.run_a}\nB = {args.run_b}\n"
          f"paired bootstrap: n_boot={args.n_boot} seed={args.seed} unit={args.unit}")
    print(tabulate(shown.drop(columns=["n_only_a", "n_only_b"]), headers="keys", showindex=False, floatfmt=".4f"))
    skipped = df.groupby("dataset")[["n_only_a", "n_only_b"]].max()
    for ds, r in skipped.iterrows():
        if r["n_only_a"] or r["n_only_b"]:
            print(f"note: {ds}: {r['n_only_a']} samples only in A, {r['n_only_b']} only in B (left out)")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.csv, index=False)
    if args.json:
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in df.to_dict("records")]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"run_a": str(args.run_a), "run_b": str(args.run_b),
                                               "n_boot": args.n_boot, "seed": args.seed, "unit": args.unit,
                                               "rows": rows}, indent=2, default=_json_default))
    return 0


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if np.isnan(o) else float(o)
    return str(o)
