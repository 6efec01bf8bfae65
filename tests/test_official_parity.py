"""afloc-compat@1 and chexlocalize@1 against an independent restatement of the official code.

``official_reference`` restates, as plain loops over numpy / pandas calls, what AFLoc's
``localization/`` (with its NumPy 1.x semantics written out) and CheXlocalize's ``eval.py`` compute.
The protocols must agree with it to 1e-9, per sample and in every summary row the official code
writes (points and bootstrap CIs), on random and adversarial inputs: NaN borders, constant maps,
integer-valued maps, near-perfect maps, ±inf pixels, empty / full / single-pixel masks, overlapping
boxes (mask value 2), single-sample categories, N = 1, float32 and float64.

The property tests are derandomized (the same examples on every run) and use few bootstrap
replicates (the official index rule needs at least 40) so that the suite stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import official_reference as ref
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from benchmark.protocols.afloc_compat import AflocCompat, afloc_chexlocalize_scores, afloc_scores
from benchmark.protocols.base import resolve_protocol
from benchmark.protocols.chexlocalize import chexlocalize_scores

TOL = 1e-9
N_BOOT = 40
CATS = ("Edema", "Atelectasis", "Pneumothorax")
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def close(a, b, tol=TOL) -> bool:
    a, b = float(a), float(b)
    if math.isnan(b):
        return math.isnan(a)
    return not math.isnan(a) and abs(a - b) <= tol


# ============================================================================ inputs
def make_map(rng, kind: str, size: int, dtype, mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if kind == "smooth":
        h = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(0.5, 3))
    elif kind == "scaled":
        h = rng.standard_normal((size, size)) * 10.0 ** rng.integers(-3, 4) + rng.uniform(-100, 100)
    elif kind == "constant":
        h = np.full((size, size), rng.uniform(-2, 2))
    elif kind == "ties":  # few distinct values: pixels land on the thresholds after normalisation
        h = rng.integers(0, 5, (size, size)).astype(float)
    elif kind == "near_perfect":  # a large CNR, where float32 and float64 arithmetic differ most
        h = (mask > 0) * 5.0 + rng.standard_normal((size, size)) * 1e-3
    else:
        raise ValueError(kind)
    return h.astype(dtype)


def make_mask(rng, kind: str, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    if kind == "boxes":  # one or two boxes, summed: overlapping pixels hold 2
        for _ in range(int(rng.integers(1, 3))):
            x, y = rng.integers(0, size - 2, 2)
            w, h = rng.integers(1, size // 2 + 2, 2)
            m[y:y + h, x:x + w] += 1
    elif kind == "full":
        m[:] = 1
    elif kind == "pixel":
        m[tuple(rng.integers(0, size, 2))] = 1
    elif kind == "border":  # only in the outermost rows: empty inside the 14-px-style margin
        m[0, :] = 1
    elif kind != "empty":
        raise ValueError(kind)
    return m


@st.composite
def afloc_inputs(draw):
    n = draw(st.integers(1, 7))
    size = draw(st.sampled_from([12, 16, 24]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    maps, masks = [], []
    for _ in range(n):
        m = make_mask(rng, draw(st.sampled_from(["boxes", "boxes", "boxes", "empty", "full", "pixel", "border"])), size)
        h = make_map(rng, draw(st.sampled_from(["smooth", "smooth", "scaled", "constant", "ties", "near_perfect"])),
                     size, dtype, m)
        if draw(st.booleans()):  # NaN outside a rectangle that keeps the centre pixel
            c = size // 2
            top, left = rng.integers(0, c + 1, 2)
            bottom, right = rng.integers(c + 1, size + 1, 2)
            keep = np.zeros_like(h, dtype=bool)
            keep[top:bottom, left:right] = True
            h[~keep] = np.nan
        if draw(st.integers(0, 5)) == 0:  # one infinite pixel (possibly in the margin, which hides it)
            h[tuple(rng.integers(0, size, 2))] = draw(st.sampled_from([np.inf, -np.inf]))
        maps.append(h)
        masks.append(m)
    cats = draw(st.lists(st.sampled_from(CATS), min_size=n, max_size=n))
    return np.stack(maps), np.stack(masks), np.array(cats)


def afloc_records(maps, masks, cats, *, dataset="GENERIC", margin=True, pathology=False) -> pd.DataFrame:
    """The records ``afloc-bench score`` builds from arrays."""
    vals = AflocCompat().score_chunk(maps, masks, margin=margin, pathology=pathology)
    ids = [f"score/{i}" for i in range(len(maps))]
    rec = pd.DataFrame({"sample_id": ids, "image_id": ids, "category": cats, "split": "test"})
    for k, v in vals.items():
        rec[k] = v
    rec["afloc_dataset"] = dataset
    rec["modality"] = "pathology" if pathology else "chest_xray"
    return rec


def summary(rec, *, dataset, rounding=False, n_boot=N_BOOT, params=None) -> dict:
    rows = AflocCompat().summarize(rec, "grounding", n_boot=n_boot, seed=0, unit="image",
                                   params=params or {"afloc_dataset": dataset, "official_rounding": rounding})
    return {(r["metric"], r["category"]): r for r in rows}


def assert_same_per_sample(rec: pd.DataFrame, expected: list[dict]):
    for i, row in enumerate(expected):
        for key, want in row.items():
            assert close(rec[key].iat[i], want), (i, key, rec[key].iat[i], want)


def assert_same_summary(got: dict, points: dict, cis: dict):
    checked = 0
    for metric, per in points.items():
        for cat, want in per.items():
            assert close(got[(metric, cat)]["point"], want), (metric, cat, got[(metric, cat)]["point"], want)
            checked += 1
    for metric, per in cis.items():
        for cat, (mean, lo, hi) in per.items():
            g = got[(metric, cat)]
            assert close(g["boot_mean"], mean) and close(g["lo"], lo) and close(g["hi"], hi), \
                (metric, cat, (g["boot_mean"], g["lo"], g["hi"]), (mean, lo, hi))
            checked += 3
    return checked


def describe(maps, masks, cats, margin):
    """Hypothesis events: which adversarial cases the examples cover (``--hypothesis-show-statistics``)."""
    area = ~ref.margin_nan(maps.shape[1:]) if margin else np.ones(maps.shape[1:], bool)
    inside = maps[:, area]
    event(f"{maps.dtype}")
    if len(maps) == 1:
        event("N = 1")
    if np.isinf(inside).any():
        event("infinite pixel in the evaluated area")
    with ref.quiet():
        if any(np.nanmax(v) == np.nanmin(v) for v in inside):
            event("constant map")
    if np.isnan(inside).any():
        event("NaN inside the evaluated area")
    if (masks == 2).any():
        event("overlapping boxes (mask value 2)")
    if any(not m[area].any() for m in masks):
        event("empty mask in the evaluated area")
    if min(np.unique(cats, return_counts=True)[1]) == 1:
        event("single-sample category")


# ============================================================================ properties: afloc-compat@1
@PROPERTY
@given(data=afloc_inputs(), mode=st.sampled_from(["MS_CXR", "RSNA_GROUNDING", "SICAPV2_GROUNDING"]))
def test_afloc_per_sample_values_and_summaries_equal_the_official_code(data, mode):
    maps, masks, cats = data
    pathology = mode == "SICAPV2_GROUNDING"
    margin = not pathology
    describe(maps, masks, cats, margin)
    rec = afloc_records(maps, masks, cats, dataset=mode, margin=margin, pathology=pathology)
    assert_same_per_sample(rec, ref.per_sample(maps, masks, margin=margin, pathology=pathology))
    points, cis = ref.pipeline_test(maps, masks, cats, dataset=mode, margin=margin, pathology=pathology,
                                    n_boot=N_BOOT)
    assert assert_same_summary(summary(rec, dataset=mode), points, cis) > 0


@st.composite
def opt_th_inputs(draw, n_max=8):
    size = draw(st.sampled_from([12, 16]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    def split(cats):
        n = draw(st.integers(1, n_max))
        masks = np.stack([make_mask(rng, draw(st.sampled_from(["boxes", "boxes", "empty", "pixel"])), size)
                          for _ in range(n)])
        # raw maps on the scale the confidence gate reads: max(clip(raw, 0, 2)) / 2
        maps = np.stack([make_map(rng, draw(st.sampled_from(["smooth", "smooth", "ties", "constant"])), size, dtype,
                                  m) for m in masks]) * dtype(draw(st.sampled_from([1, 2, 4]))) + dtype(0.6)
        return maps, masks, np.array(draw(st.lists(st.sampled_from(cats), min_size=n, max_size=n)))

    val = split(CATS[:2])
    # the official code has no threshold for a category that only the test split has
    return val, split(sorted(set(val[2])))


def opt_th_records(split) -> pd.DataFrame:
    maps, masks, cats = split
    m = np.array(maps, copy=True)
    m[:, ref.margin_nan(m.shape[1:])] = np.nan
    vals = afloc_scores(m, masks, tuple(ref.thresholds()))
    vals.update(afloc_chexlocalize_scores(m, masks))
    rec = pd.DataFrame(vals)
    ids = [f"chexlocalize/{i}/{c}" for i, c in enumerate(cats)]
    rec.insert(0, "category", cats)
    rec.insert(0, "sample_id", ids)
    rec["image_id"] = ids
    rec["label"] = (masks.reshape(len(masks), -1).sum(1) > 0).astype(int)
    rec["afloc_dataset"] = "CHEXLOCALIZE"
    return rec


@PROPERTY
@given(data=opt_th_inputs())
def test_afloc_chexlocalize_opt_th_mode_equals_the_official_code(data):
    val, test = data
    mask_th, conf_th, points, cis = ref.opt_th(val, test, n_boot=N_BOOT)
    params = AflocCompat().tune(opt_th_records(val))
    assert params["mask_threshold"] == mask_th and params["confidence_threshold"] == conf_th
    got = summary(opt_th_records(test), dataset="CHEXLOCALIZE", params=params)
    assert assert_same_summary(got, points, cis) > 0


# ============================================================================ properties: chexlocalize@1
@st.composite
def chexlocalize_inputs(draw):
    n_img = draw(st.integers(1, 7))
    h, w = draw(st.sampled_from([(12, 16), (16, 12), (14, 14)]))
    tasks = draw(st.sampled_from([CATS[:1], CATS[:2], CATS]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    cxrs = []
    for i in range(n_img):
        negative = draw(st.booleans())  # a CXR without any positive task
        per_task = {}
        for t in tasks:
            gt = np.zeros((h, w), np.uint8)
            if not negative and draw(st.booleans()):
                y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
                gt[y:y + int(rng.integers(1, h // 2 + 1)), x:x + int(rng.integers(1, w // 2 + 1))] = 1
            kind = draw(st.sampled_from(["smooth", "smooth", "scaled", "constant", "ties"]))
            m = make_map(rng, kind, max(h, w), np.float32, gt)[:h, :w]
            per_task[t] = (m, gt)
        cxrs.append((f"patient{i}_study1_view1_frontal", per_task))
    return cxrs, tasks


def chexlocalize_records(cxrs) -> pd.DataFrame:
    rows = []
    for cxr, per_task in cxrs:
        for t, (m, gt) in per_task.items():
            r = chexlocalize_scores(m, gt)
            r.update(sample_id=f"chexlocalize/{cxr}/{t}", image_id=cxr, category=t)
            rows.append(r)
    return pd.DataFrame(rows)


def chexlocalize_official(cxrs, tasks, threshold, true_pos_only, n_boot):
    """The segmentation JSONs of the CheXlocalize pipeline and ``eval.py``: the ground-truth file holds
    the CXRs with a positive task; the prediction file every CXR, ``m > threshold`` on the min-max map."""
    gt_dict, pred_dict = {}, {}
    for cxr, per_task in cxrs:
        pred_dict[cxr] = {}
        for t, (m, _) in per_task.items():
            with ref.quiet():
                norm = m - m.min()
                norm = norm / norm.max()  # a constant map gives NaN: nothing is predicted
            pred_dict[cxr][t] = (norm > threshold).astype(np.uint8)
        if any(gt.any() for _, gt in per_task.values()):
            gt_dict[cxr] = {t: gt for t, (_, gt) in per_task.items()}
    if not gt_dict and true_pos_only:
        return None  # no CXR with a positive task: no rows
    out, _ = ref.chexlocalize_evaluate(gt_dict, pred_dict, tasks, true_pos_only=true_pos_only, n_boot=n_boot)
    return out


@PROPERTY
@given(data=chexlocalize_inputs(), true_pos_only=st.booleans())
def test_chexlocalize_rows_and_cis_equal_eval_py(data, true_pos_only):
    cxrs, tasks = data
    want = chexlocalize_official(cxrs, tasks, 0.5, true_pos_only, N_BOOT)
    rec = chexlocalize_records(cxrs)
    # per sample: eval.py's calculate_iou of the thresholded segmentation
    kind = "tp" if true_pos_only else "all"
    i = 0
    for _cxr, per_task in cxrs:
        for _t, (m, gt) in per_task.items():
            with ref.quiet():
                norm = (m - m.min()) / (m - m.min()).max()
            expect = ref.chexlocalize_calculate_iou((norm > 0.5).astype(np.uint8), gt, true_pos_only)
            assert close(rec[f"iou_{kind}@0.5"].iat[i], expect), (i, rec[f"iou_{kind}@0.5"].iat[i], expect)
            i += 1
    params = {"threshold": 0.5, "true_pos_only": true_pos_only}
    rows = resolve_protocol("chexlocalize@1").summarize(rec, "grounding", n_boot=N_BOOT, seed=0, unit="image",
                                                        params=params)
    got = {(r["metric"], r["category"]): r for r in rows}
    if want is None:
        return
    for t, (point, mean, lo, hi) in want.items():
        g = got[("iou", t)]
        assert close(g["point"], point) and close(g["boot_mean"], mean), (t, g, (point, mean, lo, hi))
        assert close(g["lo"], lo) and close(g["hi"], hi), (t, g, (point, mean, lo, hi))


# ============================================================================ one test per finding
def test_float32_cnr_is_the_float64_value_of_numpy1():
    """Finding 1: under NumPy 1.x ``pow(float32, 0.5)`` is float64, so the official CNR of a float32 map
    is float64 and so are its means; float32 arithmetic differed by up to 6e-6 on a near-perfect map."""
    rng = np.random.default_rng(0)
    masks = np.stack([make_mask(rng, "boxes", 24) for _ in range(6)])
    masks[0] = 0
    masks[0, 5:15, 6:16] = 1
    maps = np.stack([make_map(rng, "near_perfect" if i < 3 else "smooth", 24, np.float32, m)
                     for i, m in enumerate(masks)])
    cats = np.array(["Edema", "Edema", "Atelectasis", "Atelectasis", "Edema", "Atelectasis"])
    rec = afloc_records(maps, masks, cats)
    want = ref.per_sample(maps, masks)
    assert_same_per_sample(rec, want)
    assert want[0]["cnr"] > 100  # near-perfect: float32 rounding was visible at 1e-6 here
    points, cis = ref.pipeline_test(maps, masks, cats, n_boot=N_BOOT)
    assert_same_summary(summary(rec, dataset="GENERIC"), points, cis)


def test_all_row_skips_a_category_without_an_upper_bound():
    """Finding 2: categories of 20, 20 and 1 samples. The single sample is missing from about a third
    of the replicates, so that category's upper bound is NaN; the official appended row is a pandas
    mean over the categories, NaN skipped, so the overall bounds are still numbers."""
    rng = np.random.default_rng(3)
    n = 41
    masks = np.stack([make_mask(rng, "boxes", 16) for _ in range(n)])
    maps = np.stack([make_map(rng, "smooth", 16, np.float64, m) for m in masks])
    cats = np.array(["Edema"] * 20 + ["Atelectasis"] * 20 + ["Pneumothorax"])
    rec = afloc_records(maps, masks, cats, dataset="RSNA_GROUNDING")
    points, cis = ref.pipeline_test(maps, masks, cats, dataset="RSNA_GROUNDING", n_boot=200)
    got = summary(rec, dataset="RSNA_GROUNDING", n_boot=200)
    for metric in ("iou", "cnr", "dice"):
        assert math.isnan(got[(metric, "Pneumothorax")]["hi"])
        assert math.isfinite(got[(metric, "all")]["hi"]), got[(metric, "all")]
    assert_same_summary(got, points, cis)
    # with the official rounding too (3 decimals before and after the category mean)
    points, cis = ref.pipeline_test(maps, masks, cats, dataset="RSNA_GROUNDING", n_boot=200, rounding=True)
    assert_same_summary(summary(rec, dataset="RSNA_GROUNDING", n_boot=200, rounding=True), points, cis)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_infinite_pixel_propagates_nan_as_the_official_code(value, dtype):
    """Finding 3: the official NaN mask is taken before normalising. An infinite pixel makes the
    normalised map NaN there (+inf) or everywhere (-inf); the stale mask keeps those pixels, so the
    second normalisation in ``compute_cnr`` is all NaN and the CNR is NaN (not 0)."""
    rng = np.random.default_rng(1)
    masks = np.stack([make_mask(rng, "boxes", 24) for _ in range(4)])
    masks[1, 10:14, 10:14] = 1
    maps = np.stack([make_map(rng, "smooth", 24, dtype, m) for m in masks])
    maps[1, 12, 12] = value
    cats = np.array(["Edema"] * 4)
    rec = afloc_records(maps, masks, cats)
    assert math.isnan(rec["cnr"].iat[1])
    assert_same_per_sample(rec, ref.per_sample(maps, masks))
    points, cis = ref.pipeline_test(maps, masks, cats, n_boot=N_BOOT)
    assert_same_summary(summary(rec, dataset="GENERIC"), points, cis)
    # the CheXlocalize --opt_th values use the same stale mask: the pixel's ground truth still counts
    m = maps.copy()
    m[:, ref.margin_nan(m.shape[1:])] = np.nan
    opt = afloc_chexlocalize_scores(m[1:2], masks[1:2])
    nan = np.isnan(m[1])
    pred = ref.above(ref.norm_heatmap(m[1], nan, 1), 0.5)
    assert close(opt["opt_iou_all@0.5"][0], ref.iou(masks[1], pred, nan, only_pos=False))
    assert opt["gt_valid"][0] == np.count_nonzero(masks[1][~nan])


def test_official_rounding_is_numpys_round_half_even_on_the_binary_value():
    """Finding 4: metric.csv and the bootstrap summaries are rounded by pandas / NumPy
    (``DataFrame.round``, ``np.float64.round``): 0.1555 -> 0.156 (Python's ``round`` gives 0.155)
    and 0.0005 -> 0.0 (Python: 0.001)."""
    assert round(0.1555, 3) == 0.155 and round(0.0005, 3) == 0.001  # what the project must not use
    for x in (0.1555, 0.0005, 0.4445):
        rec = pd.DataFrame({"sample_id": ["s/0"], "image_id": ["s/0"], "category": ["Edema"],
                            "afloc_dataset": ["RSNA_GROUNDING"], "cnr": [x],
                            **{f"{m}@{ref.label(t)}": [x] for m in ("iou", "dice") for t in ref.thresholds()}})
        got = summary(rec, dataset="RSNA_GROUNDING", rounding=True)
        # metric.csv: the "mean" row of the threshold averages (all = np.mean of the 5 macro values) and the
        # per-threshold rows, then res.round(3)
        metric_csv = pd.DataFrame({"mean_row_all": [np.mean([x] * 5)], "value": [x]}).round(3)
        for metric in ("iou", "cnr", "dice", "iou@0.1"):
            for cat in ("all", "Edema"):
                r = got[(metric, cat)]
                col = "mean_row_all" if (cat == "all" and "@" not in metric) else "value"
                assert r["point"] == metric_csv.loc[0, col], (x, metric, cat, r)
                assert r["lo"] == r["hi"] == np.round(x, 3), (x, metric, cat, r)


def test_chexlocalize_all_pairs_score_prediction_only_cxrs_as_zero():
    """Finding 5: with ``true_pos_only=False`` eval.py also scores every CXR of the prediction file that
    the ground-truth file lacks (no positive task), against an empty mask: IoU 0 where something is
    predicted, NaN where nothing is; those CXRs are bootstrap rows too."""
    rng = np.random.default_rng(5)
    tasks = ("Edema", "Cardiomegaly")
    cxrs = []
    for i in range(8):
        per_task = {}
        for t in tasks:
            gt = np.zeros((16, 16), np.uint8)
            if i < 5 and (t == "Edema" or i % 2):
                gt[4:10, 3:11] = 1
            kind = "constant" if (i == 6 and t == "Cardiomegaly") else "smooth"
            per_task[t] = (make_map(rng, kind, 16, np.float32, gt), gt)
        cxrs.append((f"patient{i}_study1_view1_frontal", per_task))
    rec = chexlocalize_records(cxrs)
    want = chexlocalize_official(cxrs, tasks, 0.5, False, 200)
    rows = resolve_protocol("chexlocalize@1").summarize(rec, "grounding", n_boot=200, seed=0, unit="image",
                                                        params={"threshold": 0.5, "true_pos_only": False})
    got = {(r["metric"], r["category"]): r for r in rows}
    for t, (point, mean, lo, hi) in want.items():
        g = got[("iou", t)]
        assert close(g["point"], point) and close(g["boot_mean"], mean), (t, g, (point, mean, lo, hi))
        assert close(g["lo"], lo) and close(g["hi"], hi), (t, g, (point, mean, lo, hi))
    assert got[("iou", "Edema")]["n"] == 8  # 5 CXRs with ground truth + 3 prediction-only ones
    assert got[("iou", "Cardiomegaly")]["n"] == 7  # CXR 6 predicts nothing for Cardiomegaly: NaN, no value
    assert got[("hit", "Edema")]["n"] == 5  # the hit rate counts only CXRs of the ground-truth file


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) >= "2.0.0", reason="checks NumPy 1.x semantics")
def test_reference_spells_out_what_numpy1_does_with_the_literal_official_expressions():
    """Under NumPy 1.x (the official environment) the literal official expressions give what the reference
    writes out: ``x.mean()`` / ``x.var()`` of float32 pixel sets (blockwise sums) bit for bit, ``float32 map >
    float64 t`` in float32, and ``pow(float32, 0.5)`` in float64; the last to within one unit in the last place,
    as NumPy 1.x's float64 power is the platform's (SVML on AVX-512 CPUs, the C library's otherwise)."""
    rng = np.random.default_rng(4)
    for n in (1, 7, 300, 8191, 8192, 8193, 20000, 38416):
        for x in (rng.standard_normal(n).astype(np.float32) * np.float32(rng.uniform(0.01, 3)) + np.float32(0.6),
                  rng.standard_normal(n)):
            assert x.mean() == ref.numpy1_mean(x) and x.var() == ref.numpy1_var(x), (n, x.dtype)
    for _ in range(50):
        a = rng.standard_normal(int(rng.integers(1, 20000))).astype(np.float32)
        b = rng.standard_normal(int(rng.integers(1, 20000))).astype(np.float32)
        literal = (a.mean() - b.mean()) / pow(a.var() + b.var(), 0.5)
        assert type(literal) is np.float64
        var = np.float64(ref.numpy1_var(a) + ref.numpy1_var(b))
        spelled = (ref.numpy1_mean(a) - ref.numpy1_mean(b)) / pow(var, 0.5)
        assert literal == pytest.approx(spelled, rel=3e-16, abs=0)
        h = rng.random((8, 8)).astype(np.float32)
        for t in np.arange(0.1, 0.6, 0.1):
            np.testing.assert_array_equal(np.where(h > t, 1, 0), ref.above(h, t))


def test_float32_cnr_of_large_pixel_sets_sums_in_numpy1_blocks():
    """The 196 x 196 evaluated area of a 224 map holds 38,416 pixels: the background set is larger than
    NumPy 1.x's 8192-element reduction blocks, where NumPy >= 2.3 sums float32 values differently."""
    rng = np.random.default_rng(8)
    masks = np.zeros((8, 224, 224), np.uint8)
    for i, m in enumerate(masks):
        x, y = rng.integers(20, 120, 2)
        m[y:y + 30 + 8 * i, x:x + 60] = 1
    maps = np.stack([make_map(rng, "near_perfect" if i % 2 else "smooth", 224, np.float32, m)
                     for i, m in enumerate(masks)])
    rec = afloc_records(maps, masks, np.array(["Edema"] * 8))
    assert_same_per_sample(rec, ref.per_sample(maps, masks))
