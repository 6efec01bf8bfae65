"""The fast paths of the metrics and the bootstrap, pinned bit for bit to straightforward references.

Every reference here is the plain per-map, per-threshold computation (or numpy's own draws), written
out in the test; the fast paths (bit-counted thresholds, the one-pass ``afloc_scores`` of a shared
rectangle, the reused buffers, the blockwise sums, the raw-output reader of the legacy stream) must
give the same bits on the edge cases: margins, NaN, constant maps, empty masks, overlapping boxes,
values exactly at a threshold, ties, float64 and float16 maps.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import bootstrap as B
from benchmark import metrics as M
from benchmark.geometry.afloc import afloc_margin_valid
from benchmark.protocols import afloc_compat as A


# ----------------------------------------------------------------------------- references
def ref_sum_numpy1(a):
    """NumPy 1.x's float sum: blocks of 8192, pairwise within a block, block sums added from 0."""
    if a.size <= 8192:
        return np.add.reduce(a)
    total = a.dtype.type(0)
    for s in range(0, a.size, 8192):
        total = total + np.add.reduce(a[s:s + 8192])
    return total


def ref_cnr(h, g, keep):
    """AFLoc's compute_cnr on one map: normalise the kept pixels to [-1, 1] again, then moments."""
    v = h[keep]
    if v.size == 0:
        return np.nan
    mn, mx = v.min(), v.max()
    d = mx - mn
    v = np.full_like(v, -1) if d == 0 else (v - mn) / d * 2 - 1
    gv = g[keep]
    a, b = v[gv == 1], v[gv == 0]
    if a.size == 0 or b.size == 0:
        return np.nan
    kind = v.dtype.type
    m1 = kind(np.float64(ref_sum_numpy1(a)) / a.size)
    m0 = kind(np.float64(ref_sum_numpy1(b)) / b.size)
    v1 = kind(np.float64(ref_sum_numpy1((a - m1) * (a - m1))) / a.size)
    v0 = kind(np.float64(ref_sum_numpy1((b - m0) * (b - m0))) / b.size)
    s = v1 + v0
    return 0.0 if s == 0 else float((m1 - m0) / pow(np.float64(s), 0.5))


def ref_afloc_scores(maps, gts, thresholds):
    """One map at a time, one threshold at a time, as the official Pipeline.test."""
    out = {f"{m}@{M.threshold_label(t)}": [] for m in ("iou", "dice") for t in thresholds}
    out.update(cnr=[], hit=[], gt_pixels=[], constant_map=[])
    for h, g in zip(maps, gts):
        keep = ~np.isnan(h)
        v = h[keep]
        mn, mx = v.min(), v.max()
        d = mx - mn
        norm = np.full_like(h, np.nan)
        norm[keep] = -1 if d == 0 else (v - mn) / d * 2 - 1
        gk = g[keep]
        for t in thresholds:
            p = norm[keep] > h.dtype.type(t)
            pred, gt, inter = int(p.sum()), int((gk > 0).sum()), int((p & (gk > 0)).sum())
            union = pred + gt - inter
            out[f"iou@{M.threshold_label(t)}"].append(np.nan if pred == 0 or gt == 0 else inter / union)
            out[f"dice@{M.threshold_label(t)}"].append(
                np.nan if pred == 0 or gt == 0 else 2 * inter / (pred + int(gk.astype(np.int64).sum())))
        out["cnr"].append(ref_cnr(norm, g, keep))
        flat = np.where(keep, h, -np.inf).ravel()
        out["hit"].append(float(g.ravel()[np.argmax(flat)] != 0) if (g != 0).any() else np.nan)
        out["gt_pixels"].append(float((gk > 0).sum()))
        out["constant_map"].append(float(d == 0))
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def assert_same_bits(got: dict, want: dict):
    assert list(got) == list(want) or set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        both = ~np.isnan(want[k])
        assert (np.signbit(got[k][both]) == np.signbit(want[k][both])).all(), k


