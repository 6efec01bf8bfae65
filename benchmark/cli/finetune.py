"""`afloc-bench finetune seg|cls`: fine-tune a model's image encoder for segmentation or classification
on a label fraction."""

from __future__ import annotations

import argparse
import json

HELP = ("fine-tune a pretrained image encoder on 1/10/100 %% of the labels (seg: U-Net on SIIM; "
        "cls: linear head on RSNA pneumonia)")
DESCRIPTION = """\
seg: fine-tune the image encoder of MODEL in a U-Net (segmentation_models_pytorch) on a label fraction of
the training patients, select the epoch by validation Dice and score Dice/IoU on the test images with
bootstrap CIs.
cls: put a linear head on MODEL's globally pooled image encoder, train the head (--mode linear) or
everything (--mode full) on a label fraction, select the epoch by validation AUROC and score the test
AUROC with a bootstrap CI. Protocol, configs and outputs: docs/finetune.md.

examples:
  afloc-bench finetune seg --model afloc --dataset demo_siim --fraction 1.0 --seed 0 -o runs/ft_afloc
  afloc-bench finetune seg --model random --dataset demo_siim --fraction 0.1 --seeds 0,1,2 -o runs/ft_random
  afloc-bench finetune seg --model afloc --ckpt Pretrained_CXR.ckpt --model-option text_encoder=BERT_DIR \\
      --dataset siim_pneumothorax --data-root /data/siim --config paper --fraction 0.01 --seed 0 -o runs/p1
  afloc-bench finetune cls --model afloc --dataset demo_rsna --fraction 0.1 --seeds 0,1,2 --mode linear -o runs/c1
  afloc-bench finetune cls --model random --dataset demo_rsna --fraction 1.0 --seed 0 --mode full -o runs/c2
  torchrun --nproc_per_node 4 $(which afloc-bench) finetune seg --model afloc --ckpt ... --config paper -o runs/p4
  afloc-bench finetune prepare --dataset siim_pneumothorax --data-root /data/siim --size 224 -o /data/siim-224
  afloc-bench finetune seg --model afloc ... --config paper --prepared /data/siim-224 -o runs/p5
"""
DEFAULT_DATASET = {"seg": "siim_pneumothorax", "cls": "rsna_pneumonia"}


def _fraction(text: str) -> float:
    f = float(text)
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] (0.01, 0.1, 1.0), not {text}")
    return f


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (0,1,2), not {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["seg", "cls", "prepare"],
                        help="what to fine-tune for (seg: segmentation, cls: binary classification), or prepare: "
                             "decode and resize a dataset once for many runs (--size, -o)")
    parser.add_argument("--model",
                        help="a registered model with a ResNet image encoder (afloc, gloria, ...), "
                             "random (no pretraining) or imagenet (with --imagenet-weights)")
    parser.add_argument("--dataset", help="seg: siim_pneumothorax (default) or demo_siim; "
                                           "cls: rsna_pneumonia (default) or demo_rsna")
    parser.add_argument("--fraction", type=_fraction, default=1.0, help="share of the training patients (0.01 ...)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="fraction sampling and training seed (default 0)")
    seeds.add_argument("--seeds", type=_seeds, help="several seeds (0,1,2): one run each + summary.json")
    parser.add_argument("--mode", choices=["linear", "full"],
                        help="cls only: linear (default: frozen encoder, linear probe) or full (everything trained)")
    parser.add_argument("--data-root", help="dataset folder (or a template with {dataset})")
    parser.add_argument("--config", default=None, help="preset (demo, paper) or a YAML file (default: demo)")
    parser.add_argument("--ckpt", help="checkpoint of --model (default: its demo weights)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option of --model (e.g. text_encoder=PATH for official AFLoc files)")
    parser.add_argument("--imagenet-weights", help="local torchvision ResNet-50 weights for --model imagenet")
    parser.add_argument("--max-epochs", type=int, help="override the config's max_epochs")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("--prepared", metavar="DIR",
                        help="read the images (and masks) from a folder of `finetune prepare` at the config's size "
                             "(seg: image_size, cls: resize)")
    parser.add_argument("--size", type=int, help="prepare only: side in px (seg: the config's image_size, 224 for "
                                                 "paper; cls: its resize)")
    parser.add_argument("-o", "--out", required=True, help="run folder")


def run(args: argparse.Namespace) -> int:
    from benchmark.finetune.config import load_config

    if args.task == "prepare":
        return _prepare(args)
    if not args.model:
        raise ValueError(f"finetune {args.task} needs --model")
    if args.task == "seg" and args.mode:
        raise ValueError("--mode applies to finetune cls only (seg: freeze_encoder in the config)")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise ValueError(f"--max-epochs {args.max_epochs}: expected a positive number of epochs")
    if args.seeds is not None and not args.seeds:
        raise ValueError("--seeds: expected at least one seed (0,1,2)")
    options = {}
    for item in args.model_option:
        if "=" not in item:
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        options[k.strip()] = v
    cfg = load_config(args.config, task=args.task)
    kw = dict(model=args.model, dataset=args.dataset or DEFAULT_DATASET[args.task], fraction=args.fraction, cfg=cfg,
              data_root=args.data_root, ckpt=args.ckpt, imagenet_weights=args.imagenet_weights, resume=args.resume,
              device=args.device, max_epochs=args.max_epochs, model_options=options, prepared=args.prepared)
    if args.task == "cls":
        from benchmark.finetune.cls import run_cls as run_one
        from benchmark.finetune.cls import run_seeds

        kw["mode"] = args.mode or "linear"
        shown: tuple[str, ...] = ("auroc",)
    else:
        from benchmark.finetune.seg import run_seeds
        from benchmark.finetune.seg import run_seg as run_one

        shown = ("dice", "iou", "dice_positive")
    from benchmark.finetune.runs import close_processes, is_main_process

    try:
        if args.seeds:
            summary = run_seeds(args.seeds, args.out, **kw)
            test = summary["test"]
        else:
            res = run_one(seed=args.seed, out=args.out, **kw)
            test = {k: res["test"][k] for k in shown}
    finally:
        close_processes()
    if is_main_process():
        print(json.dumps({"out": str(args.out), "test": test}, indent=1))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from benchmark.finetune.prepared import prepare

    if not args.dataset or not args.size:
        raise ValueError("finetune prepare needs --dataset and --size (the config's image_size or resize)")
    if args.size < 8:
        raise ValueError(f"--size {args.size}: expected a side in px (224, 256 ...)")
    record = prepare(args.dataset, args.data_root, args.out, args.size)
    print(json.dumps({"out": str(args.out), "images": record["images"], "size": record["size"]}, indent=1))
    return 0
