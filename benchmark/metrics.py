"""Per-sample metrics, vectorised over batches of samples (numpy and scipy only).

Why batched: every number the project prints comes from here, for tens of thousands of
(image, prompt) pairs and 1,000 bootstrap replicates, on small CPUs. Functions take
batches ``[B, H, W]`` and return per-sample arrays; callers stream chunks so memory does
not grow with the number of samples.

Conventions
- Maps carry NaN outside the evaluated area (margins, pixels off the image); NaN pixels
  are excluded from normalisation and from every count.
- Arithmetic that the official AFLoc code does in the map's dtype (min–max
  normalisation, thresholding, CNR moments) is done here in the same dtype and order, so
  float32 maps give the same bits as the official code. Where NumPy 1.x (the official
  environment) and NumPy 2 differ, NumPy 1.x is followed explicitly: thresholds are cast to
  the map's dtype before comparing (a float64 scalar against a float32 array), the CNR's
  moments are summed in NumPy 1.x's 8192-element blocks, and its final division is float64
  (all-scalar promotion of ``pow(float32, 0.5)``).
- NaN rules for overlap metrics (``rule``):
  ``"tp"``: NaN if the prediction or the ground truth is empty (AFLoc ``only_pos=True``,
  CheXlocalize ``true_pos_only=True``); ``"union"``: NaN only if both are empty
  (``only_pos=False``); ``"gt"``: NaN only if the ground truth is empty, so an empty
  prediction of a present lesion scores 0 (``canonical@1``).

Registered metrics (``afloc-bench ls metrics``) are registered at the bottom of this file.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

# Official AFLoc thresholds on the [-1, 1] map, float noise included (0.30000000000000004).
AFLOC_THRESHOLDS = tuple(float(t) for t in np.arange(0.1, 0.6, 0.1))
AFLOC_PATHOLOGY_THRESHOLDS = tuple(float(t) for t in np.arange(-1, 0, 0.1))
# Clean decimal thresholds for canonical@1 (same grid, no float noise).
CANONICAL_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
CANONICAL_PATHOLOGY_THRESHOLDS = (-1.0, -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1)
# NIH ChestX-ray14 box-accuracy IoU thresholds T(IoU).
BOX_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
IOU_RULES = ("tp", "union", "gt")


def threshold_label(t: float) -> str:
    """Column label of a threshold: ``0.30000000000000004`` → ``"0.3"``, ``-1`` → ``"-1.0"``."""
    return str(round(float(t), 1)) if abs(round(float(t), 1) - float(t)) < 1e-9 else repr(float(t))


# --------------------------------------------------------------------------------------
# Shapes and validity
# --------------------------------------------------------------------------------------
def _as_batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"expected a map (H, W) or a batch (B, H, W), got shape {a.shape}")
    return a


def _float_maps(maps: np.ndarray) -> np.ndarray:
    maps = _as_batch(maps)
    if not np.issubdtype(maps.dtype, np.floating) or maps.dtype.itemsize < 4:
        maps = maps.astype(np.float32)
    return maps


def _valid(maps: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    finite = ~np.isnan(maps)
    if valid is None:
        return finite
    v = np.asarray(valid, dtype=bool)
    if v.ndim == 2:
        v = v[None]
    return finite & v


# Scratch arrays reused by the batched paths, per thread. A fresh array of a few MiB costs a page
# fault per 4 KiB page on first touch, which on small virtual machines took as long as the metric
# arithmetic itself; chunks of maps keep asking for the same sizes, so the buffers are kept.
_SCRATCH = threading.local()
SCRATCH_MAX_BYTES = 32 * 2**20  # larger requests (huge batches) get a fresh array


def _scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array of ``shape`` kept under ``name`` for this thread (valid until the
    next request of the same name: callers never return it)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    buf = pool.get(name)
    if buf is None or buf.size < nbytes:
        buf = pool[name] = np.empty(max(nbytes, 64), dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------
def minmax_normalize(maps: np.ndarray, valid: np.ndarray | None = None, *, low: float = -1.0,
                     constant: str = "low") -> np.ndarray:
    """Per-map min–max over valid pixels to ``[low, 1]`` (``low`` is -1 or 0); NaN elsewhere.

    Same arithmetic as AFLoc's ``norm_heatmap`` in the map's dtype:
    ``(h - min) / (max - min)``, then ``* 2 - 1`` for ``low=-1``. A constant map (max ==
    min, where the official code crashes) becomes ``low`` on its valid pixels
    (``constant="low"``: a map without contrast highlights nothing) or NaN
    (``constant="nan"``). A map with no valid pixel is all NaN. ``valid=None`` means the
    non-NaN pixels.
    """
    return _minmax(maps, valid, low, constant)[0]


def _minmax(maps: np.ndarray, valid: np.ndarray | None, low: float, constant: str = "low"):
    """:func:`minmax_normalize` and its per-map ``(min, max, max - min)`` (NaN where no pixel is valid)."""
    if low not in (-1.0, 0.0, -1, 0):
        raise ValueError("low must be -1 or 0")
    maps = _float_maps(maps)
    if valid is not None:
        src = np.array(maps, copy=True)
        src[~_valid(maps, valid)] = np.nan
        out = src
    else:  # the first operation below writes the new array: no separate copy
        src, out = maps, None
    b = src.shape[0]
    flat = src.reshape(b, -1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mn = np.fmin.reduce(flat, axis=1)
        mx = np.fmax.reduce(flat, axis=1)
        d = mx - mn
        out = np.subtract(src, mn[:, None, None], out=out)
        np.divide(out, d[:, None, None], out=out)
        if low == -1:
            np.multiply(out, 2, out=out)
            np.subtract(out, 1, out=out)
    const = d == 0
    if const.any():
        fill = out.dtype.type(low) if constant == "low" else np.nan
        for i in np.flatnonzero(const):
            vi = (~np.isnan(maps[i]) if valid is None
                  else _valid(maps[i:i + 1], valid[i] if np.ndim(valid) == 3 else valid)[0])
            out[i][vi] = fill
    return out, mn, mx, d


def _normalize_1d(v: np.ndarray, low: float) -> np.ndarray:
    """``minmax_normalize`` of one 1-D pixel set (same arithmetic, same constant rule)."""
    mn, mx = v.min(), v.max()
    d = mx - mn
    if d == 0:
        return np.full_like(v, low)
    out = (v - mn) / d
    return out * 2 - 1 if low == -1 else out


# --------------------------------------------------------------------------------------
# Overlap metrics at thresholds
# --------------------------------------------------------------------------------------
def _count_true(mask2d: np.ndarray) -> np.ndarray:
    """Row-wise count of True in a (B, P) boolean array (bit-count when available)."""
    return _popcount(np.packbits(mask2d, axis=1))


def threshold_counts(norm_maps: np.ndarray, gt: np.ndarray, thresholds: Sequence[float],
                     valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pixel counts of ``map > t`` against the ground truth, for every threshold at once.

    Returns ``pred`` and ``inter`` of shape ``[B, T]`` (|P|, |P ∧ G|), ``gt_count`` [B]
    (ground-truth pixels, any nonzero value) and ``gt_sum`` [B] (sum of the raw mask
    values, where AFLoc's overlapping boxes count twice), all over valid pixels only
    (NaN pixels never exceed a threshold). Thresholds equal after casting to the map dtype
    are compared once; every count is a bit count of packed masks (one comparison pass per
    distinct threshold, the exact ``map > t`` of the map's dtype).
    """
    maps = _float_maps(norm_maps)
    g = _as_batch(gt)
    if g.shape != maps.shape:
        raise ValueError(f"ground truth shape {g.shape} differs from map shape {maps.shape}")
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    if valid is None:
        nan = np.isnan(flat, out=_scratch("counts.nan", flat.shape, bool))
        v = None if not nan.any() else ~nan
    else:
        v = _valid(maps, valid).reshape(b, -1)
    gv = g.reshape(b, -1) if v is None else np.where(v, g.reshape(b, -1), 0)
    if valid is not None and not v.all():
        flat = np.where(v, flat, np.nan)
    return _counts_rows(flat, gv, thresholds)


