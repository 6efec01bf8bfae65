"""``canonical@1``: AFLoc's measurements with the quirks fixed.

Differences from ``afloc-compat@1`` (the full table is in ``docs/protocols.md``):
maps are scored in original image coordinates (no letterbox padding, no INTER_AREA or
flooring of the ground truth, no 14-px margin, pixels the model never saw are NaN);
boxes are a union; an empty prediction of a present lesion scores 0 instead of dropping
out; per-sample threshold averages never turn NaN into 0; CNR counts every lesion pixel;
the point estimate on the full data is reported beside the bootstrap mean; the interval
is a percentile interval; the bootstrap resamples whole units (image or patient, as the
dataset declares) and the overall value is the macro mean over categories with its own
interval (not the mean of per-category bounds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmark.bootstrap import DEFAULT_N_BOOT, percentile_ci, unit_weights
from benchmark.geometry.frames import bilinear_resize, parse_geometry, smooth_grid
from benchmark.geometry.rasterize import sample_mask
from benchmark.metrics import (
    BOX_IOU_THRESHOLDS,
    CANONICAL_PATHOLOGY_THRESHOLDS,
    CANONICAL_THRESHOLDS,
    auroc_weighted,
    balanced_accuracy_weighted,
    box_accuracy,
    cnr,
    dice_from_counts,
    iou_from_counts,
    minmax_normalize,
    pointing_hit,
    threshold_counts,
    threshold_label,
)
from benchmark.protocols import common as C
from benchmark.protocols.base import OVERALL, Protocol

SIGMA = 1.5
GROUNDING_PREFIXES = ("iou", "dice", "cnr", "hit", "box_acc")


def canonical_scores(maps: np.ndarray, gts: np.ndarray, thresholds: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Per-sample values of a batch of maps (NaN = not evaluated) against binary masks."""
    norm = minmax_normalize(maps, low=-1.0)
    g = (np.asarray(gts) != 0).astype(np.uint8)
    counts = threshold_counts(norm, g, thresholds)
    iou = iou_from_counts(counts, "gt")
    dice = dice_from_counts(counts, "gt", raw_gt_sum=False)
    out: dict[str, np.ndarray] = C.per_threshold_columns(thresholds, iou=iou, dice=dice)
    out["iou"] = iou.mean(axis=1)  # NaN only when the mask is empty (then NaN at every t)
    out["dice"] = dice.mean(axis=1)
    out["cnr"] = cnr(norm, g, inside="nonzero")
    out["hit"] = pointing_hit(maps, g, rule="ties")
    return out


