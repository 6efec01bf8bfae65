"""`afloc-bench train TARGET` dispatches to every registered trainer and training task."""

from __future__ import annotations

import pytest

from benchmark.cli.main import main
from benchmark.cli.train import TRAIN_TARGETS, resolve_target
from benchmark.training.task import TRAIN_TASKS, get_task


def test_every_train_target_resolves_to_a_function():
    assert {"afloc", "classifier", "gloria", "convirt", "biovil", "medklip"} <= set(TRAIN_TARGETS)
    for name in TRAIN_TARGETS:
        assert callable(resolve_target(name))


def test_every_contrastive_target_has_a_training_task_with_a_demo_config():
    for name in TRAIN_TASKS:
        task = get_task(name)
        assert task.name == name
        assert task.config_path("demo").is_file(), task.config_path("demo")
        assert name in TRAIN_TARGETS


def test_unknown_target_and_task_are_named():
    with pytest.raises(KeyError, match="glorai.*did you mean gloria"):
        resolve_target("glorai")
    with pytest.raises(ValueError, match="unknown training task 'nope'"):
        get_task("nope")


def test_a_cuda_device_torch_cannot_see_is_named_before_anything_is_built(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["train", "afloc", "--dataset", "demo_mimic", "--device", "cuda", "-q", "-o", str(tmp_path / "run")])
    assert rc == 1
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last").exists()
    rc = main(["train", "afloc", "--dataset", "demo_mimic", "--device", "gpu", "-q", "-o", str(tmp_path / "run")])
    assert rc == 1 and "--device must be auto, cpu or cuda" in capsys.readouterr().err