# ----------------------------------------------------------------------------- edge-case batches
def edge_batch(dtype=np.float32, size=56, n=24, seed=0, margin=True):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((n, size, size)).astype(dtype)
    maps[1] = 0.7  # constant map
    maps[2] = rng.integers(0, 3, (size, size)).astype(dtype)  # three levels: ties everywhere
    # values exactly at the thresholds after normalisation: levels k/10 on [0, 1] -> k/5 - 1
    maps[3] = (rng.integers(0, 11, (size, size)) / 10).astype(dtype)
    t32 = np.array(M.AFLOC_THRESHOLDS, dtype=dtype)
    maps[4] = rng.choice(np.concatenate([t32, np.nextafter(t32, dtype(2)), np.nextafter(t32, dtype(-2)),
                                         np.array([-1, 1], dtype)]), (size, size))
    maps[4, 0, :2] = (-1, 1)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(int(rng.integers(1, 3))):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            masks[i, y:y + h, x:x + w] += 1
    masks[5] = 0  # empty mask
    masks[6] = 1  # mask everywhere: no background
    masks[7, size // 2, size // 2] = 1  # single-pixel lesion beside the boxes
    maps[8, 10, 10] = maps[8].max()  # a tie for the maximum
    if margin:
        maps[:, ~afloc_margin_valid((size, size))] = np.nan
    return maps, masks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin", [True, False])
def test_afloc_scores_fast_path_equals_the_per_map_per_threshold_reference(dtype, margin, monkeypatch):
    maps, masks = edge_batch(dtype, margin=margin)
    taken = []
    fast = A._afloc_scores_shared_area

    def spy(*args):
        out = fast(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(A, "_afloc_scores_shared_area", spy)
    for thresholds in (M.AFLOC_THRESHOLDS, M.AFLOC_PATHOLOGY_THRESHOLDS):
        got = A.afloc_scores(maps, masks, thresholds)
        assert taken[-1], "the batch should take the one-pass path"
        assert_same_bits(got, ref_afloc_scores(maps, masks, thresholds))
        # the general path (the fast one switched off) gives the same bits as well
        monkeypatch.setattr(A, "_afloc_scores_shared_area", lambda *a: None)
        assert_same_bits(A.afloc_scores(maps, masks, thresholds), got)
        monkeypatch.setattr(A, "_afloc_scores_shared_area", spy)
        # and one map at a time
        for i in (0, 1, 3, 6):
            one = A.afloc_scores(maps[i:i + 1], masks[i:i + 1], thresholds)
            assert_same_bits(one, {k: v[i:i + 1] for k, v in got.items()})


def test_batches_the_fast_path_refuses_give_the_reference_values(monkeypatch):
    maps, masks = edge_batch()
    cases = []
    m = maps.copy()
    m[3, 20, 20] = np.nan  # a NaN inside the shared rectangle
    cases.append(m)
    m = maps.copy()
    m[2, 0, 0] = 0.5  # one map evaluates a margin pixel: the area is not shared
    cases.append(m)
    m = maps.copy()
    m[:, 15:20, 15:20] = np.nan  # a hole: the area is no rectangle
    cases.append(m)
    for m in cases:
        assert A._afloc_scores_shared_area(m, masks, M.AFLOC_THRESHOLDS, True) is None
        assert_same_bits(A.afloc_scores(m, masks, M.AFLOC_THRESHOLDS), ref_afloc_scores(m, masks, M.AFLOC_THRESHOLDS))
    m = maps.copy()
    m[4, 20, 20] = np.inf  # the official rules for an infinite pixel stay with the general path
    assert A._afloc_scores_shared_area(m, masks, M.AFLOC_THRESHOLDS, True) is None
    assert np.isnan(A.afloc_scores(m, masks, M.AFLOC_THRESHOLDS)["cnr"][4])


@pytest.mark.parametrize("mask_dtype", [np.uint8, np.int32, np.int64, bool])
def test_masks_of_any_integer_dtype_take_the_same_values(mask_dtype):
    maps, masks = edge_batch()
    masks = masks.astype(mask_dtype)
    if mask_dtype is np.int32:
        masks[9, 20:24, 20:24] = -1  # negative values: nonzero, so a lesion pixel for IoU, not for CNR
    assert_same_bits(A.afloc_scores(maps, masks, M.AFLOC_THRESHOLDS),
                     ref_afloc_scores(maps, masks, M.AFLOC_THRESHOLDS))


# ----------------------------------------------------------------------------- threshold counts
def ref_counts(maps, gts, thresholds, valid=None):
    out = {"pred": [], "inter": [], "gt_count": [], "gt_sum": []}
    for i, (h, g) in enumerate(zip(maps, gts)):
        keep = ~np.isnan(h) if valid is None else ~np.isnan(h) & (valid[i] if valid.ndim == 3 else valid)
        gk = g[keep]
        out["pred"].append([int((h[keep] > h.dtype.type(t)).sum()) for t in thresholds])
        out["inter"].append([int(((h[keep] > h.dtype.type(t)) & (gk > 0)).sum()) for t in thresholds])
        out["gt_count"].append(int((gk > 0).sum()))
        out["gt_sum"].append(int(gk.astype(np.int64).sum()))
    return {k: np.array(v, dtype=np.int64).reshape(len(maps), -1) if k in ("pred", "inter") else
            np.array(v, dtype=np.int64) for k, v in out.items()}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("top", [1, 2, 4, 5, 255])
def test_threshold_counts_equal_one_comparison_per_threshold(dtype, top):
    rng = np.random.default_rng(top)
    maps = rng.choice(np.array([-1, -0.5, 0, 0.1, 0.2, 0.3, 0.30000001, 0.4, 0.5, 1], dtype=dtype), (9, 17, 19))
    maps[0, :3] = np.nan
    maps[1] = np.nan
    masks = rng.integers(0, top + 1, (9, 17, 19)).astype(np.uint8)
    masks[2] = 0
    thresholds = (0.1, 0.2, 0.30000000000000004, 0.3, 0.4, 0.5, 0.1, -1.0)
    valid = rng.random((17, 19)) < 0.8
    for v in (None, valid, rng.random((9, 17, 19)) < 0.7):
        got = M.threshold_counts(maps, masks, thresholds, v)
        want = ref_counts(M._float_maps(maps), masks, thresholds, v)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_mask_sums_of_signed_and_boolean_masks():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((4, 9, 9)).astype(np.float32)
    for g in (rng.integers(-2, 3, (4, 9, 9)).astype(np.int16), rng.random((4, 9, 9)) < 0.4,
              rng.integers(0, 3, (4, 9, 9)).astype(np.int64), rng.integers(0, 3, (4, 9, 9)).astype(np.float32)):
        got = M.threshold_counts(maps, g, (0.1,))
        np.testing.assert_array_equal(got["gt_sum"], g.reshape(4, -1).sum(axis=1, dtype=np.int64))


# ----------------------------------------------------------------------------- sums, CNR, normalisation
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blockwise_sum_equals_the_per_block_loop(dtype):
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 129, 8191, 8192, 8193, 16384, 16385, 3 * 8192 + 5, 40000):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
        got, want = M._sum_numpy1(a), ref_sum_numpy1(a)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), n
        m, v = M._mean_var_numpy1(a)
        want_m = a.dtype.type(np.float64(ref_sum_numpy1(a)) / n)
        assert m.tobytes() == want_m.tobytes()
        assert v.tobytes() == a.dtype.type(np.float64(ref_sum_numpy1((a - want_m) * (a - want_m))) / n).tobytes()


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("inside", ["eq1", "nonzero"])
def test_cnr_paths_equal_the_per_map_reference(renormalize, inside):
    maps, masks = edge_batch(margin=True)
    norm = M.minmax_normalize(maps)
    for src in (maps, norm):  # norm rows span [-1, 1]: the shortcut of the second normalisation
        got = M.cnr(src, masks, inside=inside, renormalize=renormalize)
        for i in range(len(src)):
            keep = ~np.isnan(src[i])
            g = masks[i] if inside == "eq1" else (masks[i] != 0).astype(np.uint8)
            h = src[i]
            want = ref_cnr(h, g, keep) if renormalize else _ref_cnr_plain(h, g, keep)
            np.testing.assert_array_equal(got[i], want, err_msg=str(i))
        # the same rows without NaN (whole-frame path) and one map at a time (per-map path)
        crop = np.ascontiguousarray(src[:, 14:-14, 14:-14])
        mk = np.ascontiguousarray(masks[:, 14:-14, 14:-14])
        whole = M.cnr(crop, mk, inside=inside, renormalize=renormalize)
        for i in range(len(crop)):
            np.testing.assert_array_equal(M.cnr(crop[i], mk[i], inside=inside, renormalize=renormalize), whole[i:i + 1])


