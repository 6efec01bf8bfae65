"""chexlocalize@1: native resolution, Otsu / tuned thresholds, tp-only mIoU, hit rate, bootstrap over CXRs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.protocols.base import resolve_protocol
from benchmark.protocols.chexlocalize import APPLY_THRESHOLDS, chexlocalize_scores
from benchmark.sample import Sample

TASKS = ["Cardiomegaly", "Edema", "Lung Lesion"]


def _blob_map(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))


def test_record_scores_at_native_resolution_with_bilinear_upsampling():
    import torch
    import torch.nn.functional as F

    s = Sample(sample_id="chexlocalize/p1_s1_v1/Edema", image_path="x.jpg", split="test", category="Edema",
               image_size=(100, 130), boxes=[[40, 30, 30, 30]])
    grid = _blob_map(10, 10, 4.5, 5, 1.5).astype(np.float32)
    rec = resolve_protocol("chexlocalize@1").grounding_record(grid, s, (100, 130), "resize:320x320")
    up = F.interpolate(torch.tensor(grid)[None, None], size=(100, 130), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    gt = np.zeros((100, 130), np.uint8)
    gt[30:60, 40:70] = 1
    ref = chexlocalize_scores(up, gt)
    assert rec == ref
    # hit: first argmax of the upsampled map
    r, c = np.unravel_index(np.argmax(up), up.shape)
    assert rec["hit"] == float(gt[r, c] == 1)
    assert rec["gt_empty"] == 0.0 and 0 < rec["otsu_iou_tp"] <= 1


def test_tp_only_iou_and_empty_ground_truth():
    m = _blob_map(50, 50, 25, 25, 5)
    rec = chexlocalize_scores(m, np.zeros((50, 50), np.uint8))
    assert np.isnan(rec["iou_tp@0.5"]) and rec["iou_all@0.5"] == 0.0 and np.isnan(rec["hit"])
    assert rec["gt_empty"] == 1.0


def _records(rng, n_img=40, shift=0.0):
    rows = []
    for i in range(n_img):
        for t in TASKS:
            pos = rng.random() < 0.5
            gt = np.zeros((40, 40), np.uint8)
            if pos:
                gt[10:25, 12:30] = 1
            m = _blob_map(40, 40, 17 + rng.normal(0, 3) + shift, 21 + rng.normal(0, 3), 6)
            rec = chexlocalize_scores(m + rng.normal(0, 0.05, m.shape), gt)
            rec.update(sample_id=f"chexlocalize/img{i}/{t}", image_id=f"img{i}", category=t, label=int(pos))
            rows.append(rec)
    return pd.DataFrame(rows)


def test_tune_picks_the_best_threshold_per_task_rounded():
    rng = np.random.default_rng(0)
    val = _records(rng)
    params = resolve_protocol("chexlocalize@1").tune(val)
    for t in TASKS:
        sel = val["category"] == t
        mious = [np.nanmean(val.loc[sel, f"tune_iou@{a}"]) for a in APPLY_THRESHOLDS]
        assert params["thresholds"][t] == APPLY_THRESHOLDS[int(np.argmax(mious))]


def test_probability_cutoffs_when_records_carry_prob():
    rng = np.random.default_rng(1)
    val = _records(rng)
    val["prob"] = np.where(val["label"] == 1, 0.8, 0.05)  # a perfect classifier
    p = resolve_protocol("chexlocalize@1").tune(val)
    assert all(0.0 < c <= 0.8 for c in p["prob_cutoffs"].values())
    assert p["prob_cutoffs"]["Lung Lesion"] >= 0.1  # CheXlocalize starts Lung Lesion at 0.1


def test_summary_bootstrap_equals_reference_over_cxr_rows():
    rng = np.random.default_rng(2)
    test = _records(rng, n_img=30)
    params = {"thresholds": {t: 0.5 for t in TASKS}}
    rows = resolve_protocol("chexlocalize@1").summarize(test, "grounding", n_boot=300, seed=0, unit="patient",
                                                        params=params)
    got = {(r["metric"], r["category"]): r for r in rows}
    # reference: per-CXR table (CXRs with at least one positive task), sorted ids, seed-0 row resampling
    pos = test.groupby("image_id")["gt_empty"].transform(lambda x: (x == 0).any())
    t = test[pos].pivot(index="image_id", columns="category", values="iou_tp@0.5").sort_index()
    np.random.seed(0)
    reps = []
    for _ in range(300):
        ids = np.random.choice(len(t), size=len(t), replace=True)
        reps.append(t.iloc[ids].mean())
    reps = pd.DataFrame(reps)
    for task in TASKS:
        srt = reps[task].sort_values()
        r = got[("iou", task)]
        assert abs(r["lo"] - srt.iloc[int(0.025 * 300) - 1]) < 1e-12
        assert abs(r["hi"] - srt.iloc[int(0.975 * 300) - 1]) < 1e-12
        assert abs(r["boot_mean"] - srt.mean()) < 1e-12
        assert abs(r["point"] - t[task].mean()) < 1e-12
    assert ("hit", "all") in got


def test_otsu_is_the_default_and_fixed_threshold_must_be_on_the_grid():
    rng = np.random.default_rng(3)
    test = _records(rng, n_img=10)
    proto = resolve_protocol("chexlocalize@1")
    rows = proto.summarize(test, "grounding", n_boot=20, seed=0, unit="image")
    otsu = {(r["metric"], r["category"]): r["point"] for r in rows}
    assert otsu[("iou", "Edema")] == pytest.approx(np.nanmean(test.loc[test.category == "Edema", "otsu_iou_tp"]))
    with pytest.raises(ValueError):
        proto.summarize(test, "grounding", n_boot=5, seed=0, unit="image", params={"threshold": 0.55})


def test_without_replicates_points_stand_and_intervals_are_empty():
    rng = np.random.default_rng(4)
    test = _records(rng, n_img=12)
    params = {"thresholds": {t: 0.5 for t in TASKS}}
    proto = resolve_protocol("chexlocalize@1")
    none = proto.summarize(test, "grounding", n_boot=0, seed=0, unit="image", params=params)
    boot = proto.summarize(test, "grounding", n_boot=20, seed=0, unit="image", params=params)
    assert [(r["metric"], r["category"], r["point"], r["n"]) for r in none] == \
        [(r["metric"], r["category"], r["point"], r["n"]) for r in boot]
    assert all(np.isnan(r[k]) for r in none for k in ("boot_mean", "lo", "hi"))
