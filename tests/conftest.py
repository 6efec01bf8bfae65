"""Shared test setup: every test gets a private cache folder, so nothing touches ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("afloc_bench_cache")
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(cache))
    yield cache