def _ref_cnr_plain(h, g, keep):
    v, gv = h[keep], g[keep]
    a, b = v[gv == 1], v[gv == 0]
    if a.size == 0 or b.size == 0:
        return np.nan
    kind = v.dtype.type
    m1, m0 = kind(np.float64(ref_sum_numpy1(a)) / a.size), kind(np.float64(ref_sum_numpy1(b)) / b.size)
    v1 = kind(np.float64(ref_sum_numpy1((a - m1) * (a - m1))) / a.size)
    v0 = kind(np.float64(ref_sum_numpy1((b - m0) * (b - m0))) / b.size)
    s = v1 + v0
    return 0.0 if s == 0 else float((m1 - m0) / pow(np.float64(s), 0.5))


def test_second_normalisation_shortcut_is_the_literal_arithmetic():
    # (h + 1) - 1 against ((h - (-1)) / 2) * 2 - 1 on every float32 near -1, 0 and 1 and random values
    rng = np.random.default_rng(0)
    h = np.concatenate([np.nextafter(np.float32(-1), np.float32(1)) + np.arange(2000, dtype=np.float32) * 6e-8,
                        rng.uniform(-1, 1, 100000).astype(np.float32), np.float32([-1, 1, 0, -0.0, 1e-30, -1e-30])])
    for dtype in (np.float32, np.float64):
        x = h.astype(dtype)
        literal = ((x - dtype(-1)) / dtype(2)) * 2 - 1
        assert ((x + 1) - 1).tobytes() == literal.tobytes()


