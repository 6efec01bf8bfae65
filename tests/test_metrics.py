"""Metrics: hand-computed cases, NaN rules, AFLoc quirks, classification, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from benchmark.metrics import (
    AFLOC_THRESHOLDS,
    auroc,
    auroc_weighted,
    balanced_accuracy,
    balanced_accuracy_weighted,
    box_accuracy,
    box_iou,
    cnr,
    cnr_single,
    dice,
    dice_from_counts,
    iou,
    iou_from_counts,
    minmax_normalize,
    otsu_segmentation,
    pointing_hit,
    predicted_box,
    seg_dice,
    threshold_counts,
    threshold_label,
)
from benchmark.protocols.afloc_compat import afloc_scores
from benchmark.protocols.canonical import canonical_scores
from benchmark.registry import metrics as metric_registry


def _pop_cnr(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    s = a.var() + b.var()
    return 0.0 if s == 0 else (a.mean() - b.mean()) / math.sqrt(s)


# ----------------------------------------------------------------------------- normalisation, margin
def test_nan_margin_is_excluded_from_normalisation_and_counts():
    h = np.full((6, 6), 1000.0)
    h[1:5, 1:5] = np.arange(16).reshape(4, 4)
    valid = np.zeros((6, 6), bool)
    valid[1:5, 1:5] = True
    gt = np.zeros((6, 6), np.uint8)
    gt[4, 1:5] = 1  # inner bottom row: values 12..15
    gt[0, :] = 1  # lesion in the margin must be ignored
    n = minmax_normalize(h, valid)[0]
    assert np.isnan(n[0]).all() and n[1, 1] == -1 and n[4, 4] == 1
    # (v/15)*2-1 > 0.5  <=>  v > 11.25: exactly the bottom inner row
    c = threshold_counts(n, gt, [0.5])
    assert (c["pred"][0, 0], c["inter"][0, 0], c["gt_count"][0]) == (4, 4, 4)
    assert iou_from_counts(c)[0, 0] == 1.0
    # the same with NaN encoding instead of a valid mask
    h2 = h.copy()
    h2[~valid] = np.nan
    np.testing.assert_array_equal(minmax_normalize(h2)[0], n)


def test_thresholds_are_the_official_float_values():
    assert AFLOC_THRESHOLDS[2] == 0.30000000000000004 and len(AFLOC_THRESHOLDS) == 5
    assert threshold_label(AFLOC_THRESHOLDS[2]) == "0.3" and threshold_label(-1) == "-1.0"


def test_threshold_is_cast_to_the_map_dtype_like_numpy_1():
    m = np.array([[np.float32(0.3), np.float32(0.2)]], dtype=np.float32)
    gt = np.ones((1, 2), np.uint8)
    # float32(0.30000000000000004) == float32(0.3): the pixel is not above the threshold
    assert threshold_counts(m, gt, [0.30000000000000004])["pred"][0, 0] == 0
    # compared in float64 (NumPy 2 semantics for a float64 map), the same value is above it
    assert threshold_counts(m.astype(np.float64), gt, [0.30000000000000004])["pred"][0, 0] == 1


# ----------------------------------------------------------------------------- empty cases
def test_empty_prediction_rules():
    gt = np.zeros((4, 4), np.uint8)
    gt[1, 1] = 1
    none = np.zeros((4, 4))
    assert math.isnan(iou(none, gt, rule="tp"))
    assert iou(none, gt, rule="gt") == 0.0
    assert iou(none, gt, rule="union") == 0.0
    assert math.isnan(dice(none, gt, rule="tp")) and dice(none, gt, rule="gt") == 0.0


def test_empty_ground_truth_rules():
    gt = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4))
    pred[0, 0] = 1
    assert math.isnan(iou(pred, gt, rule="tp")) and math.isnan(iou(pred, gt, rule="gt"))
    assert iou(pred, gt, rule="union") == 0.0
    assert math.isnan(iou(np.zeros((4, 4)), gt, rule="union"))
    assert math.isnan(cnr_single(np.random.default_rng(0).random((4, 4)), gt))


# ----------------------------------------------------------------------------- overlapping boxes
def test_overlapping_boxes_value_two_rules():
    gt = np.zeros((4, 4), np.uint8)
    gt[0:2, 0:2] += 1
    gt[0:2, 1:3] += 1  # column 1 holds 2
    pred = (gt > 0).astype(float)
    assert iou(pred, gt) == 1.0  # IoU uses logical and/or: unaffected
    assert dice(pred, gt) == pytest.approx(2 * 6 / (6 + 8))  # raw sum counts the 2s twice
    assert dice(pred, gt, raw_gt_sum=False) == 1.0
    h = np.array([[4, 9, 5, 0], [3, 8, 4, 1], [0, 2, 1, 0], [1, 0, 2, 1]], float)
    a_in = [4, 5, 3, 4]  # mask == 1
    a_out = [0, 1, 0, 2, 1, 0, 1, 0, 2, 1]  # mask == 0; the 2s (9, 8) are in neither set
    assert cnr_single(h, gt) == pytest.approx(_pop_cnr(a_in, a_out), abs=1e-12)
    a_in2 = [4, 9, 5, 3, 8, 4]
    assert cnr_single(h, gt, inside="nonzero") == pytest.approx(_pop_cnr(a_in2, a_out), abs=1e-12)


def test_cnr_is_signed_and_zero_without_variance():
    gt = np.zeros((3, 3), np.uint8)
    gt[1, 1] = 1
    h = np.zeros((3, 3))
    h[1, 1] = 1.0  # inside constant, outside constant
    assert cnr_single(h, gt) == 0.0  # AFLoc: both variances 0 -> 0 (not inf)
    h2 = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1.0]])
    assert cnr_single(h2, gt) < 0


# ----------------------------------------------------------------------------- constant map, single pixel
def test_constant_heatmap_defined_answer():
    gt = np.zeros((1, 224, 224), np.uint8)
    gt[0, 50:70, 50:70] = 1
    flat = np.full((1, 224, 224), 0.7, np.float32)
    valid = np.zeros((224, 224), bool)
    valid[14:210, 14:210] = True
    flat[:, ~valid] = np.nan
    rec = afloc_scores(flat, gt, AFLOC_THRESHOLDS)
    assert all(math.isnan(rec[f"iou@{t}"][0]) for t in ("0.1", "0.3", "0.5"))  # empty prediction
    assert all(math.isnan(rec[f"dice@{t}"][0]) for t in ("0.1", "0.5"))
    assert rec["cnr"][0] == 0.0 and rec["constant_map"][0] == 1.0
    can = canonical_scores(flat, gt, (0.1, 0.5))
    assert can["iou"][0] == 0.0 and can["dice"][0] == 0.0
    assert can["hit"][0] == pytest.approx(400 / 196 ** 2)  # ties: the lesion's share of the valid area


def test_single_pixel_lesion():
    gt = np.zeros((1, 20, 20), np.uint8)
    gt[0, 7, 9] = 1
    h = np.zeros((1, 20, 20))
    h[0, 7, 9] = 5.0
    rec = afloc_scores(h, gt, AFLOC_THRESHOLDS)
    assert rec["iou@0.1"][0] == 1.0 and rec["dice@0.5"][0] == 1.0 and rec["hit"][0] == 1.0
    assert rec["cnr"][0] == 0.0  # one pixel inside, uniform outside: both variances are 0


# ----------------------------------------------------------------------------- pointing game, boxes
def test_pointing_game_first_argmax_and_ties():
    gt = np.zeros((1, 3, 3), np.uint8)
    gt[0, 2, 2] = 1
    h = np.zeros((1, 3, 3))
    h[0, 0, 0] = h[0, 2, 2] = 1.0  # two maxima; the first (row-major) is outside
    assert pointing_hit(h, gt)[0] == 0.0
    assert pointing_hit(h, gt, rule="ties")[0] == 0.5
    assert math.isnan(pointing_hit(h, np.zeros_like(gt))[0])
    hn = h.copy()
    hn[0, 0, 0] = np.nan  # NaN pixels are never pointed at
    assert pointing_hit(hn, gt)[0] == 1.0


def test_box_accuracy_hand_case():
    m = np.zeros((20, 20))
    m[2:6, 3:9] = 1.0  # predicted component: x 3..8, y 2..5 -> box [3, 2, 6, 4]
    m[15, 15] = 1.0  # a smaller component is ignored
    assert predicted_box(m > 0.5) == [3.0, 2.0, 6.0, 4.0]
    gt = [[3, 2, 6, 8]]  # IoU = 24 / 48 = 0.5
    assert box_iou([3, 2, 6, 4], gt[0]) == 0.5
    np.testing.assert_array_equal(box_accuracy(m, gt), [1, 1, 1, 1, 1, 0, 0])
    assert np.isnan(box_accuracy(m, [])).all()


# ----------------------------------------------------------------------------- classification
def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(auroc(np.ones(5), np.arange(5)))


def test_weighted_auroc_equals_auroc_of_the_resample():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 60), rng.random(60)
    idx = rng.integers(0, 60, size=(5, 60))
    w = np.stack([np.bincount(r, minlength=60) for r in idx]).astype(float)
    got = auroc_weighted(y, s, w)
    for r in range(5):
        assert got[r] == pytest.approx(roc_auc_score(y[idx[r]], s[idx[r]]), abs=1e-12)


def test_balanced_accuracy_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(2)
    yt, yp = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    assert balanced_accuracy(yt, yp) == pytest.approx(balanced_accuracy_score(yt, yp), abs=1e-12)
    idx = rng.integers(0, 100, 100)
    w = np.bincount(idx, minlength=100)[None].astype(float)
    assert balanced_accuracy_weighted(yt, yp, w)[0] == pytest.approx(balanced_accuracy_score(yt[idx], yp[idx]))


def test_seg_dice_siim_convention():
    a = np.zeros((2, 4, 4))
    b = np.zeros((2, 4, 4))
    a[1, 0, 0] = b[1, 0, 0] = b[1, 0, 1] = 1
    np.testing.assert_allclose(seg_dice(a, b), [1.0, 2 / 3])


def test_otsu_segmentation_fills_the_bright_blob():
    m = np.zeros((40, 40), np.float32)
    m[10:20, 10:20] = 1.0
    m[14:16, 14:16] = 0.2  # a hole is filled by the contour
    seg = otsu_segmentation(m)
    assert seg[10:20, 10:20].all() and seg.sum() == 100
    assert otsu_segmentation(np.ones((5, 5))).sum() == 0  # constant map: empty


def test_metrics_are_registered_with_capabilities():
    for name in ("iou", "dice", "cnr", "hit", "box_accuracy", "seg_dice"):
        assert metric_registry.entry(name).capabilities == ("grounding",)
    for name in ("auroc", "balanced_accuracy"):
        assert metric_registry.entry(name).capabilities == ("classification",)


def test_metrics_module_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = "import sys, benchmark.metrics; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------------------- properties
masks = arrays(np.uint8, (6, 7), elements=st.integers(0, 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=masks, b=masks)
def test_iou_and_dice_bounded_and_symmetric(a, b):
    for rule in ("tp", "union"):
        i1, i2 = iou(a.astype(float), b, rule=rule), iou(b.astype(float), a, rule=rule)
        d1, d2 = dice(a.astype(float), b, rule=rule), dice(b.astype(float), a, rule=rule)
        for x, y in ((i1, i2), (d1, d2)):
            assert (math.isnan(x) and math.isnan(y)) or (0.0 <= x <= 1.0 and x == pytest.approx(y))


@settings(max_examples=30, deadline=None)
@given(h=arrays(np.float64, (8, 8), elements=st.floats(-5, 5)), m=masks.map(lambda x: np.pad(x, 1)[:8, :8]),
       a=st.floats(0.01, 100), b=st.floats(-100, 100))
def test_cnr_is_invariant_to_positive_affine_rescaling(h, m, a, b):
    c1 = cnr(h[None], m[None])[0]
    c2 = cnr((a * h + b)[None], m[None])[0]
    if math.isnan(c1):
        assert math.isnan(c2)
    elif np.ptp(h) > 1e-6:
        assert c2 == pytest.approx(c1, rel=1e-6, abs=1e-6)
    # the AFLoc path (normalised twice) is invariant as well
    n1 = afloc_scores(h[None], m[None], (0.1,), with_hit=False)["cnr"][0]
    n2 = afloc_scores((a * h + b)[None], m[None], (0.1,), with_hit=False)["cnr"][0]
    if np.ptp(h) > 1e-6 and not math.isnan(n1):
        assert n2 == pytest.approx(n1, rel=1e-6, abs=1e-6)


def test_batched_values_equal_one_at_a_time():
    rng = np.random.default_rng(5)
    h = rng.standard_normal((6, 30, 30)).astype(np.float32)
    g = (rng.random((6, 30, 30)) < 0.3).astype(np.uint8)
    batch = afloc_scores(h, g, AFLOC_THRESHOLDS)
    for i in range(6):
        one = afloc_scores(h[i:i + 1], g[i:i + 1], AFLOC_THRESHOLDS)
        for k in batch:
            np.testing.assert_array_equal(batch[k][i:i + 1], one[k])
    d = dice_from_counts(threshold_counts(minmax_normalize(h), g, AFLOC_THRESHOLDS))
    np.testing.assert_array_equal(d[:, 0], batch["dice@0.1"])
