"""What the official evaluation code computes, restated independently for the parity tests.

Sources (read, not copied): AFLoc V2 ``localization/`` (YH0517/AFLoc b1f6b8d: ``metrics.py``
``compute_iou`` / ``compute_dice`` / ``compute_cnr``, ``datasets.norm_heatmap``, ``common.Pipeline.test``,
``get_opt_th``, ``test_use_opt_th``, ``dict_mean``, ``to_metric_df``, ``bootstrap_metric``,
``compute_cis``, ``bootci``) and CheXlocalize ``eval.py`` (rajpurkarlab/cheXlocalize 2a79492:
``calculate_iou``, ``get_ious``, ``bootstrap_metric``, ``compute_cis``, ``evaluate``).

Everything is a plain loop over samples with the numpy / pandas calls the official code makes;
nothing here imports the project. The official AFLoc evaluation ran under NumPy 1.26
(V2 ``requirements.txt``), and two of its results depend on the NumPy version. Both are written out
with their NumPy 1.x meaning, so this reference gives the same numbers under NumPy 1.26 and 2.x:

- ``map > t`` with a float32 map and a float64 threshold compares in float32 (value-based casting);
- in ``compute_cnr``, ``pow(varA + varA_, 0.5)`` has only scalar operands, so NumPy 1.x promotes the
  float32 sum with the Python float to float64: the CNR of a float32 map is a float64 value, and
  so are its means (NumPy 2 keeps float32 there);
- ``A.mean()`` and ``A.var()``: NumPy 1.x reduces in blocks of its buffer size (8192 elements),
  pairwise within a block, block sums added in order; NumPy >= 2.3 reduces a contiguous array in one
  piece, which changes float32 sums of more than 8192 values in their last bits.

Constant maps: the official ``norm_heatmap`` returns a 1-D array for a map whose valid pixels are
all equal, and the evaluation then fails with an IndexError. ``afloc-compat@1`` documents its own
answer (the map is normalised to the lower bound of the range); the reference follows that rule,
marked below, so constant maps can still be compared.
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import reduce

import numpy as np
import pandas as pd

METRICS = ("iou", "cnr", "dice")


class quiet:
    """Silence the RuntimeWarnings of empty means and of inf / NaN arithmetic, as the official runs print them."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._e = np.errstate(all="ignore")
        self._e.__enter__()

    def __exit__(self, *exc):
        self._e.__exit__(*exc)
        self._w.__exit__(*exc)


def label(t: float) -> str:
    return str(round(float(t), 1))


def thresholds(pathology: bool = False) -> list[float]:
    return list(np.arange(-1, 0, 0.1)) if pathology else list(np.arange(0.1, 0.6, 0.1))


def margin_nan(shape) -> np.ndarray:
    """True where ``set_margin`` writes NaN: a centred square of side int(448 * min(H, W) / 512) is kept,
    floor on the left / top (the official call has H = W = 224; the same rule on other sizes)."""
    h, w = shape
    side = int(448 * min(h, w) / 512)
    mh, mw = h - side, w - side
    keep = np.zeros((side, side), dtype=bool)
    keep = np.pad(keep, ((math.floor(mh / 2), math.ceil(mh / 2)), (math.floor(mw / 2), math.ceil(mw / 2))),
                  constant_values=True)
    return keep


# ============================================================================ AFLoc per sample
def norm_heatmap(heatmap, nan, mode=0):
    """Min-max of the pixels outside ``nan`` to [-1, 1] (mode 0) or [0, 1] (mode 1), in the map's dtype."""
    out = copy.deepcopy(heatmap)
    vals = out[~nan]
    with quiet():
        span = vals.max() - vals.min()
        if span == 0:
            # official: returns the 1-D pixel array (the evaluation then crashes); afloc-compat@1's rule
            out[~nan] = -1 if mode == 0 else 0
            return out
        vals = (vals - vals.min()) / span
        if mode == 0:
            vals = vals * 2 - 1
    out[~nan] = vals
    return out


def above(heatmap, t):
    """``np.where(heatmap > t, 1, 0)`` as NumPy 1.x evaluates it: a float64 scalar against a float32 map
    is compared in float32."""
    with quiet():
        return np.where(heatmap > heatmap.dtype.type(t), 1, 0)