@pytest.mark.parametrize("low", [-1.0, 0.0])
def test_minmax_normalize_equals_the_per_map_formula(low):
    maps, _ = edge_batch(np.float32)
    for constant in ("low", "nan"):
        got = M.minmax_normalize(maps, low=low, constant=constant)
        for i, h in enumerate(maps):
            keep = ~np.isnan(h)
            v = h[keep]
            d = v.max() - v.min()
            want = np.full_like(h, np.nan)
            if d == 0:
                want[keep] = low if constant == "low" else np.nan
            else:
                want[keep] = (v - v.min()) / d * 2 - 1 if low == -1 else (v - v.min()) / d
            np.testing.assert_array_equal(got[i], want)


def test_scratch_buffers_are_reused_and_never_returned():
    maps, masks = edge_batch()
    first = A.afloc_scores(maps, masks, M.AFLOC_THRESHOLDS)
    other_maps, other_masks = edge_batch(seed=3)
    A.afloc_scores(other_maps, other_masks, M.AFLOC_THRESHOLDS)  # overwrites the buffers
    again = A.afloc_scores(maps, masks, M.AFLOC_THRESHOLDS)
    assert_same_bits(again, first)
    a = M._scratch("test.buf", (3, 4), np.float32)
    b = M._scratch("test.buf", (2, 2), np.float64)
    assert np.shares_memory(a, b)


# ----------------------------------------------------------------------------- the legacy stream's draws
@pytest.mark.parametrize("n", [1, 2, 3, 100, 511, 512, 513, 1000, 1024, 1025, 4097, 10000, 16384, 16385, 40000])
def test_legacy_counts_equal_numpys_draws_and_leave_the_stream_where_they_do(n):
    assert B._fast_draws_ok(n) == (n in (513, 1025, 4097, 10000, 16385, 40000))  # the raw-output reader runs
    for seed, skip in ((0, 0), (7, 333), (11, 624), (3, 623)):
        want_rs, rs = np.random.RandomState(seed), np.random.RandomState(seed)
        want_rs.randint(0, 5, size=skip)
        rs.randint(0, 5, size=skip)
        for rows in (1, 3, 100 if n < 20000 else 7):
            want = B.counts_from_indices(want_rs.randint(0, n, size=(rows, n)), n)
            np.testing.assert_array_equal(B.legacy_counts(rs, n, rows), want)
        s1, s2 = want_rs.get_state(), rs.get_state()
        assert np.array_equal(s1[1], s2[1]) and s1[2:] == s2[2:]
        np.testing.assert_array_equal(rs.random_sample(5), want_rs.random_sample(5))


def test_legacy_stream_weights_are_the_counts_of_its_indices():
    a, b = B.LegacyStream(0), B.LegacyStream(0)
    for n, n_boot, chunk in ((3000, 250, 64), (700, 30, 7), (12, 40, 100), (3000, 5, 100)):
        want = [B.counts_from_indices(ix, n) for ix in a.indices(n, n_boot, chunk)]
        got = list(b.weights(n, n_boot, chunk))
        assert [w.shape for w in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    a.skip(2000, 13)
    b.skip(2000, 13)
    np.testing.assert_array_equal(next(a.indices(900, 2)), next(b.indices(900, 2)))


@pytest.mark.parametrize("n", [23, 600, 5000])
def test_resample_counts_equal_sklearn_resample(n):
    from sklearn.utils import resample

    idx = np.arange(n)
    want = np.stack([np.bincount(resample(idx, replace=True, random_state=i), minlength=n) for i in range(120)])
    got = np.concatenate(list(B.sklearn_resample_counts(n, 120, chunk=50)))
    np.testing.assert_array_equal(got, want)
    shifted = np.stack([np.bincount(np.random.RandomState(9 + i).randint(0, n, size=n), minlength=n)
                        for i in range(30)])
    np.testing.assert_array_equal(np.concatenate(list(B.sklearn_resample_counts(n, 30, seed=9))), shifted)


def test_untempering_inverts_the_mt19937_output_transform():
    rs = np.random.RandomState(5)
    key = rs.get_state()[1]
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 0}}
    np.testing.assert_array_equal(B._untemper(bg.random_raw(624)), key)


def test_replicate_means_equal_weighted_nanmean_per_chunk():
    rng = np.random.default_rng(0)
    v = np.where(rng.random((800, 4)) < 0.3, np.nan, rng.random((800, 4)))
    chunks = list(B.LegacyStream(1).weights(800, 250))
    got = B.replicate_means(v, iter(chunks))
    np.testing.assert_array_equal(got, np.concatenate([B.weighted_nanmean(v, w) for w in chunks]))
