"""Train a multi-label DenseNet classifier from image-level labels (the saliency baselines' model).

CheXlocalize's saliency maps come from CheXpert classifiers trained on image-level labels. This
trainer produces the same kind of model from any registered dataset whose samples carry labels:
either one sample per (image, finding) with ``label`` 0/1 (the runner's classification layout),
or one sample per image with ``meta["labels"]`` = ``{finding: 1 | 0 | -1 | None}`` (CheXpert-style
label csv; -1 = uncertain). Blank values of a label table are negatives, as in CheXpert's labeler
convention (``blank="ignore"`` masks them instead); uncertain labels are masked out of the loss by
default ("U-Ignore" in the CheXpert paper's terms; ``uncertain="ones"`` / ``"zeros"`` map them).
Findings a per-(image, finding) loader does not list stay unknown (masked).

The recipe follows the CheXpert baseline where it is cheap to do so (Adam, lr 1e-4, batch 16,
320×320 resized input, ImageNet normalisation, sigmoid outputs in CheXpert task order); epochs,
image size and a small ``tiny`` architecture are options so the demo trains on a CPU in minutes.
The model is saved with ``baselines.saliency.classifiers.save_classifier`` (plain containers, ``weights_only``-safe)
and loads back through the saliency adapters (``--ckpt gradcam:densenet121=PATH``).

CLI: ``afloc-bench train classifier DATASET [--data-root ...] --out DIR --epochs N`` (or ``--dataset DATASET``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from baselines.saliency import classifiers as C
from baselines.saliency.adapter import frame
from baselines.saliency.classifiers import output_key
from benchmark.dataset import DataError, build_dataset
from benchmark.demo import ensure_demo_data
from benchmark.io.images import read_image
from benchmark.progress import progress as with_progress
from benchmark.run.config import choose_device

log = logging.getLogger(__name__)

TINY = {"growth_rate": 12, "block_config": (2, 2, 2, 2), "num_init_features": 24, "bn_size": 2}


LABEL_CSVS = ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-chexpert.csv.gz")


def _plain_id(v: Any) -> str:
    s = str(v).strip()
    s = s[1:] if s[:1] in ("p", "s") and s[1:].isdigit() else s
    try:
        return str(int(float(s)))
    except ValueError:
        return s


def read_study_labels(path: str | os.PathLike) -> dict[tuple[str, str], dict[str, Any]]:
    """A CheXpert-style label csv (``subject_id, study_id, <finding columns>``; MIMIC-CXR's
    ``mimic-cxr-2.0.0-chexpert.csv``) → ``{(subject, study): {finding: 1.0 | 0.0 | -1.0 | None}}``."""


    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read the label csv ({e})") from e
    missing = [c for c in ("subject_id", "study_id") if c not in df.columns]
    if missing:
        raise DataError(path, f"expected columns subject_id, study_id and one column per finding; missing {missing}")
    findings = [c for c in df.columns if c not in ("subject_id", "study_id")]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        vals = {}
        for c in findings:
            v = str(rec[c]).strip()
            try:
                vals[c] = float(v) if v else None
            except ValueError as e:
                raise DataError(path, f"study {rec['study_id']}: {c} = {v!r} is not 1, 0, -1 or blank") from e
        out[(_plain_id(rec["subject_id"]), _plain_id(rec["study_id"]))] = vals
    return out


def attach_study_labels(samples: Sequence[Any], table: dict[tuple[str, str], dict[str, Any]]) -> int:
    """Put ``meta["labels"]`` on samples that have none, by (patient, study); returns how many matched."""
    n = 0
    for s in samples:
        meta = s.meta if s.meta is not None else {}
        if isinstance(meta.get("labels"), dict) or s.label is not None:
            continue
        key = (_plain_id(s.patient_id), _plain_id(meta.get("study_id", "")))
        if key in table:
            meta["labels"] = table[key]
            s.meta = meta
            n += 1
    return n


def collect_labels(samples: Sequence[Any], labels: Sequence[str], *, uncertain: str = "ignore",
                   blank: str = "zeros") -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Per-image label matrix ``[n_images, n_labels]`` with NaN for unknown, from loader samples.

    Returns ``(image_paths, matrix, counts)``; ``counts`` reports what was used and ignored so
    nothing is dropped silently.
    """

    if uncertain not in ("ignore", "ones", "zeros"):
        raise ValueError(f"uncertain must be ignore, ones or zeros, not {uncertain!r}")
    if blank not in ("ignore", "zeros"):
        raise ValueError(f"blank must be ignore or zeros, not {blank!r}")
    col = {output_key(lb): j for j, lb in enumerate(labels)}
    rows: dict[str, np.ndarray] = {}
    counts = {"samples": 0, "values_used": 0, "uncertain": 0, "blank_as_negative": 0, "unlabelled_samples": 0,
              "unknown_findings": 0}
    unknown: set[str] = set()

    def put(path: str, finding: str, value: Any) -> None:
        j = col.get(output_key(finding))
        if j is None:
            unknown.add(str(finding))
            counts["unknown_findings"] += 1
            return
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if blank == "ignore":
                return
            counts["blank_as_negative"] += 1
            value = 0.0
        v = float(value)
        if v == -1:
            counts["uncertain"] += 1
            if uncertain == "ignore":
                return
            v = 1.0 if uncertain == "ones" else 0.0
        row = rows.setdefault(path, np.full(len(labels), np.nan, dtype=np.float32))
        row[j] = 1.0 if v > 0 else 0.0
        counts["values_used"] += 1

    for s in samples:
        counts["samples"] += 1
        meta_labels = (s.meta or {}).get("labels")
        if isinstance(meta_labels, dict):
            rows.setdefault(s.image_path, np.full(len(labels), np.nan, dtype=np.float32))
            for finding, value in meta_labels.items():
                put(s.image_path, finding, value)
        elif s.label is not None and s.category:
            put(s.image_path, s.category, s.label)
        else:
            counts["unlabelled_samples"] += 1
    if unknown:
        log.info("findings without a classifier output (ignored): %s", ", ".join(sorted(unknown)))
    paths = sorted(rows)
    matrix = np.stack([rows[p] for p in paths]) if paths else np.zeros((0, len(labels)), np.float32)
    return paths, matrix, counts


