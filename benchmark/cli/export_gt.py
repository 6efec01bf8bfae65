"""`afloc-bench export-gt`: a dataset's ground truth in a protocol's evaluation frame."""

from __future__ import annotations

import argparse
import json

HELP = "write a dataset's ground-truth masks in a protocol's frame (to score maps made elsewhere)"
DESCRIPTION = """\
Write the masks a protocol scores a dataset against, in its evaluation frame:
  afloc-compat@1   chest X-rays: AFLoc's 224 letterbox frame, boxes mapped and summed (overlaps
                   hold 2) as the official code; histopathology: the image's own size
  canonical@1      the original image, boxes as their union
  chexlocalize@1   the original image, as CheXlocalize's eval.py

-o OUT.npz: masks uint8 [N, H, W], sample_id, categories, image_ids, patient_ids, frame (one
shape for all masks). Add your heatmaps [N, H, W] in the same order and score them:
  python -c "import numpy as np; gt = dict(np.load('gt.npz')); np.savez('preds.npz', heatmaps=MAPS, **gt)"
  afloc-bench score --input preds.npz --protocol afloc-compat@1
-o FOLDER: one PNG per sample and index.csv (for masks of different sizes).
Samples whose image cannot be read are counted and listed, not exported.

example:
  afloc-bench export-gt ms_cxr --protocol afloc-compat@1 --data-root /data/ms_cxr -o ms_cxr_gt.npz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a registered dataset with localisation ground truth")
    parser.add_argument("--protocol", "-p", default="afloc-compat@1", help="protocol id (default afloc-compat@1)")
    parser.add_argument("-o", "--output", required=True, help="OUT.npz or a folder")
    parser.add_argument("--data-root", default=None, help="dataset root (or template with {dataset})")
    parser.add_argument("--split", default=None, help="split (default: the card's default, test)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N localisation samples")


def run(args: argparse.Namespace) -> int:
    from benchmark.ground_truth import export_ground_truth

    summary = export_ground_truth(args.dataset, args.protocol, args.output, data_root=args.data_root,
                                  split=args.split, limit=args.limit, progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}))
    for s in summary["skipped"][:10]:
        print(f"skipped {s['sample_id']}: {s['reason']}")
    return 0
