"""``chexlocalize@1``: CheXlocalize's protocol (rajpurkarlab/cheXlocalize, ``eval.py`` and tuning scripts).

Maps are upsampled bilinearly (align_corners=False) to the native image size and scored
there against native-resolution masks; min–max to [0, 1]; the segmentation is Otsu's
(CheXlocalize's default), a fixed threshold, or per-task thresholds tuned on val over
0.2…0.8 (``tune_heatmap_threshold.py``) and applied to test with ``> t``; optional
per-task probability cut-offs (``tune_probability_threshold.py``) empty the segmentation
of a CXR whose predicted probability is below the cut-off. mIoU on true positives, hit
rate (pointing game, first argmax), and the bootstrap over CXR rows (seed 0, 1,000
replicates, CI at sorted indices 24 and 974).

The human benchmark has no map to point with: its readers marked salient points
(``hb_salient_pt_test.json``), and its hit is "any point inside the ground truth"
(``salient_point_hit``, through ``CheXlocalize.points_record``), not the argmax of a map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.bootstrap import DEFAULT_N_BOOT, LegacyStream, official_ci, replicate_means
from benchmark.geometry.frames import parse_geometry
from benchmark.geometry.rasterize import sample_mask
from benchmark.metrics import (
    iou_from_counts,
    minmax_normalize,
    otsu_segmentation,
    pointing_hit,
    threshold_counts,
    threshold_label,
)
from benchmark.protocols import common as C
from benchmark.protocols.base import OVERALL, Protocol

TUNE_THRESHOLDS = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))  # 0.2 … 0.8000000000000003
APPLY_THRESHOLDS = tuple(round(t, 1) for t in TUNE_THRESHOLDS)  # the CSV keeps one decimal
PROB_CUTOFFS = tuple(float(t) for t in np.arange(0, 0.9, 0.1))
LUNG_LESION = "Lung Lesion"


def chexlocalize_scores(omap: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Per-sample values of one native-resolution map (NaN pixels are not evaluated)."""
    m = omap[None]
    g = gt[None]
    norm01 = minmax_normalize(m, low=0.0)
    out: dict[str, float] = {}
    c_tune = threshold_counts(norm01, g, TUNE_THRESHOLDS)
    c_app = threshold_counts(norm01, g, APPLY_THRESHOLDS)
    tune = iou_from_counts(c_tune, "tp")[0]
    tp = iou_from_counts(c_app, "tp")[0]
    al = iou_from_counts(c_app, "union")[0]
    for j, t in enumerate(APPLY_THRESHOLDS):
        out[f"tune_iou@{threshold_label(t)}"] = float(tune[j])
        out[f"iou_tp@{threshold_label(t)}"] = float(tp[j])
        out[f"iou_all@{threshold_label(t)}"] = float(al[j])
    seg = otsu_segmentation(omap)
    c_otsu = threshold_counts(seg[None].astype(np.float32), g, [0.5])
    out["otsu_iou_tp"] = float(iou_from_counts(c_otsu, "tp")[0, 0])
    out["otsu_iou_all"] = float(iou_from_counts(c_otsu, "union")[0, 0])
    out["hit"] = float(pointing_hit(m, g, rule="first")[0])
    out["gt_empty"] = float(not np.any(gt))
    return out


