"""Segmentation fine-tuning: U-Net on a pretrained trunk, early stopping on validation Dice, test
Dice/IoU with bootstrap CIs over images, resumable per-epoch checkpoints (safetensors + JSON).

A run folder holds ``results.json`` (everything below), ``ids/{train,validation,test}.txt`` (the
chosen image ids, hashed in the record), ``epochs.csv``, ``test_per_image.csv``, ``best.safetensors``
(the selected weights) and ``checkpoint/`` (the last epoch: weights, optimiser, state), which
``--resume`` continues from.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from benchmark.finetune.data import load_arrays, make_splits
from benchmark.finetune.encoders import encoder_for
from benchmark.finetune.fractions import ids_text, sha256_text
from benchmark.io.checkpoints import optimizer_from_safetensors, optimizer_to_safetensors
from benchmark.progress import Progress
from benchmark.records import atomic_write_json, atomic_write_text, environment, git_commit, now_iso

log = logging.getLogger("afloc_bench.finetune")
FORMAT = "afloc-bench/finetune-seg"
STATE_FILE, MODEL_FILE, OPTIM_FILE = "state.json", "model.safetensors", "optim.safetensors"


class ResumeError(ValueError):
    """A checkpoint folder that cannot be resumed by this run (names the folder)."""


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


def to_tensor(imgs: np.ndarray, cfg, device: str) -> torch.Tensor:
    x = torch.from_numpy(imgs).float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


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
# checkpoints
# -------------------------------------------------------------------------------------------------
def save_checkpoint(folder: Path, model, opt, state: dict[str, Any]) -> None:
    """Atomic folder: weights and optimiser tensors (safetensors) + JSON state; no pickles."""
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
    tensors, layout = optimizer_to_safetensors(opt)
    save_file(tensors or {"empty": torch.zeros(1)}, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "optimizer": layout}, indent=1, default=float) + "\n")
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model, opt, identity: dict[str, Any]) -> dict[str, Any]:
    if not (folder / STATE_FILE).is_file():
        raise ResumeError(f"{folder}: nothing to resume (expected {STATE_FILE} from an earlier run)")
    doc = json.loads((folder / STATE_FILE).read_text())
    if doc.get("identity") != identity:
        diff = sorted(k for k in set(identity) | set(doc.get("identity", {}))
                      if identity.get(k) != doc.get("identity", {}).get(k))
        raise ResumeError(f"{folder}: a run with other settings ({', '.join(diff)}); resume with the same ones")
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
    tensors = load_file(str(folder / OPTIM_FILE))
    layout = doc.pop("optimizer")
    optimizer_from_safetensors(opt, tensors, layout)
    return doc


# -------------------------------------------------------------------------------------------------
# one run
# -------------------------------------------------------------------------------------------------
def _hash_config(cfg) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "source")}
    return sha256_text(json.dumps(d, sort_keys=True))


def run_seg(model: str, dataset: str, fraction: float, seed: int, out: str | os.PathLike, cfg, *,
            data_root: str | None = None, ckpt: str | None = None, imagenet_weights: str | None = None,
            resume: bool = False, device: str | None = None, max_epochs: int | None = None,
            model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``model``'s encoder on ``fraction`` of ``dataset``'s training patients; returns results.json."""
    out = Path(out)
    if model == "imagenet" and not imagenet_weights:
        raise ValueError("--model imagenet needs --imagenet-weights PATH (torchvision's resnet50-*.pth or a "
                         "safetensors state dict on this machine; nothing is downloaded)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (out / "results.json").is_file():
        if not resume:
            raise ResumeError(f"{out}: holds a finished run (results.json); choose another -o or pass --resume")
        log.info("%s: finished earlier (results.json); nothing to resume", out)
        return json.loads((out / "results.json").read_text())
    if not resume and (out / "checkpoint").exists():
        raise ResumeError(f"{out}: holds an unfinished run (checkpoint/); pass --resume to continue it")
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(dataset, data_root, cfg, seed, fraction)
    ids_record = {}
    for part in ("train", "validation", "test"):
        text = ids_text([i.image_id for i in splits[part]])
        atomic_write_text(out / "ids" / f"{part}.txt", text)
        ids_record[part] = {"file": f"ids/{part}.txt", "images": len(splits[part]),
                            "patients": len(splits["patients"][part]), "sha256": sha256_text(text),
                            "positive_images": sum(i.positive for i in splits[part])}
    atomic_write_text(out / "ids" / "train_patients.txt", ids_text(splits["patients"]["train"]))

    torch.manual_seed(seed)
    net, key_report = encoder_for(model, cfg, ckpt=ckpt, imagenet_weights=imagenet_weights,
                                  model_options=model_options)
    net.to(device)
    if cfg.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad = False
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    epochs = int(max_epochs or cfg.max_epochs)
    identity = {"model": model, "dataset": dataset, "fraction": fraction, "seed": seed, "config": _hash_config(cfg),
                "train_ids": ids_record["train"]["sha256"], "encoder": key_report.get("weights_sha256", "random"),
                "max_epochs": epochs}
    state: dict[str, Any] = {"identity": identity, "epoch": 0, "history": [], "best": None, "best_epoch": None,
                             "bad_epochs": 0, "stopped": None}
    if resume and (out / "checkpoint").exists():
        state = load_checkpoint(out / "checkpoint", net, opt, identity)
        log.info("resuming %s after epoch %d", out, state["epoch"])
    elif resume:
        log.info("%s: no checkpoint/ to resume; starting from epoch 1", out)

    size = cfg.image_size
    tr_x, tr_y = load_arrays(splits["train"], size, "finetune: train images")
    va_x, va_y = load_arrays(splits["validation"], size, "finetune: validation images")
    metric = cfg.early_stopping["metric"]
    patience = int(cfg.early_stopping["patience"])
    lw = cfg.loss
    steps = (len(tr_x) + cfg.batch_size - 1) // cfg.batch_size
    while state["stopped"] is None and state["epoch"] < epochs:
        ep = state["epoch"] + 1
        rng = np.random.default_rng([seed, ep])  # per epoch: a resumed run draws what an unbroken one does
        net.train()
        if cfg.freeze_encoder:
            net.encoder.eval()  # frozen: BatchNorm statistics stay the pretrained ones
        order = rng.permutation(len(tr_x))
        tot, n_seen = 0.0, 0
        with Progress(steps, f"finetune {model} {fraction:g} seed {seed} epoch {ep}/{epochs}", unit="step") as bar:
            for a in range(0, len(order), cfg.batch_size):
                idx = order[a:a + cfg.batch_size]
                pairs = [augment(tr_x[i], tr_y[i], rng, cfg.augment) for i in idx]
                x = to_tensor(np.stack([p[0] for p in pairs]), cfg, device)
                y = torch.from_numpy(np.stack([p[1] for p in pairs])).float().unsqueeze(1).to(device)
                loss = mixed_loss(net(x), y, lw["focal_weight"], lw["focal_gamma"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
                n_seen += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        pred, val_loss = predict(net, va_x, va_y, cfg, device)
        dice, iou = image_scores(pred, va_y)
        row = {"epoch": ep, "train_loss": tot / max(1, n_seen), "val_loss": val_loss,
               "val_dice": float(dice.mean()), "val_iou": float(iou.mean())}
        state["history"].append(row)
        score = row[metric] if metric == "val_dice" else -row[metric]
        if state["best"] is None or score > state["best"]:
            state.update(best=score, best_epoch=ep, bad_epochs=0)
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                      str(out / ".best.tmp"))
            os.replace(out / ".best.tmp", out / "best.safetensors")
        else:
            state["bad_epochs"] += 1
        state["epoch"] = ep
        if state["bad_epochs"] >= patience:
            state["stopped"] = f"early stop: {metric} did not improve for {patience} epochs"
        log.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f, val IoU %.4f", ep, row["train_loss"],
                 val_loss, row["val_dice"], row["val_iou"])
        save_checkpoint(out / "checkpoint", net, opt, state)
    state["stopped"] = state["stopped"] or f"max_epochs ({epochs})"

    net.load_state_dict(load_file(str(out / "best.safetensors")), strict=True)
    te_x, te_y = load_arrays(splits["test"], size, "finetune: test images")
    pred, _ = predict(net, te_x, te_y, cfg, device)
    dice, iou = image_scores(pred, te_y)
    positive = te_y.reshape(len(te_y), -1).any(1)
    ids = [i.image_id for i in splits["test"]]
    metrics = bootstrap_ci({"dice": dice, "iou": iou, "dice_positive": np.where(positive, dice, np.nan),
                            "iou_positive": np.where(positive, iou, np.nan)}, ids, int(cfg.n_boot))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_id", "positive", "dice", "iou"])
    for i, p, d, j in zip(ids, positive, dice, iou):
        w.writerow([i, int(p), f"{d:.6f}", f"{j:.6f}"])
    atomic_write_text(out / "test_per_image.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(state["history"][0]) if state["history"] else ["epoch"])
    w.writeheader()
    w.writerows(state["history"])
    atomic_write_text(out / "epochs.csv", buf.getvalue())
    results = {
        "format": FORMAT, "format_version": 1, "date": now_iso(), "task": "segmentation",
        "protocol": "MGCA SIIM segmentation fine-tuning (U-Net, segmentation_models_pytorch)",
        "model": model, "checkpoint": key_report.get("source"), "dataset": dataset, "fraction": fraction,
        "seed": seed, "device": device, "config": cfg.to_dict(), "splits": splits["how"], "ids": ids_record,
        "encoder": key_report, "epochs": state["history"], "best_epoch": state["best_epoch"],
        "selection": cfg.early_stopping, "stopped": state["stopped"], "test": metrics,
        "wall_s": round(time.monotonic() - t0, 1), "git_commit": git_commit(), "environment": environment(device),
    }
    atomic_write_json(out / "results.json", results)
    return results


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample SD of the test metrics over seeds (SD null for one seed)."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "n": len(runs)}
    for k in ("dice", "iou", "dice_positive", "iou_positive"):
        vals = np.array([r["test"][k]["value"] for r in runs if r["test"][k]["value"] is not None], float)
        out[k] = {"mean": float(vals.mean()) if vals.size else None,
                  "sd": float(vals.std(ddof=1)) if vals.size > 1 else None, "values": vals.tolist()}
    return out


def run_seeds(seeds: list[int], out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """One run per seed under ``out/seed<S>`` and ``out/summary.json`` with mean ± sd."""
    out = Path(out)
    runs = [run_seg(seed=s, out=out / f"seed{s}", **kwargs) for s in seeds]
    first = runs[0]
    summary = {"format": FORMAT + "-summary", "format_version": 1, "date": now_iso(), "model": first["model"],
               "dataset": first["dataset"], "fraction": first["fraction"], "config": first["config"],
               "runs": [f"seed{s}/results.json" for s in seeds], "test": aggregate(runs)}
    atomic_write_json(out / "summary.json", summary)
    return summary