def iou(gtmask, premask, nan, only_pos=True):
    g, p = gtmask[~nan], premask[~nan]
    inter, union = np.logical_and(g, p), np.logical_or(g, p)
    if only_pos:
        if np.sum(p) == 0 or np.sum(g) == 0:
            return np.nan
        return np.sum(inter) / np.sum(union)
    if np.sum(union) == 0:
        return np.nan
    return np.sum(inter) / np.sum(union)


def dice(gtmask, premask, nan):
    g, p = gtmask[~nan], premask[~nan]
    if np.sum(p) == 0 or np.sum(g) == 0:
        return np.nan
    return 2 * np.sum(np.logical_and(g, p)) / (np.sum(p) + np.sum(g))


BUFSIZE = 8192  # np.getbufsize() of NumPy 1.x


def numpy1_sum(x):
    """``np.add.reduce(x)`` of a 1-D array under NumPy 1.x, in x's dtype."""
    blocks = [np.add.reduce(x[i:i + BUFSIZE]) for i in range(0, len(x), BUFSIZE)]
    total = x.dtype.type(0)
    for b in blocks:
        total = total + b
    return total


def numpy1_mean(x):
    """``x.mean()`` under NumPy 1.x: ``ret.dtype.type(ret / rcount)``, a float64 quotient of the sum."""
    with quiet():
        return x.dtype.type(np.float64(numpy1_sum(x)) / np.intp(len(x)))


def numpy1_var(x):
    """``x.var()`` under NumPy 1.x: the mean as above, squared deviations in x's dtype, summed the same way."""
    deviation = x - numpy1_mean(x)
    with quiet():
        return x.dtype.type(np.float64(numpy1_sum(deviation * deviation)) / np.intp(len(x)))


def cnr(gtmask, heatmap, nan):
    """``compute_cnr``: the map is normalised once more with the same NaN mask, A = mask == 1,
    A_ = mask == 0, population variances, signed."""
    h = norm_heatmap(heatmap, nan)
    hv, gv = h[~nan], gtmask[~nan]
    a, a_ = hv[gv == 1], hv[gv == 0]
    with quiet():
        mean_a, mean_a_, var_a, var_a_ = numpy1_mean(a), numpy1_mean(a_), numpy1_var(a), numpy1_var(a_)
        if var_a + var_a_ == 0:
            return 0
        # pow(float32 scalar, 0.5) is float64 under NumPy 1.x (all-scalar promotion); spelled out for NumPy 2
        return (mean_a - mean_a_) / pow(np.float64(var_a + var_a_), 0.5)


def prepared(maps, margin):
    out = []
    for h in maps:
        h = np.array(h, copy=True)
        if margin:
            h[margin_nan(h.shape)] = np.nan
        out.append(h)
    return out


def per_sample(maps, masks, *, margin=True, pathology=False) -> list[dict]:
    """Per-sample ``iou@t``, ``dice@t`` and ``cnr`` of ``Pipeline.test``."""
    rows = []
    for h, g in zip(prepared(maps, margin), masks):
        nan = np.isnan(h)
        hn = norm_heatmap(h, nan)
        row = {"cnr": cnr(g, hn, nan)}
        for t in thresholds(pathology):
            pred = above(hn, t)
            row[f"iou@{label(t)}"] = iou(g, pred, nan)
            row[f"dice@{label(t)}"] = dice(g, pred, nan)
        rows.append(row)
    return rows


# ============================================================================ AFLoc aggregation
def nanmean(v):
    with quiet():
        return np.nanmean(v)


def dict_mean(per_cat: dict) -> float:
    return nanmean([nanmean(v) for v in per_cat.values()])


def metric_table(per_cat: dict) -> pd.DataFrame:
    """``to_metric_df``: one row per sample, categories in order of first appearance, the value in its
    own category's column and NaN elsewhere."""
    n = sum(len(v) for v in per_cat.values())
    data = np.full((n, len(per_cat)), np.nan)
    i = 0
    for j, vals in enumerate(per_cat.values()):
        for v in vals:
            data[i, j] = v
            i += 1
    return pd.DataFrame(data, columns=list(per_cat))