class Canonical(Protocol):
    """AFLoc's measurements with the quirks fixed: original coordinates, box union, no NaN->0, unit bootstrap."""

    name = "canonical"
    version = 1
    scores_arrays = True
    tasks = ("grounding", "classification")
    tuning_split = None

    def original_map(self, grid: np.ndarray, image_size: tuple[int, int], input_geometry: str) -> np.ndarray:
        g = np.asarray(grid, dtype=np.float64)
        return parse_geometry(input_geometry).grid_to_original(smooth_grid(g, SIGMA), image_size)

    def grounding_record(self, grid: np.ndarray, sample: Any, image_size: tuple[int, int] | None,
                         input_geometry: str) -> dict[str, Any]:
        size = C.resolve_image_size(sample, image_size)
        omap = self.original_map(grid, size, input_geometry)
        gt = sample_mask(sample, size, box_mode="union")
        pathology = C.modality(sample) == C.PATHOLOGY
        thresholds = CANONICAL_PATHOLOGY_THRESHOLDS if pathology else CANONICAL_THRESHOLDS
        rec = {k: float(v[0]) for k, v in canonical_scores(omap[None], gt[None], thresholds).items()}
        if sample.boxes:
            acc = box_accuracy(omap, sample.boxes)
            for t, a in zip(BOX_IOU_THRESHOLDS, acc):
                rec[f"box_acc@{threshold_label(t)}"] = float(a)
        rec["modality"] = C.PATHOLOGY if pathology else C.CHEST
        return rec

    def classification_record(self, score: float, sample: Any) -> dict[str, Any]:
        return {"score": float(score), "modality": C.modality(sample)}

    def score_chunk(self, heatmaps: np.ndarray, masks: np.ndarray, *, margin: bool | None = None,
                    native_grid: bool = False, pathology: bool = False) -> dict[str, np.ndarray]:
        """Maps in the masks' frame (or native grids, smoothed and upsampled to it)."""
        maps = np.asarray(heatmaps)
        if maps.dtype.kind != "f" or maps.dtype.itemsize < 4:
            maps = maps.astype(np.float32)
        if native_grid:
            maps = bilinear_resize(smooth_grid(maps, SIGMA), masks.shape[-2:])
        if margin:
            from benchmark.geometry.afloc import afloc_margin_valid
            maps = np.array(maps, copy=True)
            maps[:, ~afloc_margin_valid(masks.shape[-2:])] = np.nan
        thresholds = CANONICAL_PATHOLOGY_THRESHOLDS if pathology else CANONICAL_THRESHOLDS
        return canonical_scores(maps, masks, thresholds)

    # ------------------------------------------------------------------ summaries
    def summarize(self, records: pd.DataFrame, task: str, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                  unit: str = "image", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Point estimate on all data, bootstrap mean and percentile CI over resampled units.

        ``params`` may set ``stratify=True`` (resample units within categories) and
        ``level`` (default 0.95).
        """
        params = dict(params or {})
        if len(records) == 0:
            return []
        from benchmark.bootstrap import blas_single_thread

        with blas_single_thread():
            return self._summarize(records, task, n_boot=n_boot, seed=seed, unit=unit, params=params)

    def _summarize(self, records: pd.DataFrame, task: str, *, n_boot: int, seed: int, unit: str,
                   params: dict[str, Any]) -> list[dict[str, Any]]:
        rec = records.reset_index(drop=True)
        units = C.units_for(rec, unit)
        strata = rec["category"].astype(str).to_numpy() if params.get("stratify") else None
        level = float(params.get("level", 0.95))
        if task == "grounding":
            cols = [c for c in C.metric_columns(rec, GROUNDING_PREFIXES)]
            return summarize_means(rec, cols, units, n_boot=n_boot, seed=seed, strata=strata, level=level)
        if task == "classification":
            return self._summarize_classification(rec, units, n_boot=n_boot, seed=seed, strata=strata, level=level,
                                                  softmax=params.get("softmax"))
        raise ValueError(f"canonical@1 has no task {task!r}")

    def _summarize_classification(self, rec: pd.DataFrame, units: np.ndarray, *, n_boot: int, seed: int,
                                  strata: np.ndarray | None, level: float,
                                  softmax: bool | None = None) -> list[dict[str, Any]]:
        cats = C.first_appearance(rec["category"])
        codes, _ = C.category_codes(rec["category"].tolist(), cats)
        y = rec["label"].to_numpy(dtype=np.float64)
        s = rec["score"].to_numpy(dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(s)
        k = len(cats)
        weights = list(unit_weights(units, n_boot, seed, strata=strata))
        ones = np.ones((1, len(rec)))
        auc_reps = np.full((n_boot, k), np.nan)
        ba_reps = np.full((n_boot, k), np.nan)
        auc_pt = np.full(k, np.nan)
        ba_pt = np.full(k, np.nan)
        n_ok = np.zeros(k, dtype=int)
        for j in range(k):
            sel = ok & (codes == j)
            n_ok[j] = int(sel.sum())
            if not sel.any():
                continue
            yj, sj = y[sel], s[sel]
            pred = (sj >= 0.5).astype(int)
            auc_pt[j] = auroc_weighted(yj, sj, ones[:, sel])[0]
            ba_pt[j] = balanced_accuracy_weighted(yj, pred, ones[:, sel])[0]
            r0 = 0
            for w in weights:
                auc_reps[r0:r0 + len(w), j] = auroc_weighted(yj, sj, w[:, sel])
                ba_reps[r0:r0 + len(w), j] = balanced_accuracy_weighted(yj, pred, w[:, sel])
                r0 += len(w)
        out: list[dict[str, Any]] = []
        for metric, pts, reps in (("auroc", auc_pt, auc_reps), ("balanced_accuracy", ba_pt, ba_reps)):
            macro = C.nanmean(reps, axis=1)
            all_pt = C.nanmean(pts)
            if metric == "balanced_accuracy":
                single = _single_label_images(rec, ok)
                if softmax and single is None:
                    raise ValueError("canonical@1: a single-label (softmax) classification set needs exactly one "
                                     "positive class and at least two classes per image")
                if single is not None:  # multi-class: argmax over the categories of each image
                    all_pt, macro = _multiclass_ba(rec, ok, single, weights, cats)
            bm, lo, hi = percentile_ci(np.column_stack([reps, macro]), level)
            out.append(C.row(metric, OVERALL, all_pt, bm[-1], lo[-1], hi[-1], int(n_ok.sum())))
            for j in range(k):
                out.append(C.row(metric, cats[j], pts[j], bm[j], lo[j], hi[j], n_ok[j]))
        return out


def summarize_means(rec: pd.DataFrame, cols: list[str], units: np.ndarray, *, n_boot: int, seed: int,
                    strata: np.ndarray | None = None, level: float = 0.95) -> list[dict[str, Any]]:
    """Per-category means and their macro average, one resampling pass for all columns."""
    cats = C.first_appearance(rec["category"])
    codes, _ = C.category_codes(rec["category"].tolist(), cats)
    k = len(cats)
    values = {c: rec[c].to_numpy(dtype=np.float64) for c in cols}
    reps = C.grouped_replicates(values, codes, k, units, n_boot, seed, strata=strata)
    out: list[dict[str, Any]] = []
    for c in cols:
        v = values[c]
        pts = np.array([C.nanmean(v[codes == j]) for j in range(k)])
        macro = C.nanmean(reps[c], axis=1)
        bm, lo, hi = percentile_ci(np.column_stack([reps[c], macro]), level)
        out.append(C.row(c, OVERALL, C.nanmean(pts), bm[-1], lo[-1], hi[-1], C.finite_count(v)))
        for j in range(k):
            out.append(C.row(c, cats[j], pts[j], bm[j], lo[j], hi[j], C.finite_count(v[codes == j])))
    return out


def _single_label_images(rec: pd.DataFrame, ok: np.ndarray):
    """Image ids when every image has exactly one positive category (a multi-class set)."""
    img = (rec["image_id"] if "image_id" in rec else rec["sample_id"]).astype(str)
    pos = pd.Series(rec["label"].to_numpy(dtype=np.float64) > 0).groupby(img.to_numpy()).sum()
    ncat = pd.Series(np.ones(len(rec))).groupby(img.to_numpy()).sum()
    if len(pos) and (pos == 1).all() and (ncat > 1).all():
        return img.to_numpy()
    return None


def _multiclass_ba(rec: pd.DataFrame, ok: np.ndarray, img: np.ndarray, weights: list[np.ndarray], cats: list[Any]):
    """Balanced accuracy of the argmax over categories, per image (weights of the image's first row)."""
    first: dict[str, int] = {}
    true: dict[str, str] = {}
    best: dict[str, tuple[float, str]] = {}
    for i, (im, c, y, s) in enumerate(zip(img, rec["category"].astype(str), rec["label"], rec["score"])):
        first.setdefault(im, i)
        if y > 0:
            true[im] = c
        if im not in best or s > best[im][0]:
            best[im] = (float(s), c)
    ims = list(first)
    idx = np.array([first[i] for i in ims])
    yt = np.array([true[i] for i in ims])
    yp = np.array([best[i][1] for i in ims])
    pt = balanced_accuracy_weighted(yt, yp, np.ones((1, len(ims))))[0]
    reps = np.concatenate([balanced_accuracy_weighted(yt, yp, w[:, idx]) for w in weights] or [np.zeros(0)])
    return float(pt), reps