def _auroc(y: np.ndarray, p: np.ndarray) -> float:

    ok = ~np.isnan(y)
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(y[ok], p[ok]))


def train_classifier(dataset_name: str, data_root: str | os.PathLike | None, out_dir: str | os.PathLike,
                     epochs: int = 3, *, split: str | None = "train", labels: Sequence[str] | None = None,
                     arch: str = "densenet121", input_geometry: str = "resize:320x320", batch_size: int = 16,
                     lr: float = 1e-4, weight_decay: float = 0.0, val_fraction: float = 0.1, seed: int = 0,
                     limit: int | None = None, uncertain: str = "ignore", blank: str = "zeros",
                     init: str | None = None,
                     label_csv: str | os.PathLike | None = None, device: str = "cpu", resume: bool = True,
                     progress: bool | None = None) -> dict[str, Any]:
    """Train and save ``<out_dir>/classifier.safetensors``; returns the training summary (also ``summary.json``).

    ``split=None`` uses the dataset's default split. ``init`` starts from a classifier checkpoint
    (any format the saliency adapters load). Samples without labels get them from ``label_csv``
    (default: ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` in the dataset root, joined by subject and
    ``meta["study_id"]``). With ``resume`` an interrupted run continues from ``<out_dir>/last.pt``.
    """


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels else list(C.CHEXPERT_TASKS)
    overrides = {"split": split} if split else {}
    ds = build_dataset(dataset_name, None if data_root is None else str(data_root), **overrides)
    samples = ds.samples()
    csv = Path(label_csv) if label_csv else next((ds.root / n for n in LABEL_CSVS if (ds.root / n).is_file()), None)
    n_joined = attach_study_labels(samples, read_study_labels(csv)) if csv is not None else 0
    paths, y, counts = collect_labels(samples, labels, uncertain=uncertain, blank=blank)
    counts["joined_from_label_csv"] = n_joined
    if limit is not None:
        paths, y = paths[:limit], y[:limit]
    if len(paths) < 2:
        raise DataError(ds.root, f"dataset {dataset_name!r} (split {ds.split!r}) has {len(paths)} labelled images; "
                                 "training needs image-level labels (sample.label with a category, or "
                                 "meta['labels'])")
    positives = {lb: int(np.nansum(y[:, j] == 1)) for j, lb in enumerate(labels)}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_val = int(round(val_fraction * len(paths))) if val_fraction > 0 else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    # model
    device = choose_device(device)
    if init:
        model, report = C.load_classifier(init, labels=labels)
        log.info("initialised from %s", report.summary())
    else:
        arch_kw = TINY if arch == "tiny" else {}
        if arch not in ("densenet121", "tiny"):
            raise ValueError(f"arch must be densenet121 or tiny, not {arch!r}")
        spec = C.ClassifierSpec(labels=labels, input_geometry=input_geometry, **arch_kw)
        model = C.build_classifier(spec, seed=seed)
    spec = model.spec
    model = model.to(device)

    # inputs: decoded and framed once (the demo sets are small; real CheXpert wants a DataLoader)
    skipped: list[dict[str, str]] = []
    tensors: list[Any] = []
    keep: list[int] = []
    show = True if progress is None else bool(progress)

    for i, p in enumerate(with_progress(paths, "reading images", unit="img", enabled=show)):
        try:
            tensors.append(C.to_input_tensor(frame(read_image(p), spec.input_geometry), spec))
            keep.append(i)
        except DataError as e:
            skipped.append({"path": p, "reason": str(e)})
    if skipped:
        log.warning("%d image(s) could not be read and were skipped", len(skipped))
    index_of = {i: k for k, i in enumerate(keep)}
    train_idx = np.array([index_of[i] for i in train_idx if i in index_of], dtype=np.int64)
    val_idx = np.array([index_of[i] for i in val_idx if i in index_of], dtype=np.int64)
    X = torch.stack(tensors)
    Y = torch.from_numpy(y[keep])

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last = out / "last.pt"
    if resume and last.is_file():
        from benchmark.io.checkpoints import safe_torch_load

        state = safe_torch_load(last, expected="a classifier training state (last.pt)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        log.info("resuming from %s at epoch %d", last, start_epoch)

    gen = torch.Generator().manual_seed(seed)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        losses = []
        batches = range(0, len(perm), batch_size)
        for b in with_progress(batches, f"classifier epoch {epoch + 1}/{epochs}", unit="batch", enabled=show):
            idx = torch.from_numpy(perm[b:b + batch_size])
            if len(idx) < 2 and len(perm) > 1:
                continue  # BatchNorm needs two images; the remainder is reported as skipped steps
            xb, yb = X[idx].to(device), Y[idx].to(device)
            mask = ~torch.isnan(yb)
            logits = model(xb)
            loss_el = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.nan_to_num(yb),
                                                                        reduction="none")
            loss = (loss_el * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "steps": len(losses), "seconds": round(time.time() - t0, 2)}
        if len(val_idx):
            prob = predict(model, X[torch.from_numpy(val_idx)], device=device, batch_size=batch_size)
            yv = Y[torch.from_numpy(val_idx)].numpy()
            aucs = {lb: _auroc(yv[:, j], prob[:, j]) for j, lb in enumerate(labels)}
            rec["val_auroc"] = {k: (None if math.isnan(v) else round(v, 4)) for k, v in aucs.items()}
            finite = [v for v in aucs.values() if not math.isnan(v)]
            rec["val_mean_auroc"] = round(float(np.mean(finite)), 4) if finite else None
        history.append(rec)
        log.info("epoch %d: %s", epoch + 1, rec)
        tmp = last.with_name("last.pt.tmp")
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": json.dumps(history)}, str(tmp))
        os.replace(tmp, last)

    model.eval()
    summary = {
        "dataset": dataset_name, "split": ds.split, "root": str(ds.root), "labels": labels, "arch": arch,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "uncertain": uncertain, "blank": blank,
        "n_images": len(keep), "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "positives": positives, "label_counts": counts, "loader_skipped": len(ds.skipped),
        "images_skipped": skipped[:100], "n_images_skipped": len(skipped), "history": history,
        "input_geometry": spec.input_geometry,
    }
    # the checkpoint's copy leaves out what differs between builds of the same weights (the data's
    # location on this machine, epoch timings), so that its hash names the weights; summary.json keeps them
    portable = {k: v for k, v in summary.items() if k != "root"}
    portable["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    ckpt = C.save_classifier(model.cpu(), out / "classifier.safetensors", training=portable)
    summary["checkpoint"] = str(ckpt)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def predict(model, x, *, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """Sigmoid probabilities ``[N, n_labels]`` of a batch tensor, in eval mode without gradients."""

    model.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(x), batch_size):
            out.append(torch.sigmoid(model(x[b:b + batch_size].to(device))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afloc-bench train classifier",
                                description="Train a DenseNet multi-label classifier for the saliency baselines.")
    p.add_argument("dataset", nargs="?", default=None,
                   help="registered dataset with image-level labels (e.g. demo_mimic)")
    p.add_argument("--dataset", dest="dataset_opt", default=None, metavar="DATASET",
                   help="the same as the positional argument (as in `train afloc --dataset`)")
    p.add_argument("--data-root", default=None, help="dataset root (default: the registered/demo root)")
    p.add_argument("--out", required=True, help="output folder (classifier.safetensors, summary.json, last.pt)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--split", default="train", help="split to train on ('' = the dataset's default)")
    p.add_argument("--arch", default="densenet121", choices=["densenet121", "tiny"])
    p.add_argument("--input-geometry", default="resize:320x320", help="e.g. resize:320x320 or resize:224x224")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--uncertain", default="ignore", choices=["ignore", "ones", "zeros"])
    p.add_argument("--blank", default="zeros", choices=["zeros", "ignore"],
                   help="blank label-table values: negatives (CheXpert convention) or unknown")
    p.add_argument("--labels", default=None, help="comma-separated output names (default: CheXpert's 14)")
    p.add_argument("--init", default=None, help="start from this classifier checkpoint")
    p.add_argument("--label-csv", default=None,
                   help="CheXpert-style label csv (subject_id, study_id, findings); default: "
                        "mimic-cxr-2.0.0-chexpert.csv[.gz] in the dataset root when present")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    p.add_argument("--quiet", action="store_true")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.dataset and args.dataset_opt and args.dataset != args.dataset_opt:
        parser.error(f"two datasets given: {args.dataset!r} and --dataset {args.dataset_opt!r}")
    args.dataset = args.dataset or args.dataset_opt
    if not args.dataset:
        parser.error("a dataset is required (e.g. demo_mimic)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    summary = train_classifier(args.dataset, args.data_root, args.out, args.epochs, split=args.split or None,
                               labels=labels, arch=args.arch, input_geometry=args.input_geometry,
                               batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                               seed=args.seed, limit=args.limit, uncertain=args.uncertain, blank=args.blank,
                               init=args.init, label_csv=args.label_csv,
                               device=args.device, resume=not args.no_resume,
                               progress=False if args.quiet else None)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"classifier saved to {summary['checkpoint']} ({summary['n_train']} train / {summary['n_val']} val "
          f"images; last epoch: loss {last.get('train_loss')}, val mean AUROC {last.get('val_mean_auroc')})")
    return 0


# the demo classifier (the demo weights of the saliency rows): a small DenseNet on the image-level
# labels of demo_mimic's training split (report-derived, never a box or a mask), about 3 minutes
DEMO_RECIPE = {"arch": "tiny", "input_geometry": "resize:224x224", "epochs": 12, "batch_size": 16, "lr": 1e-3,
               "seed": 0, "val_fraction": 0.1}


class ClassifierTraining:
    """``afloc-bench train classifier``: the saliency baselines' classifier (its own trainer)."""

    name = "classifier"

    @staticmethod
    def cli_main(argv: Sequence[str]) -> int:
        return cli_main(argv)

    @staticmethod
    def build_demo(work: Path, quiet: bool = True, config: str = "demo") -> Path:

        from benchmark.training.demo_weights import fixed_threads

        if config != "demo":
            raise ValueError(f"the classifier has one demo recipe (demo), not {config!r}")
        ensure_demo_data(["demo_mimic"])
        run = work / "run"
        with fixed_threads():
            train_classifier("demo_mimic", None, run, split="train", resume=False,
                             progress=False if quiet else None, **DEMO_RECIPE)
        (run / "last.pt").unlink(missing_ok=True)  # optimizer state: not needed for inference
        return run

    @staticmethod
    def demo_complete(folder: Path) -> bool:
        return (folder / "classifier.safetensors").is_file()
