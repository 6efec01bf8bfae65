"""`afloc-bench train TARGET` dispatches to every registered trainer."""

from __future__ import annotations

import importlib

from benchmark.cli.train import TRAIN_TARGETS


def test_every_train_target_resolves_to_a_function():
    assert {"afloc", "classifier"} <= set(TRAIN_TARGETS)
    for target in TRAIN_TARGETS.values():
        mod, fn = target.split(":")
        assert callable(getattr(importlib.import_module(mod), fn))