def _counts_rows(flat: np.ndarray, gv: np.ndarray, thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """:func:`threshold_counts` of maps [B, P] (NaN = never above) and masks [B, P] already zero
    outside the evaluated pixels."""
    b, p = flat.shape
    # rows padded with False to whole 64-bit words: their bit counts then run on uint64 words
    padded = _scratch("counts.bool", (b, p + -p % 64), bool)
    padded[:, p:] = False
    buf = padded[:, :p]
    np.greater(gv, 0, out=buf)
    gpack = np.packbits(padded, axis=1)
    gt_count = _popcount(gpack)
    out = {
        "gt_count": gt_count,
        "gt_sum": _mask_sums(gv, gt_count, padded),
        "pred": np.zeros((b, len(thresholds)), dtype=np.int64),
        "inter": np.zeros((b, len(thresholds)), dtype=np.int64),
    }
    done: dict[Any, int] = {}
    with np.errstate(invalid="ignore"):
        for j, t in enumerate(flat.dtype.type(t) for t in thresholds):
            key = t.item()
            if key in done:
                out["pred"][:, j] = out["pred"][:, done[key]]
                out["inter"][:, j] = out["inter"][:, done[key]]
                continue
            np.greater(flat, t, out=buf)  # NaN > t is False
            ppack = np.packbits(padded, axis=1)
            out["pred"][:, j] = _popcount(ppack)
            np.bitwise_and(ppack, gpack, out=ppack)
            out["inter"][:, j] = _popcount(ppack)
            done[key] = j
    return out


MASK_LEVELS_BY_BITCOUNT = 4  # masks holding at most this value are summed by bit counts of mask >= k


def _mask_sums(gv: np.ndarray, gt_count: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """Row sums of a [B, P] mask as int64, ``gv.sum(axis=1, dtype=np.int64)``.

    Small non-negative integer masks (0, 1, 2 where boxes overlap) are summed exactly as
    ``sum_k |mask >= k|`` from bit counts (``gt_count`` is ``|mask >= 1|``), which is faster than
    a widening sum; other masks are summed directly. ``padded``: a boolean [B, >= P] work array whose
    columns past P are False.
    """
    buf = padded[:, :gv.shape[1]]
    kind = gv.dtype.kind
    if kind == "b":
        return gt_count.copy()
    if kind in "iu" and gv.size:
        top = int(gv.max())
        if 0 <= top <= MASK_LEVELS_BY_BITCOUNT and (kind == "u" or int(gv.min()) >= 0):
            total = gt_count.copy()
            for k in range(2, top + 1):
                np.greater_equal(gv, k, out=buf)
                total += _popcount(np.packbits(padded, axis=1))
            return total
    return gv.sum(axis=1, dtype=np.int64)


def _popcount(packed: np.ndarray) -> np.ndarray:
    """Row-wise number of set bits of packed bytes [B, k] (int64)."""
    if hasattr(np, "bitwise_count"):
        if packed.shape[1] % 8 == 0 and packed.flags.c_contiguous:
            packed = packed.view(np.uint64)  # whole words: a third of the work of counting bytes
        return np.bitwise_count(packed).sum(axis=1, dtype=np.int64)
    return np.unpackbits(packed, axis=1).sum(axis=1, dtype=np.int64)


def _nan_rule(pred: np.ndarray, gt: np.ndarray, union: np.ndarray, rule: str) -> np.ndarray:
    if rule == "tp":
        return (pred == 0) | (gt == 0)
    if rule == "union":
        return union == 0
    if rule == "gt":
        return gt == 0
    raise ValueError(f"rule must be one of {IOU_RULES}, got {rule!r}")


def iou_from_counts(counts: dict[str, np.ndarray], rule: str = "tp") -> np.ndarray:
    """IoU ``|P∧G| / |P∨G|`` per sample and threshold, NaN by ``rule``."""
    pred, inter = counts["pred"], counts["inter"]
    gt = counts["gt_count"][:, None]
    union = pred + gt - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        val = inter / union
    return np.where(_nan_rule(pred, gt, union, rule) | (union == 0), np.nan, val)


def dice_from_counts(counts: dict[str, np.ndarray], rule: str = "tp", *, raw_gt_sum: bool = True) -> np.ndarray:
    """Dice ``2|P∧G| / (|P| + ΣG)`` per sample and threshold, NaN by ``rule``.

    ``raw_gt_sum=True`` sums the raw mask values as AFLoc does (a pixel holding 2 counts
    twice); ``False`` counts ground-truth pixels.
    """
    pred, inter = counts["pred"], counts["inter"]
    gt = counts["gt_count"][:, None]
    gsum = (counts["gt_sum"] if raw_gt_sum else counts["gt_count"])[:, None]
    union = pred + gt - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        val = 2 * inter / (pred + gsum)
    return np.where(_nan_rule(pred, gt, union, rule) | ((pred + gsum) == 0), np.nan, val)


# --------------------------------------------------------------------------------------
# Contrast-to-noise ratio
# --------------------------------------------------------------------------------------
def cnr(norm_maps: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, *,
        inside: str = "eq1", renormalize: bool = False) -> np.ndarray:
    """Signed CNR ``(mean_A − mean_Ā) / sqrt(var_A + var_Ā)`` per sample (population var).

    ``A`` = lesion pixels, ``Ā`` = background pixels, valid pixels only. ``inside="eq1"``
    is AFLoc's rule (A is ``mask == 1``, Ā is ``mask == 0``; pixels holding 2 belong to
    neither); ``inside="nonzero"`` puts every nonzero pixel in A. 0 when both variances are
    0; NaN when A or Ā is empty. ``renormalize=True`` first min–max normalises the valid
    pixels to [-1, 1] again, as ``compute_cnr`` does with the already normalised map.

    Moments are reductions over the extracted pixel sets in the map's dtype, in the official
    order and with NumPy 1.x's blockwise sums; the final division is float64, as NumPy 1.x
    computes it in the official code (see ``_cnr_sets``). So float32 maps give the official
    values, and the same values under NumPy 1.26 and 2.x.
    """
    maps = _float_maps(norm_maps)
    g = _as_batch(gt)
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    gflat = g.reshape(b, -1)
    nan = np.isnan(flat, out=_scratch("cnr.nan", flat.shape, bool))
    out = np.full(b, np.nan, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if valid is None and not nan.any():
            # every pixel evaluated: the sets are read straight from the maps (row-major order)
            _cnr_shared(flat, gflat, inside, renormalize, out)
            return out
        keep = ~nan
        if valid is not None:
            keep &= _valid(maps, valid).reshape(b, -1)
        if b > 1 and (keep == keep[0]).all():
            # Same evaluated area for the whole batch (e.g. a fixed margin): gather it once,
            # by slicing when it is a rectangle; the pixel order is the official row-major one.
            hv_all, gv_all = _gather_area(maps, g, keep[0].reshape(maps.shape[1:]))
            _cnr_shared(hv_all, gv_all, inside, renormalize, out)
            return out
        for i in range(b):
            hv = flat[i][keep[i]]
            if hv.size == 0:
                continue
            if renormalize:
                hv = _normalize_1d(hv, -1)
            gv = gflat[i][keep[i]]
            out[i] = _cnr_sets(hv[gv == 1] if inside == "eq1" else hv[gv != 0], hv[gv == 0])
    return out


def _cnr_shared(hv: np.ndarray, gv: np.ndarray, inside: str, renormalize: bool, out: np.ndarray, *,
                extremes: tuple[np.ndarray, np.ndarray] | None = None, work: np.ndarray | None = None) -> None:
    """CNR of maps [B, P] whose P pixels are all evaluated (``hv`` is not modified) into ``out``.

    ``extremes``: the rows' (min, max) when the caller knows them exactly (spares two passes);
    ``work``: an array like ``hv`` the second normalisation may write (default: a scratch array)."""
    b = hv.shape[0]
    if renormalize and hv.shape[1]:
        mn, mx = extremes if extremes is not None else (hv.min(axis=1), hv.max(axis=1))
        d = mx - mn
        if work is None:
            work = _scratch("cnr.hv", hv.shape, hv.dtype)
        if ((mn == -1) & ((mx == 1) | (d == 0))).all():
            # Rows already on [-1, 1] (or constant): ((h + 1) / 2) * 2 - 1 is (h + 1) - 1, since
            # h + 1 is 0 or at least the spacing of floats below 1, so halving and doubling it is exact.
            hv = np.add(hv, 1, out=work)
        else:
            hv = np.subtract(hv, mn[:, None], out=work)
            np.divide(hv, d[:, None], out=hv)
            np.multiply(hv, 2, out=hv)
        np.subtract(hv, 1, out=hv)
        for i in np.flatnonzero(d == 0):
            hv[i] = hv.dtype.type(-1)
    ins = _scratch("cnr.in", gv.shape, bool)
    (np.equal if inside == "eq1" else np.not_equal)(gv, 1 if inside == "eq1" else 0, out=ins)
    outs = np.equal(gv, 0, out=_scratch("cnr.out", gv.shape, bool))
    sets = [hv[i][ins[i]] for i in range(b)] + [hv[i][outs[i]] for i in range(b)]
    out[:] = _cnr_of_sets(sets[:b], sets[b:], hv.dtype, _scratch("cnr.dev", hv.shape[1:], hv.dtype))


def _cnr_of_sets(ins: list[np.ndarray], outs: list[np.ndarray], dtype: np.dtype, work: np.ndarray) -> np.ndarray:
    """:func:`_cnr_sets` of many pairs of pixel sets: the same operations, with the per-set scalar
    steps (divisions by the counts, conversions to the map's dtype) done once for all sets."""
    sets = ins + outs
    sizes = np.array([x.size for x in sets], dtype=np.int64)
    block, reduce = NUMPY1_REDUCE_BLOCK, np.add.reduce
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.array([reduce(x) if x.size <= block else _sum_numpy1(x) for x in sets], dtype=np.float64)
        means = (sums / sizes).astype(dtype)  # float64(sum) / n, returned in the dtype, as a.mean()
        devs = []
        for x, m in zip(sets, means):
            d = np.subtract(x, m, out=work[:x.size])
            np.multiply(d, d, out=d)
            devs.append(reduce(d) if d.size <= block else _sum_numpy1(d))
        var = (np.array(devs, dtype=np.float64) / sizes).astype(dtype)
    b = len(ins)
    total = var[:b] + var[b:]
    diff = means[:b] - means[b:]
    out = np.full(b, np.nan)
    for i in np.flatnonzero((sizes[:b] > 0) & (sizes[b:] > 0)):
        s = total[i]
        out[i] = 0.0 if s == 0 else float(diff[i] / pow(np.float64(s), 0.5))
    return out


def _gather_area(maps: np.ndarray, g: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the ``area`` pixels of every map and mask, [B, P] in row-major order."""
    b = maps.shape[0]
    rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    if rows.size and area.sum() == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1):
        sl = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return np.array(maps[sl].reshape(b, -1), copy=True), g[sl].reshape(b, -1)
    idx = np.flatnonzero(area.ravel())
    return np.take(maps.reshape(b, -1), idx, axis=1), np.take(g.reshape(b, -1), idx, axis=1)


def _cnr_sets(a_in: np.ndarray, a_out: np.ndarray, work: np.ndarray | None = None) -> float:
    """AFLoc's ``compute_cnr`` arithmetic on the two pixel sets (NaN if one is empty).

    Means and variances are in the map's dtype, reduced as NumPy 1.x (the official environment)
    reduces them (:func:`_mean_var_numpy1`). The last step is float64: the official
    ``(meanA - meanA_) / pow(varA + varA_, 0.5)`` has only scalar operands, and NumPy 1.x promotes
    a float32 scalar with the Python float 0.5 to float64 there. NumPy 2 would keep float32, so the
    promotion is written out: the same value under both.
    """
    if a_in.size == 0 or a_out.size == 0:
        return np.nan
    m1, v1 = _mean_var_numpy1(a_in, work)
    m0, v0 = _mean_var_numpy1(a_out, work)
    s = v1 + v0
    return 0.0 if s == 0 else float((m1 - m0) / pow(np.float64(s), 0.5))


NUMPY1_REDUCE_BLOCK = 8192  # NumPy 1.x's buffer size: its reductions see at most this many elements at once


def _sum_numpy1(a: np.ndarray):
    """``np.add.reduce`` of a 1-D contiguous array as NumPy 1.x computes it, in the array's dtype.

    NumPy 1.x sums in consecutive blocks of 8192 elements (pairwise within a block) and adds the
    block sums in order; NumPy 2.3 and later no longer split such a reduction into blocks, which
    changes float32 sums of more than 8192 values in their last bits. Within a block both agree.
    The whole blocks are reduced as the rows of one [blocks, 8192] array (a row-wise reduction is
    the same pairwise sum of each row), their sums then added one by one from 0.
    """
    n = a.size
    if n <= NUMPY1_REDUCE_BLOCK:
        return np.add.reduce(a)
    full = n - n % NUMPY1_REDUCE_BLOCK
    total = a.dtype.type(0)
    for s in np.add.reduce(a[:full].reshape(-1, NUMPY1_REDUCE_BLOCK), axis=1):
        total = total + s
    if full < n:
        total = total + np.add.reduce(a[full:])
    return total


def _mean_var_numpy1(a: np.ndarray, work: np.ndarray | None = None):
    """``(a.mean(), a.var())`` of a non-empty 1-D array as NumPy 1.x computes them: block sums
    (:func:`_sum_numpy1`), each divided by the count in float64 and returned in the array's dtype.
    ``work``: a 1-D array of the same dtype and at least ``a.size`` entries for the deviations."""
    n = a.size
    kind = a.dtype.type
    mean = kind(np.float64(_sum_numpy1(a)) / n)
    dev = np.subtract(a, mean, out=(work if work is not None and work.size >= n and work.dtype == a.dtype
                                    else _scratch("mean_var.dev", a.shape, a.dtype))[:n])
    np.multiply(dev, dev, out=dev)
    return mean, kind(np.float64(_sum_numpy1(dev)) / n)


# --------------------------------------------------------------------------------------
# Pointing game
# --------------------------------------------------------------------------------------
def pointing_hit(maps: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, *,
                 rule: str = "first") -> np.ndarray:
    """Pointing game per sample: is the map's maximum inside the lesion?

    ``rule="first"`` is CheXlocalize's: the first maximum in row-major order
    (``np.argmax`` of the flattened map over valid pixels) scores 1 if it lies on the
    lesion, else 0. ``rule="ties"`` scores the fraction of all maximal pixels that lie on
    the lesion (the expectation of random tie-breaking; a constant map scores the lesion's
    share of the valid area). NaN when the ground truth is empty or no pixel is valid.
    """
    maps = _float_maps(maps)
    g = _as_batch(gt)
    v = _valid(maps, valid)
    b = maps.shape[0]
    flat = np.where(v, maps, -np.inf).reshape(b, -1)
    gflat = (g != 0).reshape(b, -1)
    has_gt = gflat.any(axis=1)
    has_valid = v.reshape(b, -1).any(axis=1)
    if rule == "first":
        idx = np.argmax(flat, axis=1)
        hit = gflat[np.arange(b), idx].astype(np.float64)
    elif rule == "ties":
        mx = flat.max(axis=1, keepdims=True)
        at_max = (flat == mx) & v.reshape(b, -1)
        n_max = at_max.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            hit = (at_max & gflat).sum(axis=1) / n_max
    else:
        raise ValueError("rule must be 'first' or 'ties'")
    return np.where(has_gt & has_valid, hit, np.nan)


# --------------------------------------------------------------------------------------
# Box accuracy (NIH ChestX-ray14 protocol)
# --------------------------------------------------------------------------------------
def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes in continuous coordinates."""
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else float("nan")


def predicted_box(binary: np.ndarray) -> list[float] | None:
    """Bounding box ``[x, y, w, h]`` (pixel edges) of the largest 8-connected component.

    Ties between equally large components go to the one met first in row-major order.
    None when nothing is predicted.
    """
    from scipy import ndimage

    lab, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    k = int(np.argmax(sizes)) + 1
    sl = ndimage.find_objects(lab)[k - 1]
    y, x = sl
    return [float(x.start), float(y.start), float(x.stop - x.start), float(y.stop - y.start)]


def box_accuracy(norm_map: np.ndarray, gt_boxes: Sequence[Sequence[float]], *, map_threshold: float = 0.5,
                 iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, valid: np.ndarray | None = None) -> np.ndarray:
    """NIH ChestX-ray14 box accuracy of one map: 1 per T(IoU) where the box is correct.

    Definition used here: the map, min–max normalised to [0, 1] over valid pixels, is
    binarised with ``> map_threshold``; the predicted box is the bounding box of the
    largest 8-connected component; the localization is correct at T if its IoU with the
    best-matching ground-truth box (continuous ``[x, y, w, h]``, same frame) is ``>= T``.
    Returns an array over ``iou_thresholds``: 1/0, all NaN when there is no ground-truth
    box; an empty prediction scores 0.
    """
    if len(gt_boxes) == 0:
        return np.full(len(iou_thresholds), np.nan)
    m = minmax_normalize(norm_map, valid, low=0.0)[0]
    with np.errstate(invalid="ignore"):
        binary = m > m.dtype.type(map_threshold)
    box = predicted_box(binary)
    if box is None:
        return np.zeros(len(iou_thresholds))
    best = max(box_iou(box, g) for g in gt_boxes)
    return np.array([1.0 if best >= t else 0.0 for t in iou_thresholds])


# --------------------------------------------------------------------------------------
# Otsu segmentation (CheXlocalize)
# --------------------------------------------------------------------------------------
def otsu_segmentation(heatmap: np.ndarray) -> np.ndarray:
    """CheXlocalize's default binarisation of one map (``cam_to_segmentation``).

    Min–max to [0, 1] (NaN pixels count as 0), ``uint8(255 * m)``, ``cv2.threshold`` with
    Otsu, then every external or internal contour with more than one point is filled as a
    polygon (holes are filled, single-pixel blobs dropped). A constant map gives an empty
    segmentation (CheXlocalize divides by zero there).
    """
    import cv2
    from PIL import Image, ImageDraw

    h = np.asarray(heatmap, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = h - np.nanmin(h)
        mx = np.nanmax(m)
    if not np.isfinite(mx) or mx == 0:
        return np.zeros(h.shape, dtype=np.uint8)
    m = np.nan_to_num(m / mx, nan=0.0)
    u8 = np.uint8(255 * m)
    maxval = int(u8.max())
    thresh = cv2.threshold(u8, 0, maxval, cv2.THRESH_OTSU)[1]
    cnts = cv2.findContours(thresh, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    cnts = cnts[0] if len(cnts) == 2 else cnts[1]
    seg = Image.new("1", (h.shape[1], h.shape[0]))
    draw = ImageDraw.Draw(seg)
    for cnt in cnts:
        if len(cnt) > 1:
            draw.polygon([(int(p[0][0]), int(p[0][1])) for p in cnt], outline=1, fill=1)
    return np.array(seg, dtype=np.uint8)


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------
def _tie_groups(scores: np.ndarray):
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def auroc_weighted(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of sample ``weights`` [R, N] (bootstrap multiplicities).

    Mann–Whitney form with ties counted one half, equal to ``roc_auc_score`` on the
    resampled data. NaN where a row has no positive or no negative weight.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order, starts = _tie_groups(s)
    yo = y[order]
    wo = w[:, order]
    wp = np.where(yo, wo, 0.0)
    wn = wo - wp
    gp = np.add.reduceat(wp, starts, axis=1)
    gn = np.add.reduceat(wn, starts, axis=1)
    below = np.cumsum(gn, axis=1) - gn
    num = (gp * (below + 0.5 * gn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels)
    return float(auroc_weighted(y, np.asarray(scores, dtype=np.float64), np.ones((1, len(y))))[0])


def balanced_accuracy_weighted(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy per row of sample ``weights`` [R, N].

    scikit-learn's definition: the mean recall over the classes present in ``y_true`` (of
    the resample). NaN for a row with no weight.
    """
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    classes = np.unique(yt)
    recalls = []
    for c in classes:
        is_c = yt == c
        den = w @ is_c.astype(np.float64)
        num = w @ (is_c & (yp == c)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(den > 0, num / den, np.nan))
    if not recalls:
        return np.full(w.shape[0], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(recalls, axis=1), axis=1)


def balanced_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    yt = np.asarray(y_true)
    return float(balanced_accuracy_weighted(yt, np.asarray(y_pred), np.ones((1, len(yt))))[0])


def seg_dice(pred: np.ndarray, gt: np.ndarray, *, empty: float = 1.0) -> np.ndarray:
    """Segmentation Dice of binary masks per sample; ``empty`` when both are empty.

    The SIIM-ACR convention (an empty prediction of an empty mask scores 1) is the default.
    """
    p = (_as_batch(pred) != 0).reshape(len(_as_batch(pred)), -1)
    g = (_as_batch(gt) != 0).reshape(len(_as_batch(gt)), -1)
    inter = _count_true(p & g)
    den = _count_true(p) + _count_true(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den == 0, float(empty), 2 * inter / np.maximum(den, 1))


# --------------------------------------------------------------------------------------
# One-map conveniences (what the registry exposes)
# --------------------------------------------------------------------------------------
def iou(pred_mask: np.ndarray, gt_mask: np.ndarray, valid: np.ndarray | None = None, *, rule: str = "tp") -> float:
    """IoU of one binary prediction and one mask (valid pixels only), NaN by ``rule``."""
    p = np.asarray(pred_mask).astype(np.float32)
    c = threshold_counts(p, gt_mask, [0.5], valid)
    return float(iou_from_counts(c, rule)[0, 0])


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray, valid: np.ndarray | None = None, *, rule: str = "tp",
         raw_gt_sum: bool = True) -> float:
    """Dice of one binary prediction and one mask (valid pixels only), NaN by ``rule``."""
    p = np.asarray(pred_mask).astype(np.float32)
    c = threshold_counts(p, gt_mask, [0.5], valid)
    return float(dice_from_counts(c, rule, raw_gt_sum=raw_gt_sum)[0, 0])


def cnr_single(heatmap: np.ndarray, gt_mask: np.ndarray, valid: np.ndarray | None = None, *,
               inside: str = "eq1") -> float:
    """Signed CNR of one map (any scale: CNR is invariant to positive affine rescaling)."""
    return float(cnr(np.asarray(heatmap), gt_mask, valid, inside=inside)[0])


def hit(heatmap: np.ndarray, gt_mask: np.ndarray, valid: np.ndarray | None = None, *, rule: str = "first") -> float:
    """Pointing-game hit of one map (see :func:`pointing_hit`)."""
    return float(pointing_hit(np.asarray(heatmap), gt_mask, valid, rule=rule)[0])
