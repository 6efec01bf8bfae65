"""`afloc-bench demo-data`: generate the embedded synthetic demo datasets in their official formats."""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "generate the embedded demo datasets (phantoms with real reports) in their official formats"
DESCRIPTION = """\
Write every benchmark dataset in its official on-disk layout, from chest X-ray phantoms drawn
around real lung masks and real OpenI reports (read from the installed torchxrayvision package).
The same seed gives byte-identical files. `run --datasets demo` generates the default collection
on first use; this command writes one where you want it and can draw a preview sheet.

examples:
  afloc-bench demo-data --out /tmp/demo
  afloc-bench demo-data --out /tmp/demo --n-train 200 --n-test 50 --datasets rsna_pneumonia,ms_cxr
  afloc-bench demo-data --out /tmp/demo --reuse --preview /tmp/demo_preview.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.demo import DEFAULT_N_TEST, DEFAULT_N_TRAIN

    parser.add_argument("--out", default=None, help="output folder (default: the demo data folder the runner uses)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN,
                        help=f"training image-report pairs, MIMIC-CXR layout (default {DEFAULT_N_TRAIN})")
    parser.add_argument("--n-test", type=int, default=DEFAULT_N_TEST,
                        help=f"test images per evaluation set (default {DEFAULT_N_TEST})")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated subset of: mimic_cxr, rsna_pneumonia, ms_cxr, chexlocalize, covid_rural, "
                             "siim_pneumothorax, chestx_det10, nih_bbox (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: available cores)")
    parser.add_argument("--preview", default=None, metavar="FILE.png",
                        help="also draw a contact sheet of phantoms with ground truth and report excerpts")
    parser.add_argument("--reuse", action="store_true",
                        help="skip generation when --out already holds a complete collection with these settings")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmark.dataset import DataError, demo_root
    from benchmark.demo import DEMO_VERSION, generate
    from benchmark.demo.generator import available_sets, read_manifest

    out = Path(args.out).expanduser() if args.out else demo_root()
    names = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    if names:
        unknown = [n for n in names if n not in available_sets()]
        if unknown:
            print(f"afloc-bench demo-data: unknown dataset(s) {unknown}; choose from {available_sets()}",
                  file=sys.stderr)
            return 2
    quiet = bool(getattr(args, "quiet", False))
    m = read_manifest(out)
    same = (m is not None and m.get("version") == DEMO_VERSION and m.get("seed") == args.seed
            and m.get("n_train") == args.n_train and m.get("n_test") == args.n_test
            and set(m.get("datasets", {})) >= set(names or available_sets()))
    if args.reuse and same:
        manifest = m
        if not quiet:
            print(f"reusing the complete demo collection in {out}")
    else:
        t0 = time.time()
        try:
            manifest = generate(out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, datasets=names,
                                progress=not quiet, workers=args.workers)
        except DataError as exc:
            print(f"afloc-bench demo-data: error: {exc}", file=sys.stderr)
            return 2
        if not quiet:
            print(f"wrote {out} in {time.time() - t0:.1f} s")
    if not quiet:
        for name, info in manifest["datasets"].items():
            print(f"  {name:18s} {json.dumps(info['counts'])}")
    if args.preview:
        from benchmark.demo.preview import contact_sheet

        path = contact_sheet(out, args.preview, datasets=names)
        if not quiet:
            print(f"preview: {path}")
    return 0