def bootstrap(df: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """``bootstrap_metric``: rows drawn with ``np.random.choice`` from the global stream, column means
    (pandas, NaN skipped)."""
    reps = []
    for _ in range(n_boot):
        ids = np.random.choice(len(df), size=len(df), replace=True)
        sub = df.iloc[ids]
        reps.append({c: sub[c].mean() for c in df.columns})
    return pd.DataFrame.from_records(reps)


def ci(series: pd.Series, rounding: bool, digits: int = 3):
    """``compute_cis``: sorted replicates (NaN last), elements int(0.025 R) - 1 and int(0.975 R) - 1,
    mean of the replicates; the official rounding is NumPy's (``Series.round``, ``round(np.float64)``)."""
    s = series.sort_values()
    lower = s.iloc[int(0.05 / 2 * len(s)) - 1]
    upper = s.iloc[int((1 - 0.05 / 2) * len(s)) - 1]
    mean = s.mean()
    if rounding:
        lower, upper, mean = np.round(lower, digits), np.round(upper, digits), round(np.float64(mean), digits)
    return mean, lower, upper


def bootci(df: pd.DataFrame, n_boot: int, rounding: bool) -> dict:
    """``bootci``: per-category (mean, lower, upper), and "all" = the appended row, a pandas
    ``DataFrame.mean`` of the per-category rows (NaN skipped), rounded with ``DataFrame.round``."""
    bs = bootstrap(df, n_boot)
    records = []
    for c in bs.columns:
        mean, lower, upper = ci(bs[c], rounding)
        records.append({"name": c, "lower": lower, "mean": mean, "upper": upper})
    table = pd.DataFrame.from_records(records).sort_values(by="name")
    overall = table[["lower", "mean", "upper"]].mean(axis=0)
    if rounding:
        overall = overall.round(3)
    out = {r["name"]: (r["mean"], r["lower"], r["upper"]) for r in records}
    out["all"] = (overall["mean"], overall["lower"], overall["upper"])
    return out


def pipeline_test(maps, masks, cats, *, dataset="GENERIC", margin=True, pathology=False, n_boot=1000,
                  rounding=False):
    """``Pipeline.test`` after ``np.random.seed(0)``: the metric.csv values and every bootci result.

    Returns ``(points, cis)``: ``points[metric][category]`` for ``iou@t`` / ``dice@t`` (the
    per-threshold rows of metric.csv) and ``iou`` / ``cnr`` / ``dice`` (its "mean" row); ``cis[metric]
    [category] = (mean, lower, upper)`` for the bootci calls the official run makes, in its order
    (``iou@t`` for MS_CXR first, then the threshold averages).
    """
    np.random.seed(0)
    ts = thresholds(pathology)
    hmaps = prepared(maps, margin)
    tables = {m: [] for m in METRICS}
    macro = {m: [] for m in METRICS}
    sep = {m: [] for m in METRICS}
    cis = {}
    for t in ts:
        per = {m: {} for m in METRICS}
        for h, g, c in zip(hmaps, masks, cats):
            nan = np.isnan(h)
            hn = norm_heatmap(h, nan)
            pred = above(hn, t)
            for m, v in (("iou", iou(g, pred, nan)), ("cnr", cnr(g, hn, nan)), ("dice", dice(g, pred, nan))):
                per[m].setdefault(c, []).append(v)
        for m in METRICS:
            tables[m].append(metric_table(per[m]))
            macro[m].append(dict_mean(per[m]))
            sep[m].append({c: nanmean(v) for c, v in per[m].items()})
        if dataset == "MS_CXR":
            cis[f"iou@{label(t)}"] = bootci(tables["iou"][-1], n_boot, rounding)
    for m in METRICS:
        average = reduce(lambda x, y: x.add(y, fill_value=0), tables[m]) / len(tables[m])
        cis[m] = bootci(average, n_boot, rounding)
    points = {}
    for j, t in enumerate(ts):
        for m in ("iou", "dice"):
            points[f"{m}@{label(t)}"] = {"all": macro[m][j], **sep[m][j]}
    for m in METRICS:
        by_threshold = pd.DataFrame(sep[m])  # rows: thresholds; columns: categories
        points[m] = {"all": np.mean(macro[m]), **by_threshold.mean(axis=0).to_dict()}  # the "mean" row
    if rounding:  # res.round(3)
        points = {m: {c: np.round(v, 3) for c, v in per.items()} for m, per in points.items()}
    return points, cis


# ============================================================================ AFLoc CheXlocalize --opt_th
def confidence(h, nan):
    clip = np.clip(h[~nan], 0, 2)
    return np.max((clip - 0) / (2 - 0))


def opt_th(val, test, *, n_boot=1000, rounding=False):
    """``get_opt_th`` on val, then ``test_use_opt_th`` on val and on test, one seed-0 stream.

    ``val`` / ``test`` = (maps, masks, categories). Returns (mask thresholds, confidence thresholds,
    test points, test cis). The thresholds are read back from CSV files written with 3 decimals.
    """
    np.random.seed(0)
    v = [(h, np.isnan(h), g, c) for h, g, c in zip(prepared(val[0], True), val[1], val[2])]
    cands = np.arange(0.2, 0.8, 0.1)
    table = []
    for t in cands:
        per = {}
        for h, nan, g, c in v:
            per.setdefault(c, []).append(iou(g, above(norm_heatmap(h, nan, 1), t), nan, True))
        table.append({c: nanmean(x) for c, x in per.items()})
    table = pd.DataFrame(table)
    mask_th = {c: float(np.round(cands[i], 3)) for c, i in zip(table.columns, table.values.argmax(axis=0))}
    gates = np.arange(0.1, 0.9, 0.1)

    def predict(h, nan, c, gate):
        if confidence(h, nan) < gate:
            return np.zeros_like(h)
        return above(norm_heatmap(h, nan, 1), mask_th[c])

    table2 = []
    for t in gates:
        per = {}
        for h, nan, g, c in v:
            per.setdefault(c, []).append(iou(g, predict(h, nan, c, t), nan, only_pos=False))
        table2.append({c: nanmean(x) for c, x in per.items()})
    table2 = pd.DataFrame(table2)
    conf_th = {c: float(np.round(gates[i], 3)) for c, i in zip(table2.columns, table2.values.argmax(axis=0))}
    result = None
    for split in (v, [(h, np.isnan(h), g, c) for h, g, c in zip(prepared(test[0], True), test[1], test[2])]):
        per = {}
        for h, nan, g, c in split:
            per.setdefault(c, []).append(iou(g, predict(h, nan, c, conf_th[c]), nan, only_pos=True))
        cis = {"iou": bootci(metric_table(per), n_boot, rounding)}
        points = {"iou": {"all": dict_mean(per), **{c: nanmean(x) for c, x in per.items()}}}
        if rounding:
            points = {"iou": {c: np.round(x, 3) for c, x in points["iou"].items()}}
        result = (points, cis)
    return mask_th, conf_th, result[0], result[1]


# ============================================================================ CheXlocalize eval.py
def chexlocalize_calculate_iou(pred_mask, gt_mask, true_pos_only):
    inter, union = np.logical_and(pred_mask, gt_mask), np.logical_or(pred_mask, gt_mask)
    if true_pos_only:
        if np.sum(pred_mask) == 0 or np.sum(gt_mask) == 0:
            return np.nan
        return np.sum(inter) / np.sum(union)
    if np.sum(union) == 0:
        return np.nan
    return np.sum(inter) / np.sum(union)


def chexlocalize_ious(gt: dict, pred: dict, tasks, true_pos_only):
    """``get_ious``: rows are the CXRs of the ground-truth file (those with a positive task), sorted;
    a CXR without prediction predicts nothing; with ``true_pos_only=False`` every CXR of the
    prediction file that is not in the ground-truth file is added with an empty ground truth."""
    ious = {}
    ids = []
    for task in sorted(tasks):
        ids = sorted(gt)
        ious[task] = []
        for cxr in ids:
            g = gt[cxr][task]
            p = pred[cxr][task] if cxr in pred else np.zeros(g.shape)
            ious[task].append(chexlocalize_calculate_iou(p, g, true_pos_only))
        if not true_pos_only:
            for cxr in sorted(pred):
                if cxr not in gt:
                    p = pred[cxr][task]
                    ious[task].append(chexlocalize_calculate_iou(p, np.zeros(p.shape), true_pos_only))
                    ids.append(cxr)
    return ious, ids


def chexlocalize_evaluate(gt: dict, pred: dict, tasks, *, true_pos_only=True, n_boot=1000, seed=0):
    """``evaluate(..., metric='iou')`` after ``np.random.seed(seed)``: per task (point = column mean,
    (mean, lower, upper) of the bootstrap), unrounded; and the per-CXR table."""
    np.random.seed(seed)
    ious, ids = chexlocalize_ious(gt, pred, tasks, true_pos_only)
    df = pd.DataFrame.from_dict(ious)
    df["img_id"] = ids
    df = df.sort_values(by="img_id")
    cols = sorted(tasks)
    reps = []
    for _ in range(n_boot):
        sub = df.iloc[np.random.choice(len(df), size=len(df), replace=True)]
        reps.append({t: sub[t].mean() for t in cols})
    bs = pd.DataFrame.from_records(reps)
    out = {t: (df[t].mean(), *ci(bs[t], rounding=False)) for t in cols}
    return out, df
