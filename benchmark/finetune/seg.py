"""Segmentation fine-tuning: U-Net on a pretrained trunk, early stopping on validation Dice, test
Dice/IoU with bootstrap CIs over images, resumable per-epoch checkpoints (safetensors + JSON).

A run folder holds ``results.json`` (everything below), ``ids/{train,validation,test}.txt`` (the
chosen image ids, hashed in the record), ``epochs.csv``, ``test_per_image.csv``, ``best.safetensors``
(the selected weights) and ``checkpoint/`` (the last epoch: weights, optimiser, state), which
``--resume`` continues from.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.finetune.data import load_arrays, make_splits
from benchmark.finetune.encoders import encoder_for
from benchmark.finetune.prepared import PreparedArrays
from benchmark.finetune.runs import (  # noqa: F401 - STATE_FILE .. ResumeError: this module's names too
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    Processes,
    ResumeError,
    finished_run,
    fit,
    hash_config,
    load_best,
    load_checkpoint,
    processes,
    save_checkpoint,
    start_state,
    to_tensor,
    write_csv,
    write_epochs,
    write_ids,
)
from benchmark.finetune.runs import aggregate as _aggregate
from benchmark.finetune.runs import run_seeds as _run_seeds
from benchmark.progress import Progress
from benchmark.records import atomic_write_json, environment, git_commit, now_iso

log = logging.getLogger("afloc_bench.finetune")
FORMAT = "afloc-bench/finetune-seg"
METRICS = ("dice", "iou", "dice_positive", "iou_positive")

# -------------------------------------------------------------------------------------------------
# loss and metrics
# -------------------------------------------------------------------------------------------------
def mixed_loss(logits: torch.Tensor, target: torch.Tensor, focal_weight: float, gamma: float) -> torch.Tensor:
    """MGCA's MixedLoss: ``focal_weight`` · focal(γ) − log(soft Dice over the batch, smoothing 1)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (F.logsigmoid(-logits * (target * 2.0 - 1.0)) * gamma).exp() * bce
    p = torch.sigmoid(logits).reshape(-1)
    t = target.reshape(-1)
    dice = (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return focal_weight * focal.mean() - torch.log(dice)


def image_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks [N, H, W]; an image empty in both scores 1 (MGCA's rule)."""
    p = pred.reshape(len(pred), -1).astype(bool)
    t = truth.reshape(len(truth), -1).astype(bool)
    inter = (p & t).sum(1).astype(np.float64)
    ps, ts = p.sum(1).astype(np.float64), t.sum(1).astype(np.float64)
    union = ps + ts - inter
    empty = (ps + ts) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, 1.0, 2 * inter / (ps + ts))
        iou = np.where(empty, 1.0, inter / union)
    return dice, iou


def bootstrap_ci(values: dict[str, np.ndarray], units: list[str], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Mean and 95 % percentile CI per metric, resampling images (``benchmark.bootstrap``)."""
    from benchmark.bootstrap import percentile_ci, replicate_means, unit_weights

    names = list(values)
    mat = np.stack([values[k] for k in names], axis=1)
    out: dict[str, Any] = {}
    reps = replicate_means(mat, unit_weights(units, n_boot, seed)) if n_boot else np.zeros((0, len(names)))
    _, lo, hi = percentile_ci(reps) if n_boot else (None, np.full(len(names), np.nan), np.full(len(names), np.nan))
    for j, k in enumerate(names):
        col = mat[:, j]
        col = col[~np.isnan(col)]
        out[k] = {"value": float(col.mean()) if col.size else None, "ci_low": _num(lo[j]), "ci_high": _num(hi[j]),
                  "n": int(col.size)}
    out["n_boot"], out["ci"] = n_boot, "95% percentile, images resampled (benchmark.bootstrap.unit_weights, seed 0)"
    return out


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# -------------------------------------------------------------------------------------------------
# batches
# -------------------------------------------------------------------------------------------------
def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug: dict[str, float]):
    """MGCA's ShiftScaleRotate(shift 0, scale ±``scale``, rotate ±``rotate``°, p, constant border)."""
    import cv2

    if rng.random() >= float(aug.get("p", 0)):
        return img, mask
    s = img.shape[0]
    angle = rng.uniform(-float(aug.get("rotate", 0)), float(aug.get("rotate", 0)))
    scale = 1 + rng.uniform(-float(aug.get("scale", 0)), float(aug.get("scale", 0)))
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    img = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(mask, m, (s, s), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    return img, mask


@torch.no_grad()
def predict(model, imgs: np.ndarray, masks: np.ndarray, cfg, device: str) -> tuple[np.ndarray, float]:
    """Binary predictions [N, S, S] at ``cfg.threshold`` and the mean loss."""
    model.eval()
    preds, losses = [], []
    lw = cfg.loss
    for a in range(0, len(imgs), cfg.batch_size):
        x = to_tensor(imgs[a:a + cfg.batch_size], cfg, device)
        y = torch.from_numpy(masks[a:a + cfg.batch_size]).float().unsqueeze(1).to(device)
        logits = model(x)
        losses.append(float(mixed_loss(logits, y, lw["focal_weight"], lw["focal_gamma"])) * len(x))
        preds.append((torch.sigmoid(logits) > cfg.threshold).squeeze(1).cpu().numpy())
    return np.concatenate(preds), float(sum(losses) / max(1, len(imgs)))


# -------------------------------------------------------------------------------------------------
# one run
# -------------------------------------------------------------------------------------------------
_hash_config = hash_config


def run_seg(model: str, dataset: str, fraction: float, seed: int, out: str | os.PathLike, cfg, *,
            data_root: str | None = None, ckpt: str | None = None, imagenet_weights: str | None = None,
            resume: bool = False, device: str | None = None, max_epochs: int | None = None,
            model_options: dict[str, Any] | None = None, prepared: str | None = None) -> dict[str, Any]:
    """Fine-tune ``model``'s encoder on ``fraction`` of ``dataset``'s training patients; returns results.json.
    Under torchrun the processes share each batch (``runs.Processes``) and process 0 writes the folder;
    ``prepared``: a folder of ``afloc-bench finetune prepare`` to read the arrays from."""
    out = Path(out)
    if model == "imagenet" and not imagenet_weights:
        raise ValueError("--model imagenet needs --imagenet-weights PATH (torchvision's resnet50-*.pth or a "
                         "safetensors state dict on this machine; nothing is downloaded)")
    done = finished_run(out, resume)
    if done is not None:
        return done
    return _run_seg(model, dataset, fraction, seed, out, cfg, processes(device), data_root=data_root, ckpt=ckpt,
                    imagenet_weights=imagenet_weights, resume=resume, max_epochs=max_epochs,
                    model_options=model_options, prepared=prepared)


def _run_seg(model: str, dataset: str, fraction: float, seed: int, out: Path, cfg, procs: Processes, *,
             data_root: str | None, ckpt: str | None, imagenet_weights: str | None, resume: bool,
             max_epochs: int | None, model_options: dict[str, Any] | None,
             prepared: str | None) -> dict[str, Any]:
    device, main = procs.device, procs.main
    source = PreparedArrays(prepared, dataset, cfg.image_size) if prepared else None

    def arrays(items, desc):
        return source.arrays(items) if source else load_arrays(items, cfg.image_size, desc)

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(dataset, data_root, cfg, seed, fraction)
    ids_record = write_ids(out, splits, write=main)

    torch.manual_seed(seed)
    net, key_report = encoder_for(model, cfg, ckpt=ckpt, imagenet_weights=imagenet_weights,
                                  model_options=model_options)
    net.to(device)
    procs.start(net)
    if cfg.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad = False
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    epochs = int(max_epochs or cfg.max_epochs)
    identity = {"model": model, "dataset": dataset, "fraction": fraction, "seed": seed, "config": _hash_config(cfg),
                "train_ids": ids_record["train"]["sha256"], "encoder": key_report.get("weights_sha256", "random"),
                "max_epochs": epochs}
    state = start_state(out, net, opt, identity, resume, load_checkpoint)

    tr_x, tr_y = arrays(splits["train"], "finetune: train images")
    va_x, va_y = arrays(splits["validation"], "finetune: validation images")
    lw = cfg.loss
    steps = (len(tr_x) + cfg.batch_size - 1) // cfg.batch_size

    def train_epoch(ep: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, ep])  # per epoch: a resumed run draws what an unbroken one does
        net.train()
        if cfg.freeze_encoder:
            net.encoder.eval()  # frozen: BatchNorm statistics stay the pretrained ones
        order = rng.permutation(len(tr_x))
        tot, n_seen = 0.0, 0
        with Progress(steps, f"finetune {model} {fraction:g} seed {seed} epoch {ep}/{epochs}", unit="step",
                      enabled=main) as bar:
            for a in range(0, len(order), cfg.batch_size):
                idx = order[a:a + cfg.batch_size]
                # every process draws the whole batch's augmentation (the same stream), then keeps its share
                pairs = [augment(tr_x[i], tr_y[i], rng, cfg.augment) for i in idx]
                mine = procs.share(np.arange(len(idx)))
                loss = None
                if len(mine):
                    x = to_tensor(np.stack([pairs[j][0] for j in mine]), cfg, device)
                    y = torch.from_numpy(np.stack([pairs[j][1] for j in mine])).float().unsqueeze(1).to(device)
                    loss = mixed_loss(net(x), y, lw["focal_weight"], lw["focal_gamma"])
                opt.zero_grad(set_to_none=True)
                procs.backward(loss, len(mine), len(idx), params)
                opt.step()
                if loss is not None:
                    tot += loss.item() * len(mine)
                    n_seen += len(mine)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
        return {"train_loss": tot / max(1, n_seen), "images": n_seen}

    def validate() -> dict[str, float]:
        pred, val_loss = predict(net, va_x, va_y, cfg, device)
        dice, iou = image_scores(pred, va_y)
        return {"val_loss": val_loss, "val_dice": float(dice.mean()), "val_iou": float(iou.mean())}

    def describe(row: dict[str, Any]) -> str:
        return (f"train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                f"val Dice {row['val_dice']:.4f}, val IoU {row['val_iou']:.4f}")

    fit(out, net, opt, state, epochs=epochs, metric=cfg.early_stopping["metric"],
        patience=int(cfg.early_stopping["patience"]), train_epoch=train_epoch, validate=validate,
        save=save_checkpoint, describe=describe, procs=procs)

    load_best(out, net)
    te_x, te_y = arrays(splits["test"], "finetune: test images")
    pred, _ = predict(net, te_x, te_y, cfg, device)
    dice, iou = image_scores(pred, te_y)
    positive = te_y.reshape(len(te_y), -1).any(1)
    ids = [i.image_id for i in splits["test"]]
    metrics = bootstrap_ci({"dice": dice, "iou": iou, "dice_positive": np.where(positive, dice, np.nan),
                            "iou_positive": np.where(positive, iou, np.nan)}, ids, int(cfg.n_boot))
    if main:
        write_csv(out / "test_per_image.csv", ["image_id", "positive", "dice", "iou"],
                  [[i, int(p), f"{d:.6f}", f"{j:.6f}"] for i, p, d, j in zip(ids, positive, dice, iou)])
        write_epochs(out, state["history"])
    results = {
        "format": FORMAT, "format_version": 1, "date": now_iso(), "task": "segmentation",
        "protocol": "MGCA SIIM segmentation fine-tuning (U-Net, segmentation_models_pytorch)",
        "model": model, "checkpoint": key_report.get("source"), "dataset": dataset, "fraction": fraction,
        "seed": seed, "device": device, "config": cfg.to_dict(), "splits": splits["how"], "ids": ids_record,
        "encoder": key_report, "epochs": state["history"], "best_epoch": state["best_epoch"],
        "selection": cfg.early_stopping, "max_epochs": epochs, "stopped": state["stopped"], "test": metrics,
        "wall_s": round(time.monotonic() - t0, 1), "git_commit": git_commit(), "environment": environment(device),
        "processes": procs.world, "prepared": source.record() if source else None,
    }
    if main:
        atomic_write_json(out / "results.json", results)
    procs.barrier()
    return results


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample SD of the test metrics over seeds (SD null for one seed)."""
    return _aggregate(runs, METRICS)


def run_seeds(seeds: list[int], out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """One run per seed under ``out/seed<S>`` and ``out/summary.json`` with mean ± sd."""
    return _run_seeds(run_seg, FORMAT, METRICS, seeds, out, **kwargs)
