"""Shared test setup: every test gets a private cache folder, so nothing touches ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("afloc_bench_cache")
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(cache))
    yield cache


@pytest.fixture(scope="session")
def small_run_demo(tmp_path_factory):
    """The demo collection of ``small_run.SETS`` (2 training and 9 test images a set), generated once."""
    from small_run import SETS

    from benchmark import demo

    out = tmp_path_factory.mktemp("small_run_demo") / "seed0"
    demo.generate(out, seed=0, n_train=2, n_test=9, datasets=SETS, progress=False, workers=1)
    return out
