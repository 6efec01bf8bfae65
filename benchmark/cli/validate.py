"""`afloc-bench validate`: check a dataset root against its card (files, counts, masks, prompts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "check dataset roots against their cards: files present, counts, one mask decodes, prompts render"
DESCRIPTION = """\
Check that each dataset root holds the official files, that the loader's counts match the card
(real datasets) or the demo manifest (demo sets), that one ground-truth mask decodes at the image
size and that every prompt renders. Every missing or unreadable file is listed by name, with a count
per reason. Exit status 1 when any dataset fails.

examples:
  afloc-bench validate --datasets rsna_pneumonia --data-root /data/{dataset}
  afloc-bench validate --datasets chest --split test
  afloc-bench validate --datasets demo --generate
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", required=True,
                        help="names, collections or globs, comma-separated "
                             "(e.g. 'rsna_pneumonia,ms_cxr', 'chest', 'demo')")
    parser.add_argument("--data-root", default=None, metavar="TEMPLATE",
                        help="root folder template with {dataset}, e.g. /data/{dataset} "
                             "(default: $AFLOC_BENCH_DATA_ROOT or ~/data/{dataset}); demo sets ignore it")
    parser.add_argument("--split", default=None, help="split to check (default: each card's default split)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="loader option (YAML value), e.g. --option dedupe=false; repeatable")
    parser.add_argument("--generate", action="store_true",
                        help="generate the demo data first if it is missing (never done otherwise)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def run(args: argparse.Namespace) -> int:
    from benchmark.dataset import DataError, build_dataset, demo_root, is_demo
    from benchmark.registry import datasets

    names = datasets.resolve(args.datasets)
    options = parse_options(args.option)
    reports = []
    for name in names:
        overrides: dict[str, Any] = dict(options)
        if args.split:
            overrides["split"] = args.split
        try:
            demo_counts = demo_expected(name, generate=args.generate) if is_demo(name) else None
            try:
                ds = build_dataset(name, args.data_root, **overrides)
            except TypeError as exc:  # an unknown loader option, named by the loader
                raise DataError(None, str(exc)) from exc
            if not hasattr(ds, "counts"):  # an out-of-tree Dataset: the base validate only loads
                rep = ds.validate()
                rep.setdefault("ok", not rep.get("problems"))
            elif demo_counts is not None:  # the real card's counts do not apply to synthetic data
                rep = ds.validate(demo_counts.get(ds.split, {}), card_checks=False)
                if ds.split not in demo_counts:
                    rep["warnings"].append(f"the demo manifest has no counts for {name}/{ds.split}")
            else:
                rep = ds.validate()
        except DataError as exc:
            rep = {"dataset": name, "split": args.split, "root": str(exc.path or ""), "ok": False,
                   "problems": [str(exc)], "warnings": []}
            if exc.path and not Path(exc.path).exists():  # a missing root: show what should be there
                rep["layout"] = datasets.get(name).card.layout
        rep["demo"] = is_demo(name)
        if rep["demo"]:
            rep["demo_root"] = str(demo_root())
        reports.append(rep)
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    else:
        for rep in reports:
            print_report(rep)
        failed = [r["dataset"] for r in reports if not r.get("ok")]
        print(f"\n{len(reports) - len(failed)} of {len(reports)} dataset(s) valid"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if all(r.get("ok") for r in reports) else 1


def parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"afloc-bench validate: --option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def demo_expected(name: str, *, generate: bool) -> dict[str, dict[str, int]]:
    """Expected counts of a demo set per split, from ``<demo root>/manifest.json`` (generated data's own
    record); the real card's counts do not apply to synthetic data."""
    from benchmark.dataset import DataError, demo_root
    from benchmark.registry import datasets

    root = demo_root()
    manifest = root / "manifest.json"
    if generate:
        from benchmark.demo import ensure_demo_data

        ensure_demo_data([name])
    elif not manifest.is_file():
        raise DataError(root, "demo data not generated (no manifest.json); run `afloc-bench demo-data` "
                              "or pass --generate")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(manifest, f"cannot read the demo manifest ({exc})") from exc
    subdir = str(datasets.entry(name).get("root")).split("://", 1)[1]
    return manifest_counts(data, subdir, name)


# How the demo manifest's per-dataset counts (the generator's vocabulary) map onto the loader's count
# keys: manifest key -> [(split, loader key)]. A key equal to a split name counts that split's images.
# Keys not listed are reported as unchecked. A manifest entry may instead carry "expected_counts"
# ({split: {loader key: n}}), which is used as is.
DEMO_KEYS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "rsna_pneumonia": {"positive": [("test", "split_positive_images")], "boxes": [("test", "split_boxes")]},
    "siim_pneumothorax": {"positive": [("test", "split_positive_images")],
                          "multi_part_positive": [("test", "split_multi_part_images")]},
    "covid_rural": {"test": [("all", "split_images")], "positive": [("all", "positive_images")]},
    "ms_cxr": {"test": [("test", "split_images")], "val": [("val", "split_images")],
               "boxes": [("all", "split_boxes")]},
    "chexlocalize": {"val_with_positive": [("val", "table_images")], "test_with_positive": [("test", "table_images")]},
    "chestx_det10": {"boxes_test": [("test", "split_boxes")], "positive_test": [("test", "split_images_with_boxes")],
                     "boxes_train": [("train", "split_boxes")],
                     "positive_train": [("train", "split_images_with_boxes")]},
    # the NIH box table lists only boxed images; the generator's per-split count includes unboxed ones
    "nih_bbox": {"test": [], "positive": [("test", "images")], "boxes": [("test", "boxes")]},
    "mimic_cxr": {"train": [("train", "split_images")], "validate": [("validate", "split_images")],
                  "test": [("test", "split_images")]},
}
SPLIT_NAMES = ("train", "val", "validate", "test", "all")


def manifest_counts(data: dict[str, Any], subdir: str, name: str) -> dict[str, dict[str, int]]:
    """``{split: {loader count key: n}}`` of one demo dataset from the generator's manifest."""
    entry = (data.get("datasets") or {}).get(subdir) or (data.get("datasets") or {}).get(name)
    if not isinstance(entry, dict):
        return {}
    if isinstance(entry.get("expected_counts"), dict):
        return {sp: {k: int(v) for k, v in c.items()} for sp, c in entry["expected_counts"].items()}
    keys = DEMO_KEYS.get(subdir, {})
    out: dict[str, dict[str, int]] = {}
    for key, n in (entry.get("counts") or {}).items():
        if not isinstance(n, int) or isinstance(n, bool):
            continue
        targets = keys.get(key)
        if targets is None and key in SPLIT_NAMES:
            targets = [(key, "split_images")]
        for split, what in targets or []:
            out.setdefault(split, {})[what] = n
    if subdir == "ms_cxr" and {"test", "val"} <= set(out):  # split 'all' is both
        out.setdefault("all", {})["split_images"] = out["test"]["split_images"] + out["val"]["split_images"]
    return out


def print_report(rep: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    status = "OK" if rep.get("ok") else "FAILED"
    split = rep.get("split") or "default split"
    where = f" at {rep['root']}" if rep.get("root") else ""
    print(f"{rep['dataset']} [{split}]{where}: {status}", file=out)
    counts = rep.get("counts") or {}
    if counts:
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"  counts: {shown}", file=out)
    for key, label in (("mask", "mask"), ("prompts", "prompts")):
        val = (rep.get("checks") or {}).get(key)
        if val:
            print(f"  {label}: {val}", file=out)
    for reason, n in (rep.get("excluded") or {}).items():
        print(f"  excluded by rule: {n} ({reason})", file=out)
    src = rep.get("split_source")
    if src:
        how = "root-local override of the shipped list" if src.get("overridden") else "shipped"
        print(f"  split list ({how}): {src['path']} ({src['n_lines']} lines, sha256 {src['sha256'][:12]}...)",
              file=out)
    for p in rep.get("problems", []):
        print("  ERROR " + p.replace("\n", "\n        "), file=out)
    if rep.get("layout"):
        print("  expected layout:\n" + "\n".join("    " + ln for ln in rep["layout"].strip().splitlines()), file=out)
    for w in rep.get("warnings", []):
        print("  warning: " + w, file=out)
