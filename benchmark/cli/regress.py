"""`afloc-bench regress`: fail when a run drifts from a golden run or a paper table."""

from __future__ import annotations

import argparse
import sys

HELP = "fail (exit 1) when a run drifts from a golden run or a paper table; prints a diff table"
DESCRIPTION = """\
Compare a run with a reference and exit non-zero on drift.

REF is a run folder / results.json (a golden run), or `paper:<table id>[:<dataset>]` for the
paper's tables (ids in results/paper/index.yaml). Every reference cell must be present in the
run. --tolerance ci accepts a value inside the reference CI (or within the printed rounding when
the reference has no CI); a number is an absolute tolerance. The default is the reference's
tolerance.json (per-model tolerances measured for it, e.g. golden-full's across CPU instruction
sets) when it has one, else ci. A run reference must
be a like run: the same limit, protocol, harness version and, per dataset, the same samples,
prompt set, card version and split (--allow-mismatch compares anyway and prints what differs).

examples:
  afloc-bench regress RUN --against results/demo/golden-full
  afloc-bench regress RUN --against paper:arxiv_v5/table1 --datasets "ms_cxr[prompt=simple]"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder or results.json")
    parser.add_argument("--against", required=True, metavar="REF", help="golden run folder or paper:<table id>")
    parser.add_argument("--tolerance", default=None,
                        help="'ci' or an absolute tolerance, e.g. 0.01 (default: the reference's tolerance.json, "
                             "else ci)")
    parser.add_argument("--all-rows", action="store_true", help="print every compared cell, not only failures")
    parser.add_argument("--models", default=None, help="only reference cells of these models (comma list, globs)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare with a run reference that differs in samples, limit, protocol or versions")
    parser.add_argument("--datasets", default=None,
                        help="only reference cells of these datasets (comma list, globs; 'ms_cxr*' covers prompt sets)")


def run(args: argparse.Namespace) -> int:
    from benchmark.regress import (
        compare_cells,
        diff_table,
        filter_cells,
        load_reference,
        load_results,
        reference_tolerances,
        run_cells,
    )

    tol = args.tolerance
    shown = tol
    if tol is None:
        per_model = None if args.against.startswith("paper:") else reference_tolerances(args.against)
        tol = per_model if per_model is not None else "ci"
        shown = "ci" if per_model is None else "per model, from the reference's tolerance.json: " + ", ".join(
            f"{m} {t:g}" for m, t in sorted(per_model.items(), key=lambda kv: (kv[0] != "*", kv[0])))
    elif tol != "ci":
        try:
            tol = float(tol)
        except ValueError:
            print(f"afloc-bench regress: --tolerance must be 'ci' or a number, got {tol!r}", file=sys.stderr)
            return 2
    from benchmark.records import limit_note, run_mismatches

    state = load_results(args.run)
    ref = load_reference(args.against)
    cells = run_cells(state)
    if not args.against.startswith("paper:"):
        ref_state = load_results(args.against)
        mismatches = run_mismatches(state, ref_state)
        if mismatches and not args.allow_mismatch:
            raise ValueError(f"{args.run} and {args.against} are unlike runs ({'; '.join(mismatches)}); "
                             "pass --allow-mismatch to compare them anyway")
        for m in mismatches:
            print(f"MISMATCH (allowed): {m}")
        note = limit_note(state, ref_state)
    else:
        note = limit_note(state)
    if note:
        print(note)
    ref = filter_cells(ref, models=args.models, datasets=args.datasets)
    diffs = compare_cells(cells, ref, tol)
    bad = [d for d in diffs if d.status != "ok"]
    if not diffs:
        print("afloc-bench regress: the reference has no comparable cells", file=sys.stderr)
        return 2
    table = diff_table(diffs, only_failures=not args.all_rows)
    if table.strip():
        print(table)
    print(f"\n{len(diffs) - len(bad)}/{len(diffs)} cells within tolerance ({shown})"
          + (f"; {len(bad)} drifted or missing" if bad else ""))
    return 1 if bad else 0
