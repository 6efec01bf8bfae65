"""`afloc-bench train` dispatch, the training config files and the demo vocabulary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from benchmark.cli.main import main
from benchmark.cli.train import resolve_target
from benchmark.registry import UnknownNameError, training


def test_the_afloc_target_is_its_task_on_the_shared_trainer():
    from afloc.task import AFLocTask

    assert training.entry("afloc").target == "afloc.task:AFLocTask" and training.get("afloc") is AFLocTask
    assert resolve_target("afloc").__self__.name == "afloc"
    with pytest.raises(UnknownNameError, match="did you mean 'afloc'"):
        resolve_target("aflok")


def test_cli_reports_unknown_targets_and_bad_options(capsys):
    assert main(["train", "nope"]) == 2
    assert "unknown training target" in capsys.readouterr().err
    assert main(["train", "afloc", "--config", "/nonexistent.yaml"]) == 2
    assert "training config not found" in capsys.readouterr().err
    assert main(["train", "afloc", "--set", "no_such_option=1"]) == 2
    assert "unknown training options" in capsys.readouterr().err


def test_shipped_configs_hold_the_paper_recipe():
    from benchmark.training.config import load_train_config

    p = load_train_config("paper")
    assert (p.lr, p.betas, p.weight_decay, p.lr_gamma, p.batch_size, p.grad_clip, p.epochs) == \
        (2e-5, (0.5, 0.999), 1e-6, 0.9, 128, 0.25, 5)
    assert p.preset == "paper" and p.dataset == "mimic_cxr" and p.compat and p.negatives == "local"
    d = load_train_config("demo")
    assert d.preset == "demo" and d.dataset == "demo_mimic"
    # the demo recipe (version 7, docs/afloc.md): sentence- and report-level losses, one learning rate
    assert d.model["loss"]["use_word"] is False and d.lr == 1e-3 and not d.lr_by_prefix
    assert (d.epochs, d.batch_size, d.text_pretrain["steps"]) == (24, 32, 800)


def test_demo_vocabulary_is_deterministic_and_covers_the_prompts(tmp_path):
    from afloc.tokenizer import Tokenizer
    from benchmark.demo.vocab import build_vocab

    a = build_vocab(tmp_path / "a")
    b = build_vocab(tmp_path / "b")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    tok = Tokenizer.from_path(tmp_path / "a")
    ids = tok(["findings suggesting pneumothorax. small left pleural effusion"])["input_ids"][0].tolist()
    toks = tok.tokens(ids[:10])
    assert toks == ["[CLS]", "findings", "suggesting", "pneumothorax", ".", "small", "left", "pleural", "effusion",
                    "[SEP]"]
    assert "[UNK]" not in tok.tokens(tok(["azygoesophageal recess"])["input_ids"][0].tolist())


def test_demo_weights_are_trained_once_into_their_cache_folder(tmp_path, monkeypatch):
    """ensure_demo_weights installs the run's best/ (with the training record) and reuses it."""
    import benchmark.training.trainer as T
    from benchmark.training.demo_weights import demo_weights_dir, ensure_demo_weights

    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path))
    runs = []

    def fake_train(cfg, out, quiet=False, **kw):
        runs.append(cfg.preset)
        best = Path(out) / "best"
        best.mkdir(parents=True)
        (best / "config.json").write_text("{}")
        (best / "model.safetensors").write_bytes(b"weights")
        (Path(out) / "metrics.csv").write_text("time,epoch\n")
        (Path(out) / "train_config.json").write_text("{}")
        return {}

    monkeypatch.setattr(T, "train", fake_train)
    first = ensure_demo_weights("afloc-demo-test", "afloc")
    assert first == demo_weights_dir("afloc-demo-test") and (first / "metrics.csv").is_file()
    assert ensure_demo_weights("afloc-demo-test", "afloc") == first and runs == ["demo"]
    assert not [p for p in first.parent.iterdir() if ".run-" in p.name]
