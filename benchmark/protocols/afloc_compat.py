"""``afloc-compat@1``: the official AFLoc evaluation, quirks included.

Reproduces ``localization/`` and ``classification/`` of the official repository
(YH0517/AFLoc, the version that ships ``localization.py`` and ``run.sh``), as described in
``docs/protocols.md``. Every step that the official code does in float32 or in a given
order is done here the same way, and where its result depends on the NumPy version the
official environment's NumPy 1.x semantics are followed explicitly (float32 thresholds,
blockwise float32 sums, a float64 CNR), so per-sample values equal the official ones under
NumPy 1.26 and 2.x and bootstrap CIs agree up to floating-point summation order.

Heatmap: Gaussian σ=1.5 on the native grid (scipy ``reflect``), bilinear
(align_corners=False) to the 224 letterbox frame, a 14-px NaN margin (chest X-ray; off for
pathology), min–max to [-1, 1] over valid pixels, ``> t`` for ``t in
np.arange(0.1, 0.6, 0.1)`` (pathology: ``np.arange(-1, 0, 0.1)``). Ground truth: AFLoc's
box mapping and summed box masks, INTER_AREA mask mapping with ``>= 1e-5``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.bootstrap import (
    DEFAULT_N_BOOT,
    LegacyStream,
    official_ci,
    replicate_means,
    sklearn_resample_counts,
)
from benchmark.geometry.afloc import afloc_margin_valid, afloc_sample_mask
from benchmark.geometry.frames import Letterbox, bilinear_resize, parse_geometry, smooth_grid, transfer_map
from benchmark.geometry.rasterize import sample_mask
from benchmark.metrics import (
    AFLOC_PATHOLOGY_THRESHOLDS,
    AFLOC_THRESHOLDS,
    _cnr_shared,
    _counts_rows,
    _scratch,
    auroc_weighted,
    balanced_accuracy_weighted,
    cnr,
    dice_from_counts,
    iou_from_counts,
    minmax_normalize,
    pointing_hit,
    threshold_counts,
    threshold_label,
)
from benchmark.parallel import ordered_map
from benchmark.protocols import common as C
from benchmark.protocols.base import OVERALL, Protocol

log = logging.getLogger(__name__)

FRAME = 224
SIGMA = 1.5
# CheXlocalize optimal-threshold mode (``--opt_th --only_pos``).
OPT_MASK_THRESHOLDS = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))
OPT_CONF_THRESHOLDS = tuple(float(t) for t in np.arange(0.1, 0.9, 0.1))


def afloc_scores(emaps: np.ndarray, gts: np.ndarray, thresholds: tuple[float, ...], *,
                 with_hit: bool = True) -> dict[str, np.ndarray]:
    """Official per-sample values of a batch of evaluation-frame maps (NaN = not evaluated).

    ``iou@t`` and ``dice@t`` (NaN when the prediction or the mask is empty), ``cnr``
    (computed, as the official code does, on the [-1, 1] map normalised once more), and
    ``hit`` (pointing game; no official counterpart).

    The official code takes its NaN mask from the map before normalising and keeps using it.
    A pixel that normalisation turns into NaN (an infinite pixel: ``+inf`` becomes NaN, and
    ``-inf`` makes the whole map NaN; or a ``max - min`` that overflows) therefore stays in the
    evaluated area: it is never above a threshold but its ground truth counts, and the second
    normalisation in ``compute_cnr`` meets it and turns the whole map into NaN, so the CNR is NaN.
    """
    emaps, gts = np.asarray(emaps), np.asarray(gts)
    fast = _afloc_scores_shared_area(emaps, gts, thresholds, with_hit)
    if fast is not None:
        return fast
    emaps, gts = _crop_to_shared_area(emaps, gts)
    norm = minmax_normalize(emaps, low=-1.0)
    counted, stale = _official_area(emaps, norm)
    counts = threshold_counts(counted, gts, thresholds)
    iou = iou_from_counts(counts, "tp")
    dice = dice_from_counts(counts, "tp", raw_gt_sum=True)
    out: dict[str, np.ndarray] = C.per_threshold_columns(thresholds, iou=iou, dice=dice)
    out["cnr"] = cnr(norm, gts, inside="eq1", renormalize=True)
    out["cnr"][stale] = np.nan
    if with_hit:
        out["hit"] = pointing_hit(emaps, gts, rule="first")
    out["gt_pixels"] = counts["gt_count"].astype(np.float64)
    nflat = norm.reshape(len(norm), -1)
    with np.errstate(invalid="ignore"):  # a constant map is normalised to -1 everywhere
        out["constant_map"] = ((np.fmax.reduce(nflat, axis=1) == -1) & ~stale).astype(np.float64)
    return out


def _afloc_scores_shared_area(emaps: np.ndarray, gts: np.ndarray, thresholds: tuple[float, ...],
                              with_hit: bool) -> dict[str, np.ndarray] | None:
    """:func:`afloc_scores` of the common batch, in one pass over reused buffers; None otherwise.

    The common batch: float32/float64 maps whose evaluated area is one rectangle shared by every
    map (NaN outside it, e.g. the 14-px margin, or no NaN at all) with finite values, and integer or
    boolean masks. Then no pixel is stale, the crop holds every evaluated pixel and each step below is the
    general path's arithmetic on it (same operations, same order), so the values are the same bits.
    """
    if (emaps.ndim != 3 or len(emaps) == 0 or emaps.shape != gts.shape or emaps.dtype not in (np.float32, np.float64)
            or gts.dtype.kind not in "biu" or emaps.shape[1] * emaps.shape[2] == 0):
        return None
    rect = _shared_rectangle(emaps)
    if rect is None:
        return None
    b = len(emaps)
    (r0, r1), (c0, c1) = rect
    p = (r1 - r0) * (c1 - c0)
    crop = _scratch("afloc.crop", (b, r1 - r0, c1 - c0), emaps.dtype)
    np.copyto(crop, emaps[:, r0:r1, c0:c1])
    crop = crop.reshape(b, p)
    g = _scratch("afloc.gt", (b, r1 - r0, c1 - c0), gts.dtype)
    np.copyto(g, gts[:, r0:r1, c0:c1])
    g = g.reshape(b, p)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if not np.isfinite(np.minimum.reduce(crop, axis=1)).all():  # NaN (or -inf) inside the area
            return None
        mn = np.fmin.reduce(crop, axis=1)  # minmax_normalize's reductions and operations
        mx = np.fmax.reduce(crop, axis=1)
        d = mx - mn
        if not (np.isfinite(mx).all() and np.isfinite(d).all()):  # +inf, or max - min overflows
            return None
        norm = np.subtract(crop, mn[:, None], out=_scratch("afloc.norm", (b, p), crop.dtype))
        np.divide(norm, d[:, None], out=norm)
        np.multiply(norm, 2, out=norm)
        np.subtract(norm, 1, out=norm)
    constant = d == 0
    for i in np.flatnonzero(constant):
        norm[i] = norm.dtype.type(-1.0)
    counts = _counts_rows(norm, g, thresholds)
    out: dict[str, np.ndarray] = C.per_threshold_columns(
        thresholds, iou=iou_from_counts(counts, "tp"), dice=dice_from_counts(counts, "tp", raw_gt_sum=True))
    hit = None
    if with_hit:  # pointing_hit(rule="first"): every pixel is valid, the first maximum in row-major order
        idx = np.argmax(crop, axis=1)
        on_lesion = g[np.arange(b), idx] != 0
        has_gt = counts["gt_count"] > 0 if gts.dtype.kind in "bu" else np.not_equal(g, 0).any(axis=1)
        hit = np.where(has_gt, on_lesion.astype(np.float64), np.nan)
    cnr_out = np.full(b, np.nan, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # compute_cnr's second normalisation: the first one reached -1 and 1 exactly (x - min is 0 at
        # the minimum and max - min itself at the maximum, and x / x == 1), or -1 everywhere. It is
        # written over the crop, which is no longer needed (a smaller working set).
        low = np.full(b, -1.0, dtype=norm.dtype)
        _cnr_shared(norm, g, "eq1", True, cnr_out, extremes=(low, np.where(constant, low, -low)), work=crop)
    out["cnr"] = cnr_out
    if hit is not None:
        out["hit"] = hit
    out["gt_pixels"] = counts["gt_count"].astype(np.float64)
    out["constant_map"] = constant.astype(np.float64)  # the maximum of a normalised map is 1 unless constant
    return out


def _shared_rectangle(maps: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``((r0, r1), (c0, c1))``: the first map's non-NaN pixels when they form one non-empty
    rectangle (the whole frame when it has no NaN), provided every map has NaN on all pixels outside
    it; None otherwise. The caller checks that no pixel inside it is NaN."""
    h, w = maps.shape[1:]
    nan0 = np.isnan(maps[0])
    if not nan0.any():
        return (0, h), (0, w)
    rows, cols = np.flatnonzero(~nan0.all(axis=1)), np.flatnonzero(~nan0.all(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if nan0[r0:r1, c0:c1].any():
        return None  # the first map's area is no rectangle
    # with no NaN inside (checked by the caller), all NaN outside <=> NaN count = outside pixels
    nan = np.isnan(maps, out=_scratch("afloc.nan", maps.shape, bool))
    if np.count_nonzero(nan) != len(maps) * (h * w - (r1 - r0) * (c1 - c0)):
        return None
    return (r0, r1), (c0, c1)


def _official_area(maps: np.ndarray, norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``norm`` for counting, per-map flag) under the official NaN mask, taken before normalising.

    Pixels of that mask that normalisation made NaN are still evaluated by the official code: they
    are never above a threshold and their ground truth counts. They are set to -inf here (never
    above a threshold, still counted); the flag marks the maps that have such pixels.
    """
    stale_px = np.isnan(norm) & ~np.isnan(maps)
    stale = stale_px.reshape(len(norm), -1).any(axis=1)
    if not stale.any():
        return norm, stale
    return np.where(stale_px, norm.dtype.type(-np.inf), norm), stale


def _crop_to_shared_area(maps: np.ndarray, gts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views on the evaluated rectangle when all maps share it (e.g. the 14-px margin).

    Exact: every official step looks at the non-NaN pixels only, in row-major order, so
    dropping an all-NaN frame changes nothing but the work (about a quarter of a 224 map).
    """
    if maps.ndim != 3 or len(maps) == 0:
        return maps, gts
    nan = np.isnan(maps)
    if not nan[0].any() or not (nan == nan[0]).all():
        return maps, gts
    area = ~nan[0]
    rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    if rows.size == 0 or area.sum() != (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1):
        return maps, gts
    sl = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.ascontiguousarray(maps[sl]), np.ascontiguousarray(gts[sl])


def afloc_chexlocalize_scores(emaps: np.ndarray, gts: np.ndarray) -> dict[str, np.ndarray]:
    """What ``--opt_th --only_pos`` needs per sample, for tuning on val and applying on test.

    ``opt_tune_iou@t``: IoU (only_pos) of the [0, 1] map ``> t`` at the candidate values
    ``np.arange(0.2, 0.8, 0.1)`` (tuning); ``opt_iou_tp@t`` / ``opt_iou_all@t``: IoU with
    only_pos True / False at the same candidates rounded to 3 decimals (what the official
    code reads back from its CSV); ``confidence``: ``max(clip(raw, 0, 2)) / 2`` over valid
    pixels of the raw (unnormalised) map; ``gt_valid``: mask pixels inside the margin.
    """
    emaps = np.asarray(emaps)
    norm01 = minmax_normalize(emaps, low=0.0)
    counted, _ = _official_area(emaps, norm01)
    rounded = tuple(round(t, 3) for t in OPT_MASK_THRESHOLDS)
    both = threshold_counts(counted, gts, OPT_MASK_THRESHOLDS + rounded)  # one pass; equal cuts counted once
    k = len(OPT_MASK_THRESHOLDS)
    c_tune = {**both, "pred": both["pred"][:, :k], "inter": both["inter"][:, :k]}
    c_app = {**both, "pred": both["pred"][:, k:], "inter": both["inter"][:, k:]}
    out: dict[str, np.ndarray] = {}
    tune = iou_from_counts(c_tune, "tp")
    tp = iou_from_counts(c_app, "tp")
    al = iou_from_counts(c_app, "union")
    for j, t in enumerate(rounded):
        out[f"opt_tune_iou@{threshold_label(t)}"] = tune[:, j]
        out[f"opt_iou_tp@{threshold_label(t)}"] = tp[:, j]
        out[f"opt_iou_all@{threshold_label(t)}"] = al[:, j]
    conf = np.full(len(emaps), np.nan)
    for i, m in enumerate(np.asarray(emaps)):
        v = m[~np.isnan(m)]
        if v.size:
            clip = np.clip(v, 0, 2)
            conf[i] = np.max((clip - 0) / (2 - 0))
    out["confidence"] = conf
    out["gt_valid"] = c_app["gt_count"].astype(np.float64)
    return out


class AflocCompat(Protocol):
    """Official AFLoc evaluation exactly (quirks included): smoothing, 14-px margin, [-1,1], t=0.1..0.5, \
seed-0 bootstrap."""

    name = "afloc-compat"
    version = 1
    scores_arrays = True
    tasks = ("grounding", "classification")
    tuning_split = "val"  # only used by CheXlocalize's --opt_th mode
    # CheXlocalize's official rows include every CXR x task, negatives too (empty masks); the other
    # official datasets score positives only (rows without ground truth are dropped in ``summarize``).
    uses_negatives = False

    def uses_negatives_for(self, samples: list[Any]) -> bool:
        """Whether negatives (label 0, no ground truth) must be scored for these samples."""
        return any(C.official_dataset(s) == "CHEXLOCALIZE" for s in samples)

    def needs_tuning_for(self, samples: list[Any]) -> bool:
        """Only CheXlocalize's --opt_th mode tunes on val; other datasets need no val split."""
        return self.uses_negatives_for(samples)

    # ground-truth masks of the AFLoc frame are the same for every model: kept for the next pairs
    # of a run up to this many bytes (a 224 mask is 49 KB; the demo's largest set needs 100 MB)
    MASK_MEMO_BYTES = 256 * 2**20

    def __init__(self, margin: bool | None = None, official_rounding: bool = False, threads: int | None = None):
        self.margin = margin
        self.official_rounding = official_rounding
        self._threads = threads
        self._masks: dict[tuple, np.ndarray] = {}
        self._mask_bytes = 0

    @property
    def threads(self) -> int:
        """Scoring threads: as constructed, else this process's share of the cores."""
        from benchmark.parallel import core_share

        return core_share() if self._threads is None else self._threads

    def _frame_mask(self, sample: Any, image_size: tuple[int, int]) -> np.ndarray:
        """``afloc_sample_mask`` of a sample, memoised on what it is made of (read-only array)."""
        import hashlib

        made_of = repr((sample.boxes, sample.rles, sample.mask_paths, sample.polygons)).encode()
        key = (sample.sample_id, sample.image_path, tuple(image_size), hashlib.sha256(made_of).hexdigest())
        got = self._masks.get(key)
        if got is None:
            got = afloc_sample_mask(sample, FRAME, image_size)
            got.setflags(write=False)
            if self._mask_bytes + got.nbytes <= self.MASK_MEMO_BYTES:
                self._masks[key] = got
                self._mask_bytes += got.nbytes
        return got

    # ------------------------------------------------------------------ per sample
    def evaluation_map(self, grid: np.ndarray, sample: Any, image_size: tuple[int, int],
                       input_geometry: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(map in the evaluation frame with NaN outside the evaluated area, mask, pathology?)."""
        pathology = C.modality(sample) == C.PATHOLOGY
        geom = parse_geometry(input_geometry)
        if pathology:
            import cv2

            # The official pipeline is float32 from the dot product on.
            sm = smooth_grid(np.asarray(grid, dtype=np.float32), SIGMA)
            fmap = bilinear_resize(sm, geom.frame_size(image_size))
            h, w = image_size
            emap = fmap if fmap.shape == (h, w) else cv2.resize(fmap, (w, h))
            gt = sample_mask(sample, image_size)
            emap = np.array(emap, copy=True)
            if self.margin:
                emap[~afloc_margin_valid(emap.shape)] = np.nan
            return emap, gt, pathology
        return self._chest_maps([grid], image_size, geom)[0], self._frame_mask(sample, image_size), pathology

    def _chest_maps(self, grids: Sequence[np.ndarray], image_size: tuple[int, int], geom: Any) -> np.ndarray:
        """Chest maps of one image size in AFLoc's frame, computed together: smoothing per map, then
        resizing and moving frames as a batch (per-pixel arithmetic, each map's values exactly)."""
        sm = smooth_grid(np.stack([np.asarray(g, dtype=np.float32) for g in grids]), SIGMA)
        frame = Letterbox(FRAME)
        if geom == frame:
            emaps = bilinear_resize(sm, (FRAME, FRAME))
        else:  # no official counterpart: move the model's frame into AFLoc's
            fmaps = bilinear_resize(sm, geom.frame_size(image_size))
            emaps = transfer_map(fmaps, geom, frame, image_size).astype(np.float32)
        emaps = np.array(emaps, copy=True)
        if self.margin is None or self.margin:
            emaps[:, ~afloc_margin_valid(emaps.shape[-2:])] = np.nan
        return emaps

    def grounding_record(self, grid: np.ndarray, sample: Any, image_size: tuple[int, int] | None,
                         input_geometry: str) -> dict[str, Any]:
        size = C.resolve_image_size(sample, image_size)
        emap, gt, pathology = self.evaluation_map(grid, sample, size, input_geometry)
        thresholds = AFLOC_PATHOLOGY_THRESHOLDS if pathology else AFLOC_THRESHOLDS
        vals = afloc_scores(emap[None], gt[None], thresholds)
        mode = C.official_dataset(sample)
        if mode == "CHEXLOCALIZE":
            vals.update(afloc_chexlocalize_scores(emap[None], gt[None]))
        rec: dict[str, Any] = {k: float(v[0]) for k, v in vals.items()}
        rec["has_gt"] = float(bool(np.any(gt)))  # before the margin, as the official loaders' skip rule
        rec["afloc_dataset"] = mode
        rec["modality"] = C.PATHOLOGY if pathology else C.CHEST
        return rec

    def grounding_records(self, grids: Any, samples: Any, image_sizes: Any, input_geometry: str,
                          chunk: int = 64, threads: int | None = None) -> list[Any]:
        """``grounding_record`` of many maps, the metrics computed over chunks of maps at once
        (every metric is per map, so the values are those of one map at a time), the chunks on
        ``threads`` threads (default ``self.threads``: every usable core)."""
        from benchmark.dataset import DataError

        out: list[Any] = [None] * len(samples)
        ready: dict[tuple, list[tuple[int, np.ndarray, np.ndarray, str]]] = {}
        geom = parse_geometry(input_geometry)
        chest: dict[tuple, list[tuple[int, np.ndarray, Any, np.ndarray]]] = {}  # by grid shape and image size
        for i, (grid, sample, size) in enumerate(zip(grids, samples, image_sizes)):
            try:
                size = C.resolve_image_size(sample, size)
                if C.modality(sample) != C.PATHOLOGY:
                    gt = self._frame_mask(sample, size)
                    chest.setdefault((np.shape(grid), tuple(size)), []).append((i, grid, sample, gt))
                    continue
                emap, gt, pathology = self.evaluation_map(grid, sample, size, input_geometry)
            except DataError as exc:
                out[i] = exc
                continue
            ready.setdefault((pathology, emap.shape, gt.shape), []).append((i, emap, gt, C.official_dataset(sample)))
        def chest_chunk(job) -> None:  # AFLoc-frame maps and masks, scored as they are made
            size, part = job
            emaps = self._chest_maps([it[1] for it in part], size, geom)
            self._score_chunk(out, [it[0] for it in part], emaps, np.stack([it[3] for it in part]),
                              [C.official_dataset(it[2]) for it in part], pathology=False)

        def ready_chunk(job) -> None:
            pathology, part = job
            self._score_chunk(out, [it[0] for it in part], np.stack([it[1] for it in part]),
                              np.stack([it[2] for it in part]), [it[3] for it in part], pathology=pathology)

        # each chunk writes its own samples' records: on several threads the values are one thread's
        n = self.threads if threads is None else threads
        for _ in ordered_map(chest_chunk, [(size, items[a:a + chunk]) for (_, size), items in chest.items()
                                           for a in range(0, len(items), chunk)], n):
            pass
        for _ in ordered_map(ready_chunk, [(pathology, items[a:a + chunk]) for (pathology, _, _), items
                                           in ready.items() for a in range(0, len(items), chunk)], n):
            pass
        return out

    @staticmethod
    def _score_chunk(out: list[Any], where: list[int], emaps: np.ndarray, gts: np.ndarray, modes: list[str],
                     pathology: bool) -> None:
        """Records of a chunk of evaluation-frame maps into ``out[where[j]]``."""
        vals = afloc_scores(emaps, gts, AFLOC_PATHOLOGY_THRESHOLDS if pathology else AFLOC_THRESHOLDS)
        chex = [j for j, mode in enumerate(modes) if mode == "CHEXLOCALIZE"]
        extra = afloc_chexlocalize_scores(emaps[chex], gts[chex]) if chex else {}
        at = {j: k for k, j in enumerate(chex)}
        for j, (i, mode) in enumerate(zip(where, modes)):
            rec: dict[str, Any] = {k: float(v[j]) for k, v in vals.items()}
            if j in at:
                rec.update({k: float(v[at[j]]) for k, v in extra.items()})
            rec["has_gt"] = float(bool(np.any(gts[j])))
            rec["afloc_dataset"] = mode
            rec["modality"] = C.PATHOLOGY if pathology else C.CHEST
            out[i] = rec

    def classification_record(self, score: float, sample: Any) -> dict[str, Any]:
        return {"score": float(score), "modality": C.modality(sample)}

    def score_chunk(self, heatmaps: np.ndarray, masks: np.ndarray, *, margin: bool | None = None,
                    native_grid: bool = False, pathology: bool = False,
                    device: str | None = None) -> dict[str, np.ndarray]:
        """Per-sample values of maps already in the masks' frame (``afloc-bench score``).

        Steps: [native_grid: σ=1.5 smoothing + bilinear upsampling to the mask size], NaN
        margin (default on unless ``pathology``), min–max [-1, 1], thresholds, metrics.
        ``device`` (``cuda``, ``cpu``): the torch path (``afloc_torch``: the same IoU, Dice and hit,
        CNR to about 1e-6) instead of NumPy.
        """
        maps = np.asarray(heatmaps)
        if maps.dtype.kind != "f" or maps.dtype.itemsize < 4:
            maps = maps.astype(np.float32)
        h, w = masks.shape[-2:]
        if native_grid:
            maps = bilinear_resize(smooth_grid(maps, SIGMA), (h, w))
        else:
            maps = np.array(maps, copy=True)
        use_margin = (not pathology) if margin is None else bool(margin)
        if use_margin:
            maps[:, ~afloc_margin_valid((h, w))] = np.nan
        thresholds = AFLOC_PATHOLOGY_THRESHOLDS if pathology else AFLOC_THRESHOLDS
        if device is not None:
            from benchmark.protocols.afloc_torch import afloc_scores_torch

            return afloc_scores_torch(maps, masks, thresholds, device)
        return afloc_scores(maps, masks, thresholds)

    # ------------------------------------------------------------------ tuning
    def tune(self, records: pd.DataFrame) -> dict[str, Any]:
        """CheXlocalize ``--opt_th`` tuning on val records (``get_opt_th``); {} otherwise."""
        if "afloc_dataset" not in records or not (records["afloc_dataset"] == "CHEXLOCALIZE").any():
            return {}
        rec = records.reset_index(drop=True)
        _warn_without_negatives(rec)
        cats = C.first_appearance(rec["category"])
        rounded = [round(t, 3) for t in OPT_MASK_THRESHOLDS]
        # Step 1: per-category mask threshold maximising nanmean IoU (only_pos=True).
        table = np.array([[C.nanmean(rec.loc[rec["category"] == c, f"opt_tune_iou@{threshold_label(t)}"]) for c in cats]
                          for t in rounded])
        best = np.argmax(table, axis=0)  # np.argmax: a NaN wins, as in the official code
        mask_th = {c: round(OPT_MASK_THRESHOLDS[best[k]], 3) for k, c in enumerate(cats)}
        # Step 2: per-category confidence gate maximising nanmean IoU (only_pos=False).
        conf = rec["confidence"].to_numpy(dtype=np.float64)
        gt_empty = rec["gt_valid"].to_numpy() == 0
        iou_all = np.array([rec.at[i, f"opt_iou_all@{threshold_label(mask_th[c])}"]
                            for i, c in enumerate(rec["category"])],
                           dtype=np.float64)
        table2 = []
        for t in OPT_CONF_THRESHOLDS:
            gated = conf < t
            vals = np.where(gated, np.where(gt_empty, np.nan, 0.0), iou_all)
            table2.append([C.nanmean(vals[(rec["category"] == c).to_numpy()]) for c in cats])
        best2 = np.argmax(np.array(table2), axis=0)
        conf_th = {c: round(OPT_CONF_THRESHOLDS[best2[k]], 3) for k, c in enumerate(cats)}
        auc = {}
        for c in sorted(cats):
            sel = (rec["category"] == c).to_numpy()
            lab = rec.loc[sel, "label"].to_numpy(dtype=np.float64) if "label" in rec else (~gt_empty[sel]).astype(float)
            auc[c] = float(auroc_weighted(lab, conf[sel], np.ones((1, int(sel.sum()))))[0])
        return {"mode": "opt_th", "mask_threshold": mask_th, "confidence_threshold": conf_th,
                "val_confidence_auroc": auc, "n_tuning_records": int(len(rec))}

    # ------------------------------------------------------------------ summaries
    def summarize(self, records: pd.DataFrame, task: str, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                  unit: str = "image", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Official aggregates and CIs. ``unit`` is ignored: the official bootstrap resamples
        pooled rows (grounding) or images (classification)."""
        from benchmark.bootstrap import blas_single_thread, warn_few_official_replicates

        warn_few_official_replicates(n_boot, self.id)
        with blas_single_thread():
            return self._summarize(records, task, n_boot=n_boot, seed=seed, params=dict(params or {}))

    def _summarize(self, records: pd.DataFrame, task: str, *, n_boot: int, seed: int,
                   params: dict[str, Any]) -> list[dict[str, Any]]:
        rounding = bool(params.get("official_rounding", self.official_rounding))
        if task == "classification":
            return self._summarize_classification(records, n_boot=n_boot, seed=seed, rounding=rounding,
                                                  softmax=params.get("softmax"))
        if task != "grounding":
            raise ValueError(f"afloc-compat@1 has no task {task!r}")
        if len(records) == 0:
            return []
        mode = params.get("afloc_dataset") or _mode_of(records)
        if mode == "MS_CXR" and params.get("prompt_set") == "simple":
            mode = "MS_CXR_CLS"  # "Findings suggesting {category}." prompts: the official MS_CXR_CLS run
        if mode == "CHEXLOCALIZE":
            if params.get("mode") != "opt_th":
                raise ValueError("afloc-compat@1 scores CheXlocalize with its --opt_th mode: thresholds are tuned on "
                                 "the val split (tuning_split='val'); run with val records so that tune() gives "
                                 "params, or pass params={'afloc_dataset': 'GENERIC'} for fixed thresholds")
            return self._summarize_opt_th(records, params, n_boot=n_boot, seed=seed, rounding=rounding)
        return self._summarize_fixed(records, mode, n_boot=n_boot, seed=seed, rounding=rounding)

    # -- Pipeline.test ---------------------------------------------------------------
    def _summarize_fixed(self, records: pd.DataFrame, mode: str, *, n_boot: int, seed: int,
                         rounding: bool) -> list[dict[str, Any]]:
        if "has_gt" in records:
            empty = records["has_gt"] == 0
            if empty.any():
                ids = ", ".join(map(str, records.loc[empty, "sample_id"].head(5))) if "sample_id" in records else ""
                log.warning("afloc-compat@1 (%s): %d of %d samples have no ground truth in the evaluation frame and "
                            "are left out, as the official loaders skip them%s", mode, int(empty.sum()), len(records),
                            f" (e.g. {ids})" if ids else "")
                records = records[~empty]
            if len(records) == 0:
                return []
        rec, cats, codes = _grouped(records)
        iou_cols = C.metric_columns(rec, ("iou",))
        dice_cols = C.metric_columns(rec, ("dice",))
        iou_cols = [c for c in iou_cols if "@" in c]
        dice_cols = [c for c in dice_cols if "@" in c]
        k = len(cats)
        stream = LegacyStream(seed)
        out: list[dict[str, Any]] = []

        def boot(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            mat = C.one_hot_values(values, codes, k)
            reps = replicate_means(mat, stream.weights(len(values), n_boot))
            return official_ci(reps)

        per_t = {m: [rec[c].to_numpy(dtype=np.float64) for c in cols]
                 for m, cols in (("iou", iou_cols), ("dice", dice_cols))}
        per_t["cnr"] = [rec["cnr"].to_numpy(dtype=np.float64)] * len(iou_cols)
        # metric.csv: per-threshold macro (dict_mean) and per-category nanmeans. The CNR values are
        # float64 (NumPy 1.x promotes them, see metrics._cnr_sets), so their means are too.
        cat_means = {m: np.array([[C.nanmean(v[codes == j]) for j in range(k)] for v in vs]) for m, vs in per_t.items()}
        macro = {m: np.array([_dict_mean(cm[i]) for i in range(len(cm))]) for m, cm in cat_means.items()}

        def emit(metric: str, point_cat: np.ndarray, point_all: float, ci, values: np.ndarray) -> None:
            mean, lo, hi = ci
            if rounding:
                mean, lo, hi, point_cat = (np.round(x, 3) for x in (mean, lo, hi, point_cat))
                point_all = _official_round(point_all, 3)
            all_mean, all_lo, all_hi = (_category_row_mean(x, cats) for x in (mean, lo, hi))
            if rounding:
                all_mean, all_lo, all_hi = (_official_round(x, 3) for x in (all_mean, all_lo, all_hi))
            out.append(C.row(metric, OVERALL, point_all, all_mean, all_lo, all_hi, C.finite_count(values)))
            for j in range(k):
                out.append(C.row(metric, cats[j], point_cat[j], mean[j], lo[j], hi[j],
                                 C.finite_count(values[codes == j])))

        deferred: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        # 1. per-threshold IoU bootstraps, only for MS_CXR (official call order)
        for i, col in enumerate(iou_cols):
            item = (col, per_t["iou"][i], cat_means["iou"][i], macro["iou"][i])
            if mode == "MS_CXR":
                emit(col, item[2], item[3], boot(item[1]), item[1])
            else:
                deferred.append(item)
        # 2. threshold-averaged iou, cnr, dice (fill_value=0 reduce, divided by #thresholds)
        for metric in ("iou", "cnr", "dice"):
            avg = _official_threshold_average(per_t[metric])
            point_cat = C.nanmean(cat_means[metric], axis=0)  # pandas mean over thresholds (skipna)
            point_all = float(np.mean(macro[metric]))  # np.mean of the per-threshold macro values
            emit(metric, point_cat, point_all, boot(avg), avg)
        # 3. no official counterpart, drawn after the official sequence
        for i, col in enumerate(dice_cols):
            deferred.append((col, per_t["dice"][i], cat_means["dice"][i], macro["dice"][i]))
        for col, values, point_cat, point_all in deferred:
            emit(col, point_cat, point_all, boot(values), values)
        if "hit" in rec:
            v = rec["hit"].to_numpy(dtype=np.float64)
            pc = np.array([C.nanmean(v[codes == j]) for j in range(k)])
            emit("hit", pc, _dict_mean(pc), boot(v), v)
        return out

    # -- Pipeline.test_use_opt_th ---------------------------------------------------
    def _summarize_opt_th(self, records: pd.DataFrame, params: dict[str, Any], *, n_boot: int, seed: int,
                          rounding: bool) -> list[dict[str, Any]]:
        rec, cats, codes = _grouped(records)
        _warn_without_negatives(rec)
        mask_th, conf_th = params["mask_threshold"], params["confidence_threshold"]
        missing = [c for c in cats if c not in mask_th or c not in conf_th]
        if missing:
            raise ValueError(f"no tuned thresholds for categories {missing}; the val records had {sorted(mask_th)}")
        iou = np.empty(len(rec))
        for i, (c, cf) in enumerate(zip(rec["category"], rec["confidence"])):
            iou[i] = np.nan if cf < conf_th[c] else rec.at[i, f"opt_iou_tp@{threshold_label(mask_th[c])}"]
        k = len(cats)
        stream = LegacyStream(seed)
        n_val = int(params.get("n_tuning_records", 0))
        if n_val:  # the official run bootstraps val first, from the same stream
            stream.skip(n_val, n_boot)
        mat = C.one_hot_values(iou, codes, k)
        reps = replicate_means(mat, stream.weights(len(iou), n_boot))
        mean, lo, hi = official_ci(reps)
        point_cat = np.array([C.nanmean(iou[codes == j]) for j in range(k)])
        point_all = _dict_mean(point_cat)
        if rounding:
            mean, lo, hi, point_cat = (np.round(x, 3) for x in (mean, lo, hi, point_cat))
            point_all = _official_round(point_all, 3)
        agg = [_category_row_mean(x, cats) for x in (mean, lo, hi)]
        if rounding:
            agg = [_official_round(x, 3) for x in agg]
        out = [C.row("iou", OVERALL, point_all, agg[0], agg[1], agg[2], C.finite_count(iou))]
        for j in range(k):
            out.append(C.row("iou", cats[j], point_cat[j], mean[j], lo[j], hi[j], C.finite_count(iou[codes == j])))
        return out

    # -- classification.py -------------------------------------------------------------
    def _summarize_classification(self, records: pd.DataFrame, *, n_boot: int, seed: int, rounding: bool,
                                  softmax: bool | None) -> list[dict[str, Any]]:
        if len(records) == 0:
            return []
        rec = records.reset_index(drop=True)
        img_key = rec["image_id"] if "image_id" in rec else rec["sample_id"]
        images = C.first_appearance(img_key)
        cats = C.first_appearance(rec["category"])
        ii = {v: i for i, v in enumerate(images)}
        cc = {v: i for i, v in enumerate(cats)}
        n, k = len(images), len(cats)
        scores = np.full((n, k), np.nan)
        labels = np.full((n, k), np.nan)
        for im, c, s, y in zip(img_key, rec["category"], rec["score"], rec["label"]):
            scores[ii[im], cc[c]] = s
            labels[ii[im], cc[c]] = y
        if softmax is None:
            softmax = "modality" in rec and (rec["modality"] == C.PATHOLOGY).all()
        digits = 4
        out: list[dict[str, Any]] = []
        # replicate i: resample(..., random_state=seed + i) (seed 0: the official scheme), as multiplicities
        weights = list(sklearn_resample_counts(n, n_boot, seed=seed))
        if softmax:
            ok = ~(np.isnan(scores).any(axis=1) | np.isnan(labels).any(axis=1))
            if not ok.all():
                log.warning("afloc-compat classification: %d images lack a score or label for some class; "
                            "they are left out of balanced accuracy", int((~ok).sum()))
            y_true = np.where(ok, np.argmax(np.nan_to_num(labels, nan=-1), axis=1), -1)
            y_pred = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1)
            w_ok = ok.astype(np.float64)
            reps = np.concatenate([balanced_accuracy_weighted(y_true[ok], y_pred[ok], w[:, ok]) for w in weights]
                                  or [np.zeros(0)])
            point = float(balanced_accuracy_weighted(y_true[ok], y_pred[ok], w_ok[ok][None])[0])
            mean, lo, hi = official_ci(reps)
            if rounding:
                point, mean, lo, hi = (_official_round(x, digits) for x in (point, mean, lo, hi))
            return [C.row("balanced_accuracy", OVERALL, point, mean, lo, hi, int(ok.sum()))]
        reps = np.full((n_boot, k), np.nan)
        points = np.full(k, np.nan)
        for j in range(k):
            ok = ~(np.isnan(scores[:, j]) | np.isnan(labels[:, j]))
            r0 = 0
            for w in weights:
                reps[r0:r0 + len(w), j] = auroc_weighted(labels[ok, j], scores[ok, j], w[:, ok])
                r0 += len(w)
            points[j] = auroc_weighted(labels[ok, j], scores[ok, j], np.ones((1, int(ok.sum()))))[0]
        avg = reps.mean(axis=1)  # np.mean over classes: NaN if any class is NaN in the replicate
        stats = official_ci(np.column_stack([reps, avg]))
        point_all = float(np.mean(points))
        cols = list(range(k)) + [k]
        pts = list(points) + [point_all]
        names = list(cats) + [OVERALL]
        for j in cols:
            p, m, lo, hi = pts[j], stats[0][j], stats[1][j], stats[2][j]
            if rounding:
                p, m, lo, hi = (_official_round(x, digits) for x in (p, m, lo, hi))
            n_j = n if j == k else int((~(np.isnan(scores[:, j]) | np.isnan(labels[:, j]))).sum())
            out.append(C.row("auroc", names[j], p, m, lo, hi, n_j))
        return [out[-1]] + out[:-1]


def _warn_without_negatives(rec: pd.DataFrame) -> None:
    if "gt_valid" in rec and len(rec) and not (rec["gt_valid"] == 0).any():
        log.warning("afloc-compat@1 CheXlocalize records contain no negative (empty-mask) rows; the official run "
                    "scores every CXR x task, so thresholds and CIs will differ (score negatives too)")


def _mode_of(records: pd.DataFrame) -> str:
    if "afloc_dataset" in records and len(records):
        modes = C.first_appearance(records["afloc_dataset"])
        if len(modes) > 1:
            raise ValueError(f"records mix official dataset modes {modes}")
        return str(modes[0])
    return "GENERIC"


def _grouped(records: pd.DataFrame):
    """Rows in ``to_metric_df`` order: grouped by category in order of first appearance."""
    rec = records.reset_index(drop=True)
    codes, cats = C.category_codes(rec["category"].tolist())
    order = np.argsort(codes, kind="stable")
    rec = rec.iloc[order].reset_index(drop=True)
    return rec, cats, codes[order]


def _dict_mean(cat_means: np.ndarray) -> float:
    """``dict_mean``: nanmean over categories of the per-category nanmeans."""
    return float(C.nanmean(np.asarray(cat_means, dtype=np.float64)))


def _category_row_mean(values: np.ndarray, cats: list[Any]) -> float:
    """The row ``bootci`` appends to its summary: ``DataFrame.mean`` over the categories (sorted by
    name), NaN skipped, so one category without a bound leaves the others' mean."""
    order = sorted(range(len(cats)), key=lambda j: str(cats[j]))
    return float(C.nanmean([values[j] for j in order]))


def _official_round(x: Any, digits: int) -> float:
    """The official rounding (``DataFrame.round``, ``Series.round``, ``round(np.float64, n)``): NumPy's
    ``np.round``, which scales, rounds half to even and scales back, so 0.1555 gives 0.156 where
    Python's ``round`` on the float's exact binary value gives 0.155."""
    return float(np.round(np.float64(x), digits))


def _official_threshold_average(per_threshold: list[np.ndarray]) -> np.ndarray:
    """``reduce(lambda x, y: x.add(y, fill_value=0), dfs) / len(dfs)``.

    A sample NaN at some thresholds but not all counts those thresholds as 0; NaN at all
    thresholds stays NaN.
    """
    acc = np.array(per_threshold[0], dtype=np.float64, copy=True)
    for v in per_threshold[1:]:
        both = np.isnan(acc) & np.isnan(v)
        acc = np.where(both, np.nan, np.nan_to_num(acc, nan=0.0) + np.nan_to_num(v, nan=0.0))
    return acc / len(per_threshold)
