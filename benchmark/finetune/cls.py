"""Classification fine-tuning: a linear head on the globally pooled trunk of a model's image encoder,
binary (the samples' 0/1 labels, e.g. RSNA pneumonia), early stopping on validation AUROC, test
AUROC with a bootstrap CI over the test images, resumable like ``seg`` (``benchmark.finetune.runs``).

``--mode linear`` freezes the encoder (BatchNorm statistics included) and trains the head only, a
linear probe; ``--mode full`` trains both. A run folder holds what a segmentation run's holds
(``results.json``, ``ids/``, ``epochs.csv``, ``best.safetensors``, ``checkpoint/``), with
``test_per_image.csv`` giving each test image's label and predicted probability.
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
from torch import nn

from benchmark.backbones import ResNetBackbone
from benchmark.dataset import DataError
from benchmark.finetune.data import load_images, make_splits
from benchmark.finetune.encoders import encoder_for
from benchmark.finetune.prepared import PreparedArrays
from benchmark.finetune.runs import (
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
from benchmark.finetune.runs import run_seeds as _run_seeds
from benchmark.progress import Progress
from benchmark.records import atomic_write_json, environment, git_commit, now_iso

log = logging.getLogger("afloc_bench.finetune")
FORMAT = "afloc-bench/finetune-cls"
METRICS = ("auroc",)
MODES = ("linear", "full")


class LinearClassifier(nn.Module):
    """The trunk (``encoder``, keys as the pretrained model's) → global average pooling → dropout →
    one logit."""

    encoder_impl = "ResNetBackbone"

    def __init__(self, arch: str, width: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = ResNetBackbone(arch, width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.channels[-1], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1].mean(dim=(2, 3))

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class TowerClassifier(nn.Module):
    """A model's own image tower (``encoder``: the CLIP family's vision transformer, keys as the
    model's) → its pooled embedding → dropout → one logit. The batch, normalised by the config's
    ``mean``/``std``, is renormalised to the tower's pretraining statistics and resized (bilinear) to
    its input side when the crop differs."""

    encoder_impl = "vision tower"

    def __init__(self, tower: dict[str, Any], cfg):
        super().__init__()
        self.encoder, self.size = tower["module"], int(tower["size"])
        self.register_buffer("_scale", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
                             / torch.tensor(tower["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", (torch.tensor(cfg.mean, dtype=torch.float32)
                                        - torch.tensor(tower["mean"], dtype=torch.float32)).view(1, 3, 1, 1)
                             / torch.tensor(tower["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            dim = self._embed(torch.zeros(1, 3, self.size, self.size)).shape[-1]
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(dim, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self._scale + self._shift
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._embed(x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def _has_tower(model: str) -> bool:
    from benchmark.finetune.encoders import CONTROLS
    from benchmark.registry import models

    return model not in CONTROLS and model in models and hasattr(models.get(model), "vision_tower")


def tower_classifier(model: str, cfg, *, ckpt: str | None = None, model_options: dict[str, Any] | None = None,
                     **_: Any) -> tuple[TowerClassifier, dict[str, Any]]:
    """``(classifier on ``model``'s own image tower, report)`` for models without a ResNet trunk."""
    from benchmark.adapter import build_adapter
    from benchmark.cache import state_dict_sha256

    adapter = build_adapter(model)
    adapter.options.update(model_options or {})
    adapter.load(ckpt, "cpu")
    tower = adapter.vision_tower()
    net = TowerClassifier(tower, cfg)
    keys = [k for k in net.state_dict() if k.startswith("encoder.")]
    return net, {"source": str(adapter.checkpoint or tower["source"]), "encoder_impl": TowerClassifier.encoder_impl,
                 "arch": type(tower["module"]).__name__, "encoder_keys": len(keys), "matched": len(keys),
                 "missing": [], "unexpected": [], "shape_mismatch": [], "input_size": tower["size"],
                 "normalisation": {"mean": tower["mean"], "std": tower["std"]},
                 "weights_sha256": state_dict_sha256({k: v for k, v in net.state_dict().items() if k in keys})}


def classifier_for(model: str, cfg, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``(classifier with ``model``'s trunk, key report)``: ``encoder_for`` with a linear head, or, for
    a model whose image encoder is no ResNet (the CLIP family), its own tower under the head."""
    if _has_tower(model):
        return tower_classifier(model, cfg, **kwargs)
    return encoder_for(model, cfg, build=lambda arch, width: LinearClassifier(arch, width, cfg.dropout), **kwargs)


def encoder_sha256(net: nn.Module) -> str:
    from benchmark.cache import state_dict_sha256

    return state_dict_sha256({k: v for k, v in net.state_dict().items() if k.startswith("encoder.")})


# -------------------------------------------------------------------------------------------------
# batches and scores
# -------------------------------------------------------------------------------------------------
def crop(imgs: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``size``² crops of [N, R, R] images: at random offsets (training, ``rng``) or the centre."""
    r = imgs.shape[-1]
    if r == size:
        return imgs
    if rng is None:
        a = (r - size) // 2
        return imgs[:, a:a + size, a:a + size]
    offs = rng.integers(0, r - size + 1, size=(len(imgs), 2))
    return np.stack([im[y:y + size, x:x + size] for im, (y, x) in zip(imgs, offs)])


@torch.no_grad()
def encode(net: LinearClassifier, imgs: np.ndarray, cfg, device: str) -> torch.Tensor:
    """Pooled features of the centre crops, encoder in eval mode (the frozen encoder's view)."""
    net.encoder.eval()
    out = [net.features(to_tensor(crop(imgs[a:a + cfg.batch_size], cfg.image_size), cfg, device))
           for a in range(0, len(imgs), cfg.batch_size)]
    return torch.cat(out) if out else torch.zeros(0, net.head.in_features, device=device)


@torch.no_grad()
def predict(net: LinearClassifier, cfg, device: str, *, imgs: np.ndarray | None = None,
            feats: torch.Tensor | None = None) -> np.ndarray:
    """Logits of the centre crops ``imgs`` (or of precomputed ``feats``), model in eval mode."""
    net.eval()
    if feats is not None:
        return net.classify(feats).cpu().numpy().astype(np.float64)
    out = [net(to_tensor(crop(imgs[a:a + cfg.batch_size], cfg.image_size), cfg, device)).cpu()
           for a in range(0, len(imgs), cfg.batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def bce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))


def auroc_ci(labels: np.ndarray, scores: np.ndarray, units: list[str], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """AUROC and its 95 % percentile CI, resampling test images (``benchmark.bootstrap``)."""
    from benchmark.bootstrap import percentile_ci, unit_weights
    from benchmark.metrics import auroc, auroc_weighted

    point = auroc(labels, scores)
    lo = hi = None
    if n_boot:
        reps = np.concatenate([auroc_weighted(labels, scores, w) for w in unit_weights(units, n_boot, seed)])
        _, low, high = percentile_ci(reps)
        lo, hi = (float(low), float(high)) if np.isfinite(low) else (None, None)
    return {"auroc": {"value": point if np.isfinite(point) else None, "ci_low": lo, "ci_high": hi,
                      "n": len(labels), "positives": int(np.sum(labels))},
            "n_boot": n_boot, "ci": f"95% percentile, images resampled (benchmark.bootstrap.unit_weights, seed {seed})"}


def _both_classes(items, part: str, dataset: str) -> None:
    n_pos = sum(i.positive for i in items)
    if n_pos in (0, len(items)):
        raise DataError(None, f"{dataset}: the {part} set ({len(items)} images) holds one class only; AUROC needs "
                              f"positives and negatives (change val_share/test_share or the data)")


# -------------------------------------------------------------------------------------------------
# one run
# -------------------------------------------------------------------------------------------------
def run_cls(model: str, dataset: str, fraction: float, seed: int, out: str | os.PathLike, cfg, *,
            mode: str = "linear", data_root: str | None = None, ckpt: str | None = None,
            imagenet_weights: str | None = None, resume: bool = False, device: str | None = None,
            max_epochs: int | None = None, model_options: dict[str, Any] | None = None,
            prepared: str | None = None) -> dict[str, Any]:
    """Train a linear head (``mode`` linear) or the whole network (full) on ``fraction`` of ``dataset``'s
    training patients; returns results.json. ``prepared``: a folder of ``afloc-bench finetune prepare``
    at the config's ``resize`` to read the images from."""
    out = Path(out)
    if mode not in MODES:
        raise ValueError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    if model == "imagenet" and not imagenet_weights:
        raise ValueError("--model imagenet needs --imagenet-weights PATH (torchvision's resnet50-*.pth or a "
                         "safetensors state dict on this machine; nothing is downloaded)")
    done = finished_run(out, resume)
    if done is not None:
        return done
    procs = processes(device)
    device, main = procs.device, procs.main
    source = PreparedArrays(prepared, dataset, cfg.resize) if prepared else None

    def images(items, desc):
        return source.images_of(items) if source else load_images(items, cfg.resize, desc)

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(dataset, data_root, cfg, seed, fraction, labels=True)
    splits["how"]["labels"] = "the samples' 0/1 labels (rsna_pneumonia: Target)"
    _both_classes(splits["validation"], "validation", dataset)
    _both_classes(splits["test"], "test", dataset)
    ids_record = write_ids(out, splits, write=main)

    torch.manual_seed(seed)
    net, key_report = classifier_for(model, cfg, ckpt=ckpt, imagenet_weights=imagenet_weights,
                                     model_options=model_options)
    net.to(device)
    procs.start(net)
    start_sha = encoder_sha256(net)
    linear = mode == "linear"
    if linear:
        for p in net.encoder.parameters():
            p.requires_grad = False
        groups = [{"params": list(net.head.parameters()), "lr": cfg.lr}]
    else:
        groups = [{"params": list(net.encoder.parameters()), "lr": cfg.encoder_lr or cfg.lr},
                  {"params": list(net.head.parameters()), "lr": cfg.lr}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    trained = [p for g in groups for p in g["params"]]
    epochs = int(max_epochs or cfg.max_epochs)
    identity = {"model": model, "dataset": dataset, "fraction": fraction, "seed": seed, "mode": mode,
                "config": hash_config(cfg), "train_ids": ids_record["train"]["sha256"], "encoder": start_sha,
                "max_epochs": epochs}
    state = start_state(out, net, opt, identity, resume, load_checkpoint)

    tr_x = images(splits["train"], "finetune: train images")
    va_x = images(splits["validation"], "finetune: validation images")
    tr_y = np.array([i.positive for i in splits["train"]], np.float32)
    va_y = np.array([i.positive for i in splits["validation"]], np.float64)
    # a frozen encoder sees the same centre crops every epoch: encode them once
    va_f = encode(net, va_x, cfg, device) if linear else None
    tr_f = encode(net, tr_x, cfg, device) if linear and cfg.cache_features else None
    steps = (len(tr_x) + cfg.batch_size - 1) // cfg.batch_size

    def train_epoch(ep: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, ep])  # per epoch: a resumed run draws what an unbroken one does
        torch.manual_seed(int(rng.integers(2**62)))  # dropout
        net.train()
        if linear:
            net.encoder.eval()  # frozen: BatchNorm statistics stay the pretrained ones
        order = rng.permutation(len(tr_x))
        tot, n_seen = 0.0, 0
        with Progress(steps, f"finetune cls {mode} {model} {fraction:g} seed {seed} epoch {ep}/{epochs}",
                      unit="step", enabled=main) as bar:
            for a in range(0, len(order), cfg.batch_size):
                batch = order[a:a + cfg.batch_size]
                # every process draws the whole batch's crops (the same stream), then keeps its share
                crops = None if tr_f is not None else crop(tr_x[batch], cfg.image_size, rng)
                mine = procs.share(np.arange(len(batch)))
                idx = batch[mine]
                loss = None
                if len(idx):
                    y = torch.from_numpy(tr_y[idx]).to(device)
                    if tr_f is not None:
                        logits = net.classify(tr_f[torch.from_numpy(idx).to(tr_f.device)])
                    else:
                        x = to_tensor(crops[mine], cfg, device)
                        if linear:
                            with torch.no_grad():
                                feats = net.features(x)
                            logits = net.classify(feats)
                        else:
                            logits = net(x)
                    loss = F.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad(set_to_none=True)
                procs.backward(loss, len(idx), len(batch), trained)
                opt.step()
                if loss is not None:
                    tot += loss.item() * len(idx)
                    n_seen += len(idx)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
        return {"train_loss": tot / max(1, n_seen), "images": n_seen}

    def validate() -> dict[str, float]:
        from benchmark.metrics import auroc

        logits = predict(net, cfg, device, imgs=va_x, feats=va_f)
        return {"val_loss": bce(logits, va_y), "val_auroc": auroc(va_y, logits)}

    def describe(row: dict[str, Any]) -> str:
        return (f"train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                f"val AUROC {row['val_auroc']:.4f}")

    fit(out, net, opt, state, epochs=epochs, metric=cfg.early_stopping["metric"],
        patience=int(cfg.early_stopping["patience"]), train_epoch=train_epoch, validate=validate,
        save=save_checkpoint, describe=describe, procs=procs)

    load_best(out, net)
    best_sha = encoder_sha256(net)
    te_x = images(splits["test"], "finetune: test images")
    te_y = np.array([i.positive for i in splits["test"]], np.float64)
    logits = predict(net, cfg, device, imgs=te_x)
    prob = 1.0 / (1.0 + np.exp(-logits))
    ids = [i.image_id for i in splits["test"]]
    metrics = auroc_ci(te_y, prob, ids, int(cfg.n_boot))
    metrics["loss"] = bce(logits, te_y)
    if main:
        write_csv(out / "test_per_image.csv", ["image_id", "label", "probability"],
                  [[i, int(y), f"{p:.6f}"] for i, y, p in zip(ids, te_y, prob)])
        write_epochs(out, state["history"])
    results = {
        "format": FORMAT, "format_version": 1, "date": now_iso(), "task": "classification", "mode": mode,
        "protocol": "MGCA RSNA classification fine-tuning (linear head on the pooled encoder, BCE, AdamW)",
        "model": model, "checkpoint": key_report.get("source"), "dataset": dataset, "fraction": fraction,
        "seed": seed, "device": device, "config": cfg.to_dict(), "splits": splits["how"], "ids": ids_record,
        "encoder": key_report,
        "encoder_weights": {"start_sha256": start_sha, "best_sha256": best_sha, "changed": start_sha != best_sha},
        "epochs": state["history"], "best_epoch": state["best_epoch"], "selection": cfg.early_stopping,
        "max_epochs": epochs, "stopped": state["stopped"], "test": metrics,
        "wall_s": round(time.monotonic() - t0, 1), "git_commit": git_commit(), "environment": environment(device),
        "processes": procs.world, "prepared": source.record() if source else None,
    }
    if main:
        atomic_write_json(out / "results.json", results)
    procs.barrier()
    return results


def run_seeds(seeds: list[int], out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """One run per seed under ``out/seed<S>`` and ``out/summary.json`` with the test AUROC's mean ± SD."""
    return _run_seeds(run_cls, FORMAT, METRICS, seeds, out, extra=("mode",), **kwargs)
