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

Fine-tuning runs (afloc-bench finetune: run folders, --seeds folders with summary.json, or a folder
of them; several may be given) are compared cell by cell, a cell being model × label fraction ×
test metric (mean over seeds): against paper:nbme_2026/supp_table7 (Dice on SIIM; --models afloc
keeps that encoder's cells at every fraction) or against golden fine-tuning folders (with ci: inside
the reference's CI for one seed, within its seed SD for several). Each failing cell is named in a
FAIL line.

examples:
  afloc-bench regress RUN --against results/demo/golden-full
  afloc-bench regress RUN --against paper:arxiv_v5/table1 --datasets "ms_cxr[prompt=simple]"
  afloc-bench regress runs/ft_afloc_1 runs/ft_afloc_10 runs/ft_afloc_100 \\
      --against paper:nbme_2026/supp_table7 --models afloc --tolerance 0.03
  afloc-bench regress runs/ft_afloc_10 --against golden/ft_afloc_10 --tolerance 0.01
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="+", help="run folder or results.json (several: fine-tuning run folders)")
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
        finetune_runs,
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

    finetuned = [finetune_runs(p) for p in args.run]
    if any(f is not None for f in finetuned):
        if any(f is None for f in finetuned):
            plain = [p for p, f in zip(args.run, finetuned) if f is None]
            raise ValueError(f"{', '.join(plain)}: not fine-tuning run folders (expected results.json or "
                             "summary.json of afloc-bench finetune); regress other runs one at a time")
        return _regress_finetune([r for f in finetuned for r in f], args, tol, shown)
    if len(args.run) > 1:
        raise ValueError(f"expected one run folder, got {len(args.run)} (several only for fine-tuning runs)")
    args.run = args.run[0]
    state = load_results(args.run)
    ref = load_reference(args.against)
    cells = run_cells(state)
    if not args.against.startswith("paper:"):
        ref_state = load_results(args.against)
        _allow(run_mismatches(state, ref_state), args, f"{args.run} and {args.against} are unlike runs")
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


def _allow(mismatches: list[str], args: argparse.Namespace, what: str) -> None:
    """Stop on what makes two runs unlike, unless --allow-mismatch (then each is printed)."""
    if mismatches and not args.allow_mismatch:
        raise ValueError(f"{what} ({'; '.join(mismatches)}); pass --allow-mismatch to compare them anyway")
    for m in mismatches:
        print(f"MISMATCH (allowed): {m}")


def _regress_finetune(runs, args: argparse.Namespace, tol, shown) -> int:
    """Fine-tuning cells against the paper's or golden fine-tuning folders; a FAIL line per bad cell."""
    from benchmark.paper import split_name
    from benchmark.regress import (
        check_unique,
        compare_cells,
        diff_table,
        filter_cells,
        finetune_cells,
        finetune_mismatches,
        finetune_runs,
        paper_cells_as_reference,
    )

    check_unique(runs)
    if args.against.startswith("paper:"):
        ref = paper_cells_as_reference(args.against)
    else:
        refs = finetune_runs(args.against)
        if refs is None:
            raise ValueError(f"{args.against}: not a fine-tuning run folder (expected results.json or summary.json "
                             "of afloc-bench finetune, or a folder of them) nor paper:<table id>")
        check_unique(refs)
        _allow(finetune_mismatches(runs, refs), args, "unlike fine-tuning runs")
        ref = finetune_cells(refs)
    ref = filter_cells(ref, models=args.models, datasets=args.datasets, base_names=True)
    cells = finetune_cells(runs)
    diffs = compare_cells(cells, ref, tol)
    if not diffs:
        print("afloc-bench regress: the reference has no comparable cells", file=sys.stderr)
        return 2
    ran = {(c.model, c.metric): c.dataset for c in cells}
    for d in diffs:  # a cell the runs have on another dataset (a demo run against the paper): say so
        other = ran.get((d.ref.model, d.ref.metric))
        if d.status == "missing" and other is not None and other != d.ref.dataset:
            d.detail = f"the runs are on {other}, not {d.ref.dataset}"
    bad = [d for d in diffs if d.status != "ok"]
    if bad or args.all_rows:
        print(diff_table(diffs, only_failures=not args.all_rows))
    for d in bad:
        base, quals = split_name(d.ref.model)
        where = f"{base} at {quals.get('finetune', '?')} on {d.ref.dataset}, {d.ref.metric}"
        if d.status == "missing":
            print(f"FAIL {where}: missing ({d.detail})")
        else:
            print(f"FAIL {where}: {d.run_value:.4f} against {d.ref.value:.4f} "
                  f"(Δ {d.run_value - d.ref.value:+.4f}; tolerance {d.detail})")
    print(f"\n{len(diffs) - len(bad)}/{len(diffs)} cells within tolerance ({shown})"
          + (f"; {len(bad)} drifted or missing" if bad else ""))
    return 1 if bad else 0