def salient_point_hit(points: Iterable[Sequence[float]], gt_mask: np.ndarray) -> float:
    """CheXlocalize's human-benchmark hit: 1.0 if any ``(x, y)`` point lies in the mask.

    NaN when the ground truth is empty (the CXR/task does not count), 0.0 when it is
    non-empty and no point falls inside it, including when there are no points (a reader
    who marked nothing missed). A point indexes the mask as the official evaluation does,
    ``gt_mask[int(y), int(x)]``: ``int`` truncates toward zero, so (-0.5, y) lands in column
    0. A point whose truncated index is outside the image cannot hit and is ignored (the
    official code would wrap a negative index to the far side or raise on a large one);
    non-finite coordinates are ignored likewise.
    """
    gt = np.asarray(gt_mask)
    if gt.ndim != 2:
        raise ValueError(f"salient_point_hit expects a 2-D mask, got shape {gt.shape}")
    if not gt.any():
        return float("nan")
    h, w = gt.shape
    for pt in points:
        x, y = float(pt[0]), float(pt[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        col, row = int(x), int(y)
        if 0 <= row < h and 0 <= col < w and gt[row, col]:
            return 1.0
    return 0.0


class CheXlocalize(Protocol):
    """CheXlocalize protocol: native-resolution masks, Otsu or val-tuned thresholds, mIoU on true positives, \
hit rate."""

    name = "chexlocalize"
    version = 1
    scores_arrays = True
    tasks = ("grounding",)
    tuning_split = "val"
    uses_negatives = True  # every CXR x task is scored; negatives matter for the probability cut-offs

    def __init__(self, sigma: float = 0.0):
        # CheXlocalize upsamples Grad-CAM maps without smoothing; sigma > 0 adds the BioViL step.
        self.sigma = sigma

    def original_map(self, grid: np.ndarray, image_size: tuple[int, int], input_geometry: str) -> np.ndarray:
        from benchmark.geometry.frames import smooth_grid
        g = np.asarray(grid)
        if g.dtype.kind != "f":
            g = g.astype(np.float32)
        if self.sigma > 0:
            g = smooth_grid(g, self.sigma)
        return parse_geometry(input_geometry).grid_to_original(g, image_size)

    def grounding_record(self, grid: np.ndarray, sample: Any, image_size: tuple[int, int] | None,
                         input_geometry: str) -> dict[str, Any]:
        size = C.resolve_image_size(sample, image_size)
        omap = self.original_map(grid, size, input_geometry)
        gt = sample_mask(sample, size)
        return chexlocalize_scores(omap, gt)

    def points_record(self, points: Iterable[Sequence[float]], sample: Any,
                      image_size: tuple[int, int] | None) -> dict[str, Any]:
        """The hit of salient points (native ``(x, y)`` pixels) against the sample's ground truth.

        Same ground truth as ``grounding_record``; it replaces that record's argmax ``hit``
        for readers who marked points instead of producing a map (the human benchmark).
        """
        size = C.resolve_image_size(sample, image_size)
        return {"hit": salient_point_hit(points, sample_mask(sample, size))}

    def score_chunk(self, heatmaps: np.ndarray, masks: np.ndarray, *, margin: bool | None = None,
                    native_grid: bool = False, pathology: bool = False) -> dict[str, np.ndarray]:
        """Maps in the masks' frame (or native grids upsampled to it) → per-sample values."""
        from benchmark.geometry.frames import bilinear_resize
        rows = []
        h, w = masks.shape[-2:]
        for hm, gt in zip(np.asarray(heatmaps), np.asarray(masks)):
            m = bilinear_resize(hm.astype(np.float32), (h, w)) if native_grid else hm
            rows.append(chexlocalize_scores(np.asarray(m), gt))
        return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}

    # ------------------------------------------------------------------ tuning
    def tune(self, records: pd.DataFrame) -> dict[str, Any]:
        """Per-task mask thresholds (and probability cut-offs when records carry ``prob``)."""
        if len(records) == 0 or f"tune_iou@{threshold_label(APPLY_THRESHOLDS[0])}" not in records:
            return {}
        thresholds: dict[str, float] = {}
        for task in sorted(C.first_appearance(records["category"])):
            sel = records["category"] == task
            mious = [C.nanmean(records.loc[sel, f"tune_iou@{threshold_label(t)}"]) for t in APPLY_THRESHOLDS]
            best = TUNE_THRESHOLDS[mious.index(max(mious))]  # the script's list.index(max(...))
            thresholds[str(task)] = round(best, 1)
        out: dict[str, Any] = {"thresholds": thresholds}
        if "prob" in records:
            cutoffs: dict[str, float] = {}
            for task in sorted(C.first_appearance(records["category"])):
                sel = (records["category"] == task).to_numpy()
                prob = records.loc[sel, "prob"].to_numpy(dtype=np.float64)
                iou_all = records.loc[sel, "otsu_iou_all"].to_numpy(dtype=np.float64)
                empty = records.loc[sel, "gt_empty"].to_numpy() > 0
                cands = [c for c in PROB_CUTOFFS if not (task == LUNG_LESION and c == 0.0)]
                mious = []
                for c in cands:
                    vals = np.where(prob > c, iou_all, np.where(empty, np.nan, 0.0))
                    mious.append(round(float(C.nanmean(vals)), 3))
                cutoffs[str(task)] = round(cands[int(np.nanargmax(mious))] if not all(np.isnan(mious)) else 0.0, 1)
            out["prob_cutoffs"] = cutoffs
        return out

    # ------------------------------------------------------------------ summaries
    def final_iou(self, records: pd.DataFrame, params: dict[str, Any]) -> np.ndarray:
        """Per-sample IoU after the chosen binarisation and probability gate."""
        true_pos_only = bool(params.get("true_pos_only", True))
        kind = "tp" if true_pos_only else "all"
        thresholds = params.get("thresholds")
        fixed = params.get("threshold")
        n = len(records)
        iou = np.empty(n)
        for i, task in enumerate(records["category"]):
            if thresholds is not None:
                if str(task) not in thresholds:
                    raise ValueError(f"no tuned threshold for task {task!r}; tuned: {sorted(thresholds)}")
                col = f"iou_{kind}@{threshold_label(thresholds[str(task)])}"
            elif fixed is not None:
                col = f"iou_{kind}@{threshold_label(fixed)}"
                if col not in records:
                    raise ValueError(f"fixed threshold {fixed} is not on the recorded grid {APPLY_THRESHOLDS}")
            else:
                col = f"otsu_iou_{kind}"
            iou[i] = records[col].iat[i]
        cut = params.get("prob_cutoffs")
        if cut and "prob" in records:
            prob = records["prob"].to_numpy(dtype=np.float64)
            gated = np.array([p < cut.get(str(t), 0.0) for p, t in zip(prob, records["category"])])
            empty = records["gt_empty"].to_numpy() > 0
            iou = np.where(gated, np.nan if true_pos_only else np.where(empty, np.nan, 0.0), iou)
        return iou

    def summarize(self, records: pd.DataFrame, task: str, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                  unit: str = "image", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """mIoU and hit rate per task with CheXlocalize's bootstrap over CXR rows.

        Rows of the bootstrap are the CXRs ``eval.py`` scores, sorted by id: those with at
        least one positive task (the keys of the ground-truth JSON) and, for IoU with
        ``true_pos_only=False``, also every other scored CXR (``get_ious`` adds each CXR of the
        prediction JSON that the ground truth lacks, against an empty mask: IoU 0 where
        something is predicted, NaN where nothing is). The hit rate counts ground-truth CXRs
        only. ``unit`` is ignored (CheXlocalize resamples CXRs); each metric starts a fresh
        ``np.random.seed(seed)`` stream as each ``eval.py`` run does. ``all`` is the macro
        average over tasks, with its own percentile interval from the same replicates
        (CheXlocalize reports tasks only).
        """
        if task != "grounding":
            raise ValueError(f"chexlocalize@1 has no task {task!r}")
        if len(records) == 0:
            return []
        from benchmark.bootstrap import blas_single_thread, warn_few_official_replicates

        warn_few_official_replicates(n_boot, self.id)
        with blas_single_thread():
            return self._summarize(records, n_boot=n_boot, seed=seed, params=dict(params or {}))

    def _summarize(self, records: pd.DataFrame, *, n_boot: int, seed: int,
                   params: dict[str, Any]) -> list[dict[str, Any]]:
        rec = records.reset_index(drop=True)
        iou = self.final_iou(rec, params)
        img = (rec["image_id"] if "image_id" in rec else rec["sample_id"]).astype(str).to_numpy()
        positive = pd.Series(rec["gt_empty"].to_numpy() == 0).groupby(img).transform("any").to_numpy()
        # IoU rows: get_ious; with true_pos_only=False the prediction-only CXRs are rows too
        iou_rows = positive if bool(params.get("true_pos_only", True)) else np.ones(len(rec), dtype=bool)
        tasks = sorted(C.first_appearance(rec["category"].astype(str)))
        ti = {v: i for i, v in enumerate(tasks)}
        out: list[dict[str, Any]] = []
        for metric, values, keep in (("iou", iou, iou_rows),
                                     ("hit", rec["hit"].to_numpy(dtype=np.float64), positive)):
            images = sorted(set(img[keep]))
            ii = {v: i for i, v in enumerate(images)}
            table = np.full((len(images), len(tasks)), np.nan)
            for v, im, t, k in zip(values, img, rec["category"].astype(str), keep):
                if k:
                    table[ii[im], ti[t]] = v
            stream = LegacyStream(seed)
            reps = replicate_means(table, stream.weights(len(images), n_boot))
            macro_reps = C.nanmean(reps, axis=1)
            mean, lo, hi = official_ci(np.column_stack([reps, macro_reps]))
            points = C.nanmean(table, axis=0)
            out.append(C.row(metric, OVERALL, C.nanmean(points), mean[-1], lo[-1], hi[-1],
                             C.finite_count(table)))
            for j, t in enumerate(tasks):
                out.append(C.row(metric, t, points[j], mean[j], lo[j], hi[j], C.finite_count(table[:, j])))
        return out
