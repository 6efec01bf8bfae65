"""Classification fine-tuning (``afloc-bench finetune cls``): linear and full runs on a tiny demo_rsna,
frozen vs trained encoder weights, the weight transfer, resume, seeds summary and flag errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmark.finetune.config import ConfigError, load_config


@pytest.fixture(scope="module")
def tiny_rsna(tmp_path_factory):
    import benchmark.demo as demo

    root = tmp_path_factory.mktemp("demo_rsna")
    demo.generate(root, seed=0, n_train=1, n_test=32, datasets=["rsna_pneumonia"], progress=False, workers=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFLOC_BENCH_DEMO", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    import yaml

    from benchmark.finetune.config import CONFIG_DIR

    cfg = yaml.safe_load((CONFIG_DIR / "cls_demo.yaml").read_text())
    cfg.update(image_size=32, resize=40, batch_size=8, n_boot=50)
    path = tmp_path_factory.mktemp("cfg") / "tiny_cls.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _args(out, config, *extra, mode="linear", epochs="2"):
    return ["finetune", "cls", "--model", "afloc", "--dataset", "demo_rsna", "--fraction", "1.0", "--mode", mode,
            "--max-epochs", epochs, "--config", config, "-o", str(out), *extra]


def _demo_trunk() -> dict[str, torch.Tensor]:
    from benchmark.adapter import build_adapter
    from benchmark.finetune.encoders import find_trunk, trunk_state

    adapter = build_adapter("afloc")
    adapter.load(None, "cpu")
    return trunk_state(find_trunk(adapter).state_dict())


def _encoder_of(out) -> dict[str, torch.Tensor]:
    sd = load_file(str(out / "best.safetensors"))
    return {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}


def test_cls_config_presets_and_keys(tmp_path):
    paper = load_config("paper", task="cls")
    assert (paper.batch_size, paper.max_epochs, paper.lr, paper.weight_decay) == (48, 50, 5e-4, 1e-6)
    assert paper.early_stopping == {"metric": "val_auroc", "patience": 10} and paper.image_size == 224
    assert load_config("demo", task="cls").cache_features is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: 64\ndecoder_channels: [8, 8, 8, 8, 8]\n")  # a segmentation key
    with pytest.raises(ConfigError, match="decoder_channels"):
        load_config(str(bad), task="cls")


def test_linear_and_full_runs_write_results_and_keep_or_train_the_encoder(tiny_rsna, tmp_path, tiny_config):
    from benchmark.cli.main import main

    trunk = _demo_trunk()
    runs = {}
    for mode in ("linear", "full"):
        out = tmp_path / mode
        assert main(_args(out, tiny_config, mode=mode)) == 0
        res = runs[mode] = json.loads((out / "results.json").read_text())
        assert res["format"] == "afloc-bench/finetune-cls" and res["mode"] == mode
        m = res["test"]["auroc"]
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1 and res["test"]["n_boot"] == 50
        assert [e["epoch"] for e in res["epochs"]] == [1, 2] and res["best_epoch"] in (1, 2)
        ids = {p: (out / "ids" / f"{p}.txt").read_text().split() for p in ("train", "validation", "test")}
        assert ids["train"] and ids["validation"] and ids["test"]
        assert not set(ids["train"]) & (set(ids["validation"]) | set(ids["test"]))
        assert not set(ids["validation"]) & set(ids["test"])
        assert res["ids"]["test"]["sha256"] == hashlib.sha256((out / "ids" / "test.txt").read_bytes()).hexdigest()
        rows = (out / "test_per_image.csv").read_text().splitlines()
        assert rows[0] == "image_id,label,probability" and [r.split(",")[0] for r in rows[1:]] == ids["test"]
        enc = _encoder_of(out)
        assert set(enc) == set(trunk)
        same = all(torch.equal(enc[k], trunk[k]) for k in trunk)
        # linear: every encoder tensor (BatchNorm statistics too) stays the pretrained one; full: trained
        assert same is (mode == "linear") and res["encoder_weights"]["changed"] is (mode == "full")
    assert runs["linear"]["ids"] == runs["full"]["ids"]  # the same patients whatever the mode


def test_the_encoder_weights_are_loaded_and_used():
    from benchmark.finetune.cls import classifier_for

    cfg = load_config("demo", task="cls")
    trunk = _demo_trunk()
    net, report = classifier_for("afloc", cfg)
    assert report["matched"] == report["encoder_keys"] > 0 and report["encoder_impl"] == "ResNetBackbone"
    assert report["missing"] == report["unexpected"] == report["shape_mismatch"] == []
    enc = net.encoder.state_dict()
    assert set(enc) == set(trunk) and all(torch.equal(enc[k], trunk[k]) for k in trunk)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    before = net.features(x)
    with torch.no_grad():
        net.encoder.conv1.weight.mul_(-3.0)  # a changed encoder weight changes the features
    assert not torch.allclose(before, net.features(x))
    rand, rep = classifier_for("random", cfg)
    assert rep["matched"] == 0 and not torch.equal(rand.encoder.conv1.weight, trunk["conv1.weight"])


def test_resume_equals_an_unbroken_run(tiny_rsna, tmp_path, tiny_config, monkeypatch):
    import benchmark.finetune.cls as cls
    from benchmark.cli.main import main

    whole = tmp_path / "whole"
    assert main(_args(whole, tiny_config, mode="full")) == 0
    real_save = cls.save_checkpoint

    def save_then_stop(folder, model, opt, state):
        real_save(folder, model, opt, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(cls, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cls.run_cls("afloc", "demo_rsna", 1.0, 0, part, load_config(tiny_config, task="cls"), mode="full",
                    max_epochs=2)
    monkeypatch.setattr(cls, "save_checkpoint", real_save)
    assert not (part / "results.json").exists() and (part / "checkpoint" / "state.json").is_file()
    assert main(_args(part, tiny_config, mode="full")) == 2  # an unfinished run is not overwritten
    assert main(_args(part, tiny_config, "--resume", mode="linear")) == 2  # nor resumed with other settings
    assert main(_args(part, tiny_config, "--resume", mode="full")) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, part))
    assert [e["epoch"] for e in b["epochs"]] == [1, 2] and a["best_epoch"] == b["best_epoch"]
    for ea, eb in zip(a["epochs"], b["epochs"]):
        assert ea == pytest.approx(eb, rel=1e-4)
    assert b["test"]["auroc"]["value"] == pytest.approx(a["test"]["auroc"]["value"], abs=1e-6)
    wa, wb = load_file(str(whole / "best.safetensors")), load_file(str(part / "best.safetensors"))
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)


def test_seeds_write_a_summary(tiny_rsna, tmp_path, tiny_config):
    from benchmark.cli.main import main

    out = tmp_path / "seeds"
    args = _args(out, tiny_config, epochs="1")
    args[args.index("--fraction"):args.index("--fraction") + 2] = ["--fraction", "0.5", "--seeds", "0,1"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "afloc-bench/finetune-cls-summary" and summary["mode"] == "linear"
    vals = [json.loads((out / f"seed{s}" / "results.json").read_text())["test"]["auroc"]["value"] for s in (0, 1)]
    assert summary["test"]["auroc"]["values"] == vals
    assert summary["test"]["auroc"]["mean"] == pytest.approx(np.mean(vals))
    assert summary["test"]["auroc"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    trains = [set((out / f"seed{s}" / "ids" / "train.txt").read_text().split()) for s in (0, 1)]
    assert trains[0] != trains[1]


@pytest.mark.parametrize("flags, needle", [
    (["--mode", "foo"], "--mode"),
    (["--fraction", "2"], "--fraction"),
    (["--seeds", "0,x"], "--seeds"),
])
def test_bad_flags_are_one_line_errors(flags, needle, capsys, tmp_path):
    from benchmark.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["finetune", "cls", "--model", "afloc", "-o", str(tmp_path / "x"), *flags])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0]


@pytest.mark.parametrize("argv, needle", [
    (["finetune", "seg", "--model", "afloc", "--mode", "full"], "--mode"),
    (["finetune", "cls", "--model", "afloc", "--config", "nope"], "--config nope"),
    (["finetune", "cls", "--model", "imagenet"], "--imagenet-weights"),
    (["finetune", "cls", "--model", "afloc", "--max-epochs", "0"], "--max-epochs"),
])
def test_bad_values_are_one_line_errors(argv, needle, capsys, tmp_path):
    from benchmark.cli.main import main

    assert main([*argv, "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and err.startswith("afloc-bench finetune: error:")


def test_a_clip_family_model_is_probed_through_its_own_vision_tower(tiny_rsna, tmp_path, tiny_config):
    """No ResNet trunk: PLIP (its architecture at random weights here) is probed through its open_clip
    vision transformer, the batch renormalised to its statistics and resized to its 224 input; the
    linear probe leaves the tower's weights as loaded, and those are the adapter's."""
    from benchmark.adapter import build_adapter
    from benchmark.cache import state_dict_sha256
    from benchmark.cli.main import main
    from benchmark.finetune.cls import tower_classifier

    out = tmp_path / "plip"
    args = ["finetune", "cls", "--model", "plip", "--model-option", "random_init=true", "--dataset", "demo_rsna",
            "--mode", "linear", "--max-epochs", "2", "--config", tiny_config, "-o", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    enc = res["encoder"]
    assert (enc["encoder_impl"], enc["arch"], enc["input_size"]) == ("vision tower", "VisionTransformer", 224)
    assert enc["normalisation"]["mean"][0] == pytest.approx(0.48145466)
    assert res["encoder_weights"]["changed"] is False and 0 <= res["test"]["auroc"]["value"] <= 1
    adapter = build_adapter("plip")
    adapter.options["random_init"] = "true"
    adapter.load(None, "cpu")
    assert enc["weights_sha256"] == state_dict_sha256(
        {f"encoder.{k}": v for k, v in adapter.vision_tower()["module"].state_dict().items()})
    net, _ = tower_classifier("plip", load_config(tiny_config, task="cls"), model_options={"random_init": "true"})
    x = torch.zeros(2, 3, 32, 32)
    before = net.features(x)
    with torch.no_grad():
        net.encoder.conv1.weight.add_(0.1)
    assert not torch.allclose(before, net.features(x))  # the features are the tower's
