"""`afloc-bench train TARGET` dispatches to every registered trainer and training task."""

from __future__ import annotations

import pytest

from benchmark.cli.main import main
from benchmark.cli.train import resolve_target
from benchmark.registry import UnknownNameError, models, training
from benchmark.training.task import TrainTask, get_task


def test_every_train_target_resolves_to_a_function():
    assert {"afloc", "classifier", "gloria", "convirt", "biovil", "medklip"} <= set(training.names())
    for name in training.names():
        assert callable(resolve_target(name))


def test_every_task_of_the_shared_trainer_has_a_demo_config():
    tasks = [n for n in training.names() if issubclass(training.get(n), TrainTask)]
    assert {"afloc", "gloria", "convirt", "biovil", "medklip"} <= set(tasks)
    for name in tasks:
        task = get_task(name)
        assert task.name == name
        assert task.config_path("demo").is_file(), task.config_path("demo")


def test_every_model_with_demo_weights_names_a_training_target():
    with_demo = [e for e in models.entries() if e.get("demo_weights")]
    assert len(with_demo) >= 9
    for e in with_demo:
        assert e.get("train") in training, e.name


def test_unknown_target_and_task_are_named():
    with pytest.raises(UnknownNameError, match="glorai.*did you mean 'gloria'"):
        resolve_target("glorai")
    with pytest.raises(UnknownNameError, match="unknown training target 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="not a task of the shared trainer"):
        get_task("classifier")


def test_a_cuda_device_torch_cannot_see_is_named_before_anything_is_built(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["train", "afloc", "--dataset", "demo_mimic", "--device", "cuda", "-q", "-o", str(tmp_path / "run")])
    assert rc == 1
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last").exists()
    rc = main(["train", "afloc", "--dataset", "demo_mimic", "--device", "gpu", "-q", "-o", str(tmp_path / "run")])
    assert rc == 1 and "--device must be auto, cpu or cuda" in capsys.readouterr().err
