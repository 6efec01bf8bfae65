"""afloc-compat@1 against a literal re-statement of the official AFLoc evaluation.

The reference below is written from the facts in the AFLoc reference note (per-sample
loops, pandas frames resampled row by row from the global ``np.random.seed(0)`` stream,
CI at sorted indices 24 and 974). It is deliberately naive; the protocol must agree with
it to 1e-9, bootstrap CIs included.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import official_reference
import pandas as pd
import pytest

from benchmark.cli.score import score_file
from benchmark.geometry.afloc import afloc_margin_valid
from benchmark.metrics import AFLOC_THRESHOLDS
from benchmark.protocols.afloc_compat import AflocCompat, afloc_chexlocalize_scores, afloc_scores
from benchmark.protocols.base import resolve_protocol
from benchmark.sample import Sample


# ============================================================================ reference
def ref_normalize(h, nan, zero_one=False):
    out = h.copy()
    vals = out[~nan]
    vals = (vals - vals.min()) / (vals.max() - vals.min())
    if not zero_one:
        vals = vals * 2 - 1
    out[~nan] = vals
    return out


def ref_above(h, t):
    # The official environment (NumPy 1.x) compares a float32 map with a float64 scalar in float32.
    return np.where(h > h.dtype.type(t), 1, 0)


def ref_iou(gt, pred, nan, only_pos=True):
    g, p = gt[~nan], pred[~nan]
    inter, union = np.logical_and(g, p).sum(), np.logical_or(g, p).sum()
    if only_pos:
        return np.nan if (p.sum() == 0 or g.sum() == 0) else inter / union
    return np.nan if union == 0 else inter / union


def ref_dice(gt, pred, nan):
    g, p = gt[~nan], pred[~nan]
    if p.sum() == 0 or g.sum() == 0:
        return np.nan
    return 2 * np.logical_and(g, p).sum() / (p.sum() + g.sum())


def ref_cnr(gt, heat, nan):
    # compute_cnr with its NumPy 1.x arithmetic (blockwise float32 moments, float64 last step)
    return official_reference.cnr(gt, heat, nan)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a):
        self._w.__exit__(*a)


def ref_table(per_cat: dict) -> pd.DataFrame:
    """One row per sample, grouped by category (first-appearance order), value in its column."""
    n = sum(len(v) for v in per_cat.values())
    data = np.full((n, len(per_cat)), np.nan)
    i = 0
    for j, vals in enumerate(per_cat.values()):
        for v in vals:
            data[i, j] = v
            i += 1
    return pd.DataFrame(data, columns=list(per_cat))


def ref_bootstrap(df: pd.DataFrame, reps: int = 1000) -> pd.DataFrame:
    rows = []
    for _ in range(reps):
        ids = np.random.choice(len(df), size=len(df), replace=True)
        sub = df.iloc[ids]
        rows.append({c: sub[c].mean() for c in df.columns})
    return pd.DataFrame(rows)


def ref_ci(series: pd.Series):
    s = series.sort_values()
    return s.mean(), s.iloc[int(0.025 * len(s)) - 1], s.iloc[int(0.975 * len(s)) - 1]


def ref_summary(bs: pd.DataFrame) -> dict:
    out = {c: ref_ci(bs[c]) for c in bs.columns}
    names = sorted(out)
    # the appended row: DataFrame.mean over the categories, NaN skipped
    out["all"] = tuple(pd.DataFrame([out[n] for n in names]).mean(axis=0))
    return out


def ref_nanmean(v):
    with _quiet():
        return np.nanmean(v)


def reference_fixed(heatmaps, masks, cats, dataset="GENERIC", margin=True):
    np.random.seed(0)
    thresholds = list(np.arange(0.1, 0.6, 0.1))
    frame = afloc_margin_valid(heatmaps.shape[1:]) if margin else np.ones(heatmaps.shape[1:], bool)
    tables = {"iou": [], "cnr": [], "dice": []}
    macro = {"iou": [], "cnr": [], "dice": []}
    percat = {"iou": [], "cnr": [], "dice": []}
    boots = {}
    for t in thresholds:
        per = {"iou": {}, "cnr": {}, "dice": {}}
        for i in range(len(heatmaps)):
            h = heatmaps[i].copy()
            h[~frame] = np.nan
            nan = np.isnan(h)
            hn = ref_normalize(h, nan)
            pred = ref_above(hn, t)
            vals = {"iou": ref_iou(masks[i], pred, nan), "cnr": ref_cnr(masks[i], hn, nan),
                    "dice": ref_dice(masks[i], pred, nan)}
            for m, v in vals.items():
                per[m].setdefault(cats[i], []).append(v)
        for m in per:
            tables[m].append(ref_table(per[m]))
            cm = {c: ref_nanmean(v) for c, v in per[m].items()}
            percat[m].append(cm)
            macro[m].append(ref_nanmean(list(cm.values())))
        if dataset == "MS_CXR":
            boots[f"iou@{round(t, 1)}"] = ref_summary(ref_bootstrap(tables["iou"][-1]))
    for m in ("iou", "cnr", "dice"):
        avg = reduce(lambda x, y: x.add(y, fill_value=0), tables[m]) / len(tables[m])
        boots[m] = ref_summary(ref_bootstrap(avg))
    points = {}
    for m in ("iou", "cnr", "dice"):
        # the "mean" row: a pandas column mean over the thresholds (NaN skipped)
        points[m] = pd.DataFrame(percat[m]).mean(axis=0).to_dict()
        points[m]["all"] = np.mean(macro[m])
    for j, t in enumerate(thresholds):
        points[f"iou@{round(t, 1)}"] = {**percat["iou"][j], "all": macro["iou"][j]}
    return points, boots


# ============================================================================ fixtures
def random_inputs(n=150, size=64, seed=0, dtype=np.float32):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    maps = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), 3) for _ in range(n)]).astype(dtype)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 29 == 5:
            continue  # empty ground truth: NaN IoU/Dice/CNR rows
        for _ in range(int(rng.integers(1, 3))):  # two boxes may overlap (value 2)
            x, y = rng.integers(0, size - 12, 2)
            w, h = rng.integers(4, size // 2, 2)
            masks[i, y:y + h, x:x + w] += 1
    cats = np.array(rng.choice(["Edema", "Atelectasis", "Pneumothorax"], n, p=[0.5, 0.3, 0.2]))
    return maps, masks, cats


def _close(a, b, tol=1e-9):
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return a is None or (isinstance(a, float) and math.isnan(a))
    return a is not None and abs(a - b) <= tol


@pytest.mark.parametrize("dtype,dataset", [(np.float32, "MS_CXR"), (np.float64, "RSNA_GROUNDING")])
def test_score_equals_reference_to_1e9_cis_included(tmp_path, dtype, dataset):
    maps, masks, cats = random_inputs(dtype=dtype, seed=1 if dtype == np.float32 else 2)
    path = tmp_path / "preds.npz"
    np.savez(path, heatmaps=maps, masks=masks, categories=cats)
    got = score_file(str(path), "afloc-compat@1", official_dataset=dataset, chunk=40)["metrics"]
    points, boots = reference_fixed(maps, masks, cats, dataset)
    checked = 0
    for metric, per in points.items():
        for cat, p in per.items():
            assert _close(got[metric][cat]["point"], float(p)), (metric, cat, got[metric][cat]["point"], p)
            checked += 1
    for metric, per in boots.items():
        for cat, (mean, lo, hi) in per.items():
            g = got[metric][cat]
            assert _close(g["boot_mean"], float(mean)) and _close(g["lo"], float(lo)) and _close(g["hi"], float(hi)), \
                (metric, cat, g, (mean, lo, hi))
            checked += 3
    assert checked > 60


def test_per_threshold_bootstraps_come_first_only_for_ms_cxr(tmp_path):
    maps, masks, cats = random_inputs(n=60, seed=4)
    path = tmp_path / "p.npz"
    np.savez(path, heatmaps=maps, masks=masks, categories=cats)
    ms = score_file(str(path), "afloc-compat@1", official_dataset="MS_CXR", n_boot=200)["metrics"]
    gen = score_file(str(path), "afloc-compat@1", official_dataset="GENERIC", n_boot=200)["metrics"]
    assert ms["iou"]["all"]["point"] == gen["iou"]["all"]["point"]
    assert ms["iou"]["all"]["lo"] != gen["iou"]["all"]["lo"]  # different position in the seed-0 stream


# ============================================================================ grounding_record
def test_grounding_record_follows_the_official_heatmap_and_mask_pipeline():
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from benchmark.geometry.afloc import afloc_box2mask, afloc_box_mapping
    rng = np.random.default_rng(7)
    grid = rng.standard_normal((19, 19)).astype(np.float32)
    boxes = [[100.5, 220.2, 300.0, 250.7], [250.0, 300.0, 200.0, 200.0]]
    s = Sample(sample_id="ms_cxr/img1/phrase", image_path="x.jpg", split="test", category="Pneumonia",
               image_size=(1000, 800), boxes=boxes, meta={"afloc_dataset": "MS_CXR"})
    rec = AflocCompat().grounding_record(grid, s, (1000, 800), "letterbox:224")
    # reference: gaussian on the grid, torch bilinear to 224, margin, AFLoc box masks summed
    sm = ndimage.gaussian_filter(grid, sigma=(1.5, 1.5), order=0)
    h = F.interpolate(torch.tensor(sm).reshape(1, 1, 19, 19), size=(224, 224), mode="bilinear",
                      align_corners=False)[0, 0].numpy()
    h[~afloc_margin_valid((224, 224))] = np.nan
    gt = sum(afloc_box2mask(afloc_box_mapping(b, 800, 1000, 224), 224, 224) for b in boxes)
    nan = np.isnan(h)
    hn = ref_normalize(h, nan)
    for t in AFLOC_THRESHOLDS:
        pred = ref_above(hn, t)
        lab = str(round(t, 1))
        assert _close(rec[f"iou@{lab}"], float(ref_iou(gt, pred, nan)), 0)
        assert _close(rec[f"dice@{lab}"], float(ref_dice(gt, pred, nan)), 0)
    assert rec["cnr"] == float(ref_cnr(gt, hn, nan))
    assert rec["afloc_dataset"] == "MS_CXR" and rec["modality"] == "chest_xray"


@pytest.mark.parametrize("geometry", ["letterbox:224", "resize_crop:512:448", "resize:224"])
def test_grounding_records_of_many_maps_equal_one_map_at_a_time(geometry):
    """The batched path (maps of one size moved into AFLoc's frame together, metrics over chunks on
    one thread or several) gives every sample the values ``grounding_record`` gives it alone,
    pathology and CheXlocalize rows included."""
    rng = np.random.default_rng(3)
    samples, grids, sizes = [], [], []
    for k in range(23):
        size = [(1000, 800), (512, 512), (700, 900)][k % 3]
        chex = k % 4 == 0
        meta = {"afloc_dataset": "CHEXLOCALIZE"} if chex else {"afloc_dataset": "MS_CXR"}
        if k % 7 == 3:
            meta = {"afloc_dataset": "SICAPV2_GROUNDING", "modality": "pathology"}
        x, y = rng.uniform(0, size[1] / 2), rng.uniform(0, size[0] / 2)
        samples.append(Sample(sample_id=f"s{k}", image_path=f"x{k}.jpg", split="test", category="Pneumonia",
                              image_size=size, boxes=[[x, y, size[1] / 3, size[0] / 4]], meta=meta))
        grids.append(rng.standard_normal((14, 14)).astype(np.float32) * (k % 5 + 1))
        sizes.append(size)
    proto = AflocCompat()
    together = proto.grounding_records(grids, samples, sizes, geometry, chunk=4, threads=3)
    assert repr(together) == repr(proto.grounding_records(grids, samples, sizes, geometry, chunk=4, threads=1))
    for rec, grid, s, size in zip(together, grids, samples, sizes):
        alone = AflocCompat().grounding_record(grid, s, size, geometry)
        assert rec.keys() == alone.keys(), s.sample_id
        for key, v in alone.items():
            assert v == rec[key] or (isinstance(v, float) and math.isnan(v) and math.isnan(rec[key])), (key, s)


def test_pathology_has_no_margin_and_negative_thresholds():
    s = Sample(sample_id="sicapv2/a/G3", image_path="x.png", split="test", category="G3", image_size=(64, 64),
               boxes=[[10, 10, 30, 30]], meta={"afloc_dataset": "SICAPV2_GROUNDING", "modality": "pathology"})
    rec = AflocCompat().grounding_record(np.random.default_rng(0).random((14, 14)), s, (64, 64), "resize:224x224")
    assert "iou@-1.0" in rec and "iou@-0.1" in rec and "iou@0.1" not in rec
    assert rec["modality"] == "pathology"


def test_constant_grid_gets_the_documented_answer():
    s = Sample(sample_id="rsna_pneumonia/a/Pneumonia", image_path="x.png", split="test", category="Pneumonia",
               image_size=(512, 512), boxes=[[100, 100, 100, 100]])
    rec = AflocCompat().grounding_record(np.full((19, 19), 3.0, np.float32), s, (512, 512), "letterbox:224")
    assert math.isnan(rec["iou@0.1"]) and math.isnan(rec["dice@0.5"]) and rec["cnr"] == 0.0
    assert rec["constant_map"] == 1.0


# ============================================================================ CheXlocalize --opt_th
def reference_opt_th(val, test):
    """get_opt_th on val, then test_use_opt_th on val and on test (seed-0 stream)."""
    np.random.seed(0)

    def prepared(split):
        maps, masks, cats = split
        frame = afloc_margin_valid(maps.shape[1:])
        out = []
        for i in range(len(maps)):
            h = maps[i].copy()
            h[~frame] = np.nan
            out.append((h, np.isnan(h), masks[i], cats[i]))
        return out

    v = prepared(val)
    table = {}
    for t in np.arange(0.2, 0.8, 0.1):
        per = {}
        for h, nan, g, c in v:
            per.setdefault(c, []).append(ref_iou(g, ref_above(ref_normalize(h, nan, True), t), nan, True))
        table[t] = {c: ref_nanmean(x) for c, x in per.items()}
    cats = list(next(iter(table.values())))
    ts = list(table)
    mask_th = {c: round(ts[int(np.argmax([table[t][c] for t in ts]))], 3) for c in cats}

    def confidence(h, nan):
        clip = np.clip(h[~nan], 0, 2)
        return np.max((clip - 0) / (2 - 0))

    table2 = {}
    for t in np.arange(0.1, 0.9, 0.1):
        per = {}
        for h, nan, g, c in v:
            if confidence(h, nan) < t:
                pred = np.zeros_like(h)
            else:
                pred = ref_above(ref_normalize(h, nan, True), mask_th[c])
            per.setdefault(c, []).append(ref_iou(g, pred, nan, only_pos=False))
        table2[t] = {c: ref_nanmean(x) for c, x in per.items()}
    ts2 = list(table2)
    conf_th = {c: round(ts2[int(np.argmax([table2[t][c] for t in ts2]))], 3) for c in cats}

    results = {}
    for name, split in (("val", v), ("test", prepared(test))):
        per = {}
        for h, nan, g, c in split:
            if confidence(h, nan) < conf_th[c]:
                pred = np.zeros_like(h)
            else:
                pred = ref_above(ref_normalize(h, nan, True), mask_th[c])
            per.setdefault(c, []).append(ref_iou(g, pred, nan, only_pos=True))
        summary = ref_summary(ref_bootstrap(ref_table(per)))
        points = {c: ref_nanmean(x) for c, x in per.items()}
        points["all"] = ref_nanmean(list(points.values()))
        results[name] = (points, summary)
    return mask_th, conf_th, results["test"]


def _records(split, dataset="CHEXLOCALIZE"):
    maps, masks, cats = split
    m = maps.copy()
    m[:, ~afloc_margin_valid(maps.shape[1:])] = np.nan
    vals = afloc_scores(m, masks, AFLOC_THRESHOLDS)
    vals.update(afloc_chexlocalize_scores(m, masks))
    df = pd.DataFrame(vals)
    df.insert(0, "category", cats)
    df.insert(0, "sample_id", [f"chexlocalize/{i}/{c}" for i, c in enumerate(cats)])
    df["image_id"] = df["sample_id"]
    df["label"] = (masks.reshape(len(masks), -1).sum(1) > 0).astype(int)
    df["afloc_dataset"] = dataset
    return df


def test_opt_th_mode_equals_reference():
    val = random_inputs(n=70, seed=11)
    test = random_inputs(n=50, seed=12)
    # raw maps on the scale the confidence gate reads (max(clip(raw, 0, 2)) / 2)
    val = (val[0] * 4 + 0.8, val[1], val[2])
    test = (test[0] * 4 + 0.8, test[1], test[2])
    mask_th, conf_th, (points, summary) = reference_opt_th(val, test)
    proto = resolve_protocol("afloc-compat@1")
    assert proto.tuning_split == "val"
    params = proto.tune(_records(val))
    assert params["mask_threshold"] == mask_th and params["confidence_threshold"] == conf_th
    rows = proto.summarize(_records(test), "grounding", n_boot=1000, seed=0, unit="image", params=params)
    got = {(r["metric"], r["category"]): r for r in rows}
    for cat, (mean, lo, hi) in summary.items():
        r = got[("iou", cat)]
        assert _close(r["point"], float(points[cat])) and _close(r["boot_mean"], float(mean))
        assert _close(r["lo"], float(lo)) and _close(r["hi"], float(hi)), (cat, r, (mean, lo, hi))


def test_opt_th_mode_needs_tuned_params():
    test = random_inputs(n=20, seed=3)
    with pytest.raises(ValueError, match="val"):
        AflocCompat().summarize(_records(test), "grounding", n_boot=10, seed=0, unit="image")
    assert AflocCompat().tune(_records(test, dataset="RSNA_GROUNDING")) == {}


# ============================================================================ classification
def test_classification_bootstrap_equals_sklearn_resample_reference():
    from sklearn.metrics import roc_auc_score
    from sklearn.utils import resample

    rng = np.random.default_rng(0)
    n_img, cats = 80, ["Pneumonia", "Effusion", "Nodule"]
    y = (rng.random((n_img, 3)) < 0.35).astype(int)
    p = np.clip(y * 0.3 + rng.random((n_img, 3)) * 0.7, 0, 1)
    recs = pd.DataFrame([{"sample_id": f"d/{i}/{c}", "image_id": f"img{i}", "category": c, "label": y[i, j],
                          "score": p[i, j], "modality": "chest_xray"}
                         for i in range(n_img) for j, c in enumerate(cats)])
    n_boot = 250  # the official 1,000 behave the same; fewer keep the sklearn loop fast
    rows = AflocCompat().summarize(recs, "classification", n_boot=n_boot, seed=0, unit="image")
    got = {(r["metric"], r["category"]): r for r in rows}
    idx = np.arange(n_img)
    boot = []
    for i in range(n_boot):
        s = resample(idx, replace=True, random_state=i)
        aucs = {}
        for j, c in enumerate(cats):
            try:
                aucs[c] = roc_auc_score(y[s, j], p[s, j])
            except ValueError:
                aucs[c] = np.nan
        aucs["all"] = np.mean(list(aucs.values()))
        boot.append(aucs)
    bs = pd.DataFrame(boot)
    for c in cats + ["all"]:
        mean, lo, hi = ref_ci(bs[c])
        r = got[("auroc", c)]
        assert abs(r["boot_mean"] - mean) < 1e-9 and abs(r["lo"] - lo) < 1e-9 and abs(r["hi"] - hi) < 1e-9
    assert abs(got[("auroc", "Pneumonia")]["point"] - roc_auc_score(y[:, 0], p[:, 0])) < 1e-12


def test_pathology_classification_is_balanced_accuracy_of_argmax():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    n, cats = 60, ["NC", "G3", "G4", "G5"]
    true = rng.integers(0, 4, n)
    p = rng.random((n, 4))
    recs = pd.DataFrame([{"sample_id": f"s/{i}/{c}", "image_id": f"i{i}", "category": c, "label": int(true[i] == j),
                          "score": p[i, j], "modality": "pathology"} for i in range(n) for j, c in enumerate(cats)])
    rows = AflocCompat().summarize(recs, "classification", n_boot=50, seed=0, unit="image")
    assert rows[0]["metric"] == "balanced_accuracy"
    assert abs(rows[0]["point"] - balanced_accuracy_score(true, p.argmax(1))) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_point_estimates_do_not_depend_on_sample_order(tmp_path, dtype):
    maps, masks, cats = random_inputs(n=40, seed=9, dtype=dtype)
    perm = np.random.default_rng(0).permutation(40)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, heatmaps=maps, masks=masks, categories=cats)
    np.savez(b, heatmaps=maps[perm], masks=masks[perm], categories=cats[perm])
    ra = score_file(str(a), "afloc-compat@1", n_boot=20)["metrics"]
    rb = score_file(str(b), "afloc-compat@1", n_boot=20)["metrics"]
    for m in ra:
        for c in ra[m]:
            pa, pb = ra[m][c]["point"], rb[m][c]["point"]
            assert (pa is None and pb is None) or abs(pa - pb) < 1e-12


# ============================================================================ n_boot = 0
def _points_only(rows_none, rows_boot):
    """Same rows and points as with replicates; every interval field empty (NaN)."""
    assert [(r["metric"], r["category"]) for r in rows_none] == [(r["metric"], r["category"]) for r in rows_boot]
    for a, b in zip(rows_none, rows_boot):
        assert _close(a["point"], b["point"], 0.0) and a["n"] == b["n"], (a, b)
        assert all(math.isnan(a[k]) for k in ("boot_mean", "lo", "hi")), a


@pytest.mark.parametrize("dataset", ["MS_CXR", "RSNA_GROUNDING"])
def test_without_replicates_points_stand_and_intervals_are_empty(dataset):
    maps, masks, cats = random_inputs(n=40, seed=13)
    rec = _records((maps, masks, cats), dataset=dataset)
    proto = AflocCompat()
    _points_only(proto.summarize(rec, "grounding", n_boot=0, seed=0, unit="image"),
                 proto.summarize(rec, "grounding", n_boot=20, seed=0, unit="image"))


def test_without_replicates_tuned_and_classification_summaries_work():
    val = random_inputs(n=40, seed=14)
    test = random_inputs(n=30, seed=15)
    val, test = (val[0] * 4 + 0.8, val[1], val[2]), (test[0] * 4 + 0.8, test[1], test[2])
    proto = resolve_protocol("afloc-compat@1")
    params = proto.tune(_records(val))
    _points_only(proto.summarize(_records(test), "grounding", n_boot=0, seed=0, unit="image", params=params),
                 proto.summarize(_records(test), "grounding", n_boot=20, seed=0, unit="image", params=params))
    rng = np.random.default_rng(3)
    for modality, cats in (("chest_xray", ["Pneumonia", "Effusion"]), ("pathology", ["NC", "G3", "G4"])):
        y = rng.integers(0, 2, (30, len(cats)))
        recs = pd.DataFrame([{"sample_id": f"d/{i}/{c}", "image_id": f"i{i}", "category": c, "label": y[i, j],
                              "score": rng.random(), "modality": modality}
                             for i in range(30) for j, c in enumerate(cats)])
        _points_only(proto.summarize(recs, "classification", n_boot=0, seed=0, unit="image"),
                     proto.summarize(recs, "classification", n_boot=20, seed=0, unit="image"))
