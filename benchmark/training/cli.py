"""``afloc-bench train TASK ...``: the command line of the shared trainer."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from benchmark.dataset import DataError
from benchmark.io.checkpoints import CheckpointError
from benchmark.training.config import TrainConfig, load_train_config
from benchmark.training.trainer import train


def build_parser(task: str = "afloc") -> argparse.ArgumentParser:
    what = "AFLoc" if task == "afloc" else f"the {task} baseline"
    p = argparse.ArgumentParser(
        prog=f"afloc-bench train {task}",
        description=f"Train {what} from scratch (paper recipe by default; --dataset demo_mimic trains the demo "
                    "model) on the shared trainer.",
        epilog="examples:\n"
               "  afloc-bench train afloc --dataset mimic_cxr --data-root /data/mimic-cxr-jpg "
               "--text-encoder /models/Bio_ClinicalBERT -o runs/afloc\n"
               "  afloc-bench train afloc --dataset demo_mimic\n"
               "  afloc-bench prepare mimic_cxr --data-root /data/mimic-cxr-jpg --out /data/mimic-224 --num-proc 8\n"
               "  afloc-bench train afloc --prepared /data/mimic-224 --text-encoder /models/Bio_ClinicalBERT\n"
               "  torchrun --nproc_per_node 2 $(which afloc-bench) train afloc --dataset demo_mimic -o runs/ddp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, help="registered training dataset (mimic_cxr, demo_mimic)")
    p.add_argument("--data-root", default=None, help="dataset root folder (or template with {dataset})")
    p.add_argument("--config", default=None, help="paper (default), demo (default for demo sets), pathology (default "
                                                  "for quilt1m; pathology_demo for demo_quilt1m) or a YAML file")
    p.add_argument("-o", "--output", default=None, help="run folder (default results/runs/train-afloc-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last/ checkpoint")
    p.add_argument("--text-encoder", default=None,
                   help="local BERT folder with weights and tokenizer (Bio_ClinicalBERT)")
    p.add_argument("--vocab", default=None, help="vocab.txt for a randomly initialised text encoder")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: cores-1, max 4)")
    p.add_argument("--forward-chunks", type=int, default=None, help="contrastive sub-batches per step and process")
    p.add_argument("--negatives", choices=("local", "global"), default=None, help="DDP negatives (default local)")
    p.add_argument("--image-cache", default=None,
                   help="folder caching letterboxed 224 images between epochs, or 'memory' (with --num-workers 0)")
    p.add_argument("--prepared", default=None, metavar="DIR",
                   help="read the training split's frames from a folder written by `afloc-bench prepare` (its "
                        "dataset and split become the run's; validation still reads the image files)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training option (YAML value), e.g. --set grad_clip=null --set model.loss.temp3=10")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def default_config(task: str, dataset: str | None) -> str:
    """The recipe a dataset gets without --config: a task's own config for a histopathology set
    (``pathology``, ``pathology_demo``) where it has one, else ``demo`` for demo sets and ``paper``."""
    demo = (dataset or "").startswith("demo")
    if (dataset or "").endswith("quilt1m"):
        from benchmark.training.task import get_task

        spec = "pathology_demo" if demo else "pathology"
        if get_task(task).config_path(spec).is_file():
            return spec
    return "demo" if demo else "paper"


def config_from_args(args: argparse.Namespace, task: str = "afloc") -> TrainConfig:

    meta = None
    if getattr(args, "prepared", None):
        from benchmark.training.prepared import read_meta

        meta = read_meta(args.prepared)
        if args.dataset is not None and args.dataset != meta["dataset"]:
            raise ValueError(f"--dataset {args.dataset}, but --prepared {args.prepared} holds {meta['dataset']}/"
                             f"{meta['split']}; drop --dataset or prepare {args.dataset}")
    dataset = meta["dataset"] if meta else args.dataset
    spec = args.config or default_config(task, dataset)
    cfg = load_train_config(spec, task)
    d = cfg.to_dict()
    if meta:  # the prepared set names the data; validation reads the same dataset's files
        d.update(dataset=meta["dataset"], train_split=meta["split"], prepared=os.path.abspath(args.prepared),
                 dataset_options=dict(meta.get("dataset_options") or {}))
        if meta.get("data_root") and args.data_root is None:
            d["data_root"] = meta["data_root"]
    for flag, key in (("dataset", "dataset"), ("data_root", "data_root"), ("text_encoder", "text_encoder"),
                      ("vocab", "vocab"), ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("max_steps", "max_steps"), ("max_minutes", "max_minutes"), ("device", "device"),
                      ("num_workers", "num_workers"), ("forward_chunks", "forward_chunks"),
                      ("negatives", "negatives"), ("image_cache", "image_cache"), ("seed", "seed")):
        v = getattr(args, flag)
        if v is not None:
            d[key] = v
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        parts = key.split(".")
        tgt = d
        for part in parts[:-1]:
            tgt = tgt.setdefault(part, {})
        tgt[parts[-1]] = value
    return TrainConfig.from_mapping(d, "command line")


def cli_main(argv: Sequence[str], task: str = "afloc") -> int:
    """``afloc-bench train TASK ...`` (afloc, gloria, convirt, biovil, medklip)."""
    args = build_parser(task).parse_args(list(argv))
    prog = f"afloc-bench train {task}"
    try:
        cfg = config_from_args(args, task)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output or Path("results/runs") / time.strftime(f"train-{task}-%Y%m%d-%H%M%S"))
    if out.exists() and (out / "last").exists() and not args.resume:
        print(f"{prog}: error: {out} already holds a run; use --resume or another -o", file=sys.stderr)
        return 2

    try:
        state = train(cfg, out, quiet=args.quiet, resume=args.resume)
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        best = state.get("best_val_loss")
        print(f"trained {state['global_step']} steps, {state['epoch']} epoch(s) in {state.get('elapsed_s', 0):.0f} s; "
              f"best val_loss {best if best is None else round(best, 4)}; checkpoints in {out}/best and {out}/last")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli_main(sys.argv[1:]))
