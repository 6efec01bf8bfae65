"""Bootstrap: exact emulation of the official draws, vectorised means, CIs, unit resampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.bootstrap import (
    LegacyStream,
    bh_fdr,
    bootstrap_p_value,
    counts_from_indices,
    official_ci,
    percentile_ci,
    replicate_means,
    sklearn_resample_indices,
    unit_weights,
    weighted_nanmean,
)


def test_legacy_stream_equals_sequential_choice_calls_across_chunks_and_calls():
    np.random.seed(0)
    first = np.stack([np.random.choice(37, size=37, replace=True) for _ in range(250)])
    second = np.stack([np.random.choice(11, size=11, replace=True) for _ in range(30)])
    s = LegacyStream(0)
    got1 = np.concatenate(list(s.indices(37, 250, chunk=64)))
    got2 = np.concatenate(list(s.indices(11, 30, chunk=7)))
    np.testing.assert_array_equal(got1, first)
    np.testing.assert_array_equal(got2, second)


def test_legacy_stream_skip_consumes_one_call():
    np.random.seed(3)
    for _ in range(20):
        np.random.choice(9, size=9, replace=True)
    nxt = np.random.choice(5, size=5, replace=True)
    s = LegacyStream(3)
    s.skip(9, 20)
    np.testing.assert_array_equal(next(s.indices(5, 1)), nxt[None])


def test_sklearn_resample_emulation():
    from sklearn.utils import resample

    idx = np.arange(23)
    want = np.stack([resample(idx, replace=True, random_state=i) for i in range(150)])
    np.testing.assert_array_equal(np.concatenate(list(sklearn_resample_indices(23, 150))), want)


def test_weighted_nanmean_equals_pandas_mean_of_resampled_rows():
    rng = np.random.default_rng(0)
    v = np.where(rng.random((40, 3)) < 0.4, np.nan, rng.random((40, 3)))
    idx = rng.integers(0, 40, size=(25, 40))
    got = weighted_nanmean(v, counts_from_indices(idx, 40))
    df = pd.DataFrame(v)
    for r in range(25):
        np.testing.assert_allclose(got[r], df.iloc[idx[r]].mean().to_numpy(), rtol=1e-12, equal_nan=True)


def test_replicate_with_no_value_is_nan():
    v = np.array([[np.nan], [1.0]])
    w = np.array([[2.0, 0.0], [1.0, 1.0]])
    out = weighted_nanmean(v, w)
    assert np.isnan(out[0, 0]) and out[1, 0] == 1.0


def test_official_ci_indices_and_nan_last():
    reps = np.arange(1000, dtype=float)[::-1].copy()
    mean, lo, hi = official_ci(reps)
    assert (lo, hi, mean) == (24.0, 974.0, 499.5)
    reps[-10:] = np.nan  # values 0..9 become NaN: they sort last but keep their places
    mean, lo, hi = official_ci(reps)
    assert lo == 34.0 and hi == 984.0


def test_percentile_ci_uses_finite_replicates():
    reps = np.r_[np.linspace(0, 1, 1001), np.nan]
    bm, lo, hi = percentile_ci(reps)
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975) and bm == pytest.approx(0.5)


def test_unit_weights_resample_whole_units():
    units = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    w = np.concatenate(list(unit_weights(units, 200, seed=1, chunk=64)))
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    # three units drawn per replicate
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()


def test_unit_weights_do_not_depend_on_row_order():
    units = np.array(["a", "b", "c", "d"])
    perm = np.array([2, 0, 3, 1])
    w1 = next(unit_weights(units, 50, seed=5))
    w2 = next(unit_weights(units[perm], 50, seed=5))
    np.testing.assert_array_equal(w1[:, perm], w2)


def test_stratified_unit_weights_keep_stratum_sizes():
    units = np.arange(10)
    strata = np.array([0] * 3 + [1] * 7)
    w = next(unit_weights(units, 100, seed=2, strata=strata))
    assert (w[:, :3].sum(axis=1) == 3).all() and (w[:, 3:].sum(axis=1) == 7).all()


def test_replicate_means_of_constant_values_are_constant():
    v = np.full((30, 2), 0.25)
    reps = replicate_means(v, unit_weights(np.arange(30), 120, seed=0, chunk=50))
    assert reps.shape == (120, 2) and np.all(reps == 0.25)


def test_p_value_and_fdr():
    assert bootstrap_p_value(np.zeros(100)) == 1.0
    assert bootstrap_p_value(np.r_[np.ones(99), -1.0]) == pytest.approx(0.02)
    np.testing.assert_allclose(bh_fdr([0.01, 0.04, 0.03, np.nan]), [0.03, 0.04, 0.04, np.nan])


def test_official_intervals_with_too_few_replicates_are_flagged_once(caplog):
    from benchmark import bootstrap as B

    B._warned_few.discard("proto@1")
    with caplog.at_level("WARNING", logger="afloc_bench.bootstrap"):
        for n in (0, 1000):
            B.warn_few_official_replicates(n, "proto@1")
        assert not caplog.records
        B.warn_few_official_replicates(20, "proto@1")
        B.warn_few_official_replicates(10, "proto@1")
    assert len(caplog.records) == 1 and "--n-boot 20" in caplog.text and ">= 40" in caplog.text
    # what it warns about: the official index rule at R = 20 gives the largest replicate as "lower"
    mean, lo, hi = B.official_ci(np.arange(20.0))
    assert lo == 19.0 and hi == 18.0
