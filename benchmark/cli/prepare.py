"""`afloc-bench prepare DATASET --out DIR`: decode a training split's images once into a memory-mapped folder."""

from __future__ import annotations

import argparse

HELP = "decode a training split's images once into a memory-mapped Arrow folder (for `train --prepared`)"
DESCRIPTION = """\
Read the image-report pairs of a registered training dataset (mimic_cxr, demo_mimic, ...), decode
every image the way training does (grayscale, or colour with --image-flag 1 as the pathology
recipe reads it; letterbox to --size with INTER_AREA and zero padding) and write frames, paths,
reports and labels with Hugging Face `datasets` into --out,
with prepared.json describing what was read and what was skipped. `afloc-bench train afloc
--prepared DIR` then reads the frames from the memory-mapped table instead of the image files:
the same bytes, so the same training run, without decoding a JPEG per sample.

An unreadable image stops the preparation with its file named, as it would stop training;
--skip-unreadable leaves such images out, each counted and listed in prepared.json.

examples:
  afloc-bench prepare mimic_cxr --data-root /data/mimic-cxr-jpg --out /data/mimic-224 --num-proc 8
  afloc-bench prepare demo_mimic --out /tmp/demo-224
  afloc-bench prepare quilt1m --data-root /data/quilt1m --image-flag 1 --out /data/quilt-224 --num-proc 8
  afloc-bench train afloc --prepared /data/mimic-224 --text-encoder /models/Bio_ClinicalBERT -o runs/afloc
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="registered training dataset (mimic_cxr, demo_mimic, ...)")
    parser.add_argument("--data-root", default=None, help="dataset root folder (or template with {dataset})")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--split", default="train", help="split to prepare (default train)")
    parser.add_argument("--size", type=int, default=224, help="letterboxed frame side in pixels (default 224, "
                                                              "what training reads)")
    parser.add_argument("--image-flag", type=int, choices=(0, 1), default=0,
                        help="0: gray frames (cv2.imread(p, 0), chest X-rays); 1: colour frames in cv2's B, G, R "
                             "order (the pathology recipe, image_flag: 1)")
    parser.add_argument("--num-proc", type=int, default=1,
                        help="decoding threads (default 1; OpenCV decodes without holding the GIL)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave unreadable images out (counted and listed in prepared.json) instead of stopping")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                        help="loader option (YAML value), as the training config's dataset_options")


def run(args: argparse.Namespace) -> int:
    import yaml

    from benchmark.training.prepared import describe, prepare

    options = {}
    for item in args.dataset_option:
        if "=" not in item:
            raise ValueError(f"--dataset-option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    if args.num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {args.num_proc}")
    meta = prepare(args.dataset, args.data_root, args.out, split=args.split, size=args.size, num_proc=args.num_proc,
                   dataset_options=options, progress=not getattr(args, "quiet", False),
                   skip_unreadable=args.skip_unreadable, decode="cv2-bgr" if args.image_flag else "cv2-gray")
    print(f"{describe(meta)}; in {args.out} ({meta['fingerprint'][:19]}...)")
    return 0
