"""Limited-label fine-tuning (``benchmark.finetune``): nested patient fractions, the encoder weight
transfer, a short segmentation run on a tiny demo_siim, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.finetune.config import ConfigError, load_config
from benchmark.finetune.fractions import carve, label_fraction

PATIENTS = [f"p{i:03d}" for i in range(300)]


def test_fractions_are_deterministic_nested_and_whole_patients():
    for seed in (0, 1):
        one, ten, full = (label_fraction(PATIENTS, f, seed) for f in (0.01, 0.1, 1.0))
        assert (len(one), len(ten), len(full)) == (3, 30, 300)
        assert set(one) < set(ten) < set(full) == set(PATIENTS)
        assert label_fraction(list(reversed(PATIENTS)), 0.1, seed) == ten  # input order does not matter
    assert set(label_fraction(PATIENTS, 0.1, 0)) != set(label_fraction(PATIENTS, 0.1, 1))
    assert label_fraction(PATIENTS[:20], 0.01, 0) and len(label_fraction(PATIENTS[:20], 0.01, 0)) == 1
    rest, val = carve(PATIENTS, 0.15, 0, "validation")
    assert len(val) == 45 and not set(rest) & set(val) and set(rest) | set(val) == set(PATIENTS)
    with pytest.raises(ValueError):
        label_fraction(PATIENTS, 0.0, 0)


def test_splits_keep_each_patients_images_together(monkeypatch):
    from types import SimpleNamespace

    import benchmark.finetune.data as D

    def fake_items(dataset, data_root, split):  # 40 patients with 3 images each, every other one positive
        return [D.Item(f"img{i:03d}", "", "", (i // 3) % 2 == 0, SimpleNamespace(patient_id=f"P{i // 3}"))
                for i in range(120)]

    monkeypatch.setattr(D, "load_items", fake_items)
    cfg = load_config("demo")
    splits = {f: D.make_splits("demo_siim", None, cfg, 0, f) for f in (0.1, 1.0)}
    for sp in splits.values():
        parts = {p: {i.patient for i in sp[p]} for p in ("train", "validation", "test")}
        assert not parts["train"] & parts["test"] and not parts["validation"] & parts["test"]
        assert not parts["train"] & parts["validation"]
        assert all(len([i for i in sp["train"] if i.patient == p]) == 3 for p in parts["train"])
    assert {i.image_id for i in splits[0.1]["train"]} < {i.image_id for i in splits[1.0]["train"]}
    assert [i.image_id for i in splits[0.1]["test"]] == [i.image_id for i in splits[1.0]["test"]]
    assert splits[1.0]["how"]["patient_source"]["from_sample"] == 120


def test_config_presets_and_unknown_keys(tmp_path):
    assert load_config("paper").freeze_encoder is True and load_config("paper").image_size == 224
    assert load_config("demo").image_size == 128
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: 128\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(str(bad))


def test_demo_afloc_encoder_is_loaded_and_reported():
    from benchmark.finetune.encoders import encoder_for, find_trunk, trunk_state

    cfg = load_config("demo")
    unet, report = encoder_for("afloc", cfg)
    assert report["matched"] == report["encoder_keys"] > 0
    assert report["missing"] == report["unexpected"] == report["shape_mismatch"] == []
    assert report["arch"] == "resnet18" and report["width"] == 16
    # the encoder now holds the demo trunk's tensors, key for key
    from benchmark.adapter import build_adapter

    adapter = build_adapter("afloc")
    adapter.load(None, "cpu")
    trunk = trunk_state(find_trunk(adapter).state_dict())
    enc = unet.encoder.state_dict()
    assert set(enc) == set(trunk) and all(torch.equal(enc[k], trunk[k]) for k in trunk)

    def first_loss(net):
        from benchmark.finetune.seg import mixed_loss

        torch.manual_seed(0)
        x = torch.randn(2, 3, 64, 64)
        y = (torch.rand(2, 1, 64, 64) > 0.8).float()
        net.train()
        return mixed_loss(net(x), y, 10.0, 2.0).item()

    torch.manual_seed(0)
    a, _ = encoder_for("afloc", cfg)
    torch.manual_seed(0)
    b, _ = encoder_for("afloc", cfg)
    assert first_loss(a) == first_loss(b)
    with torch.no_grad():
        b.encoder.conv1.weight.mul_(-3.0)  # a changed encoder weight changes the first-step loss
    assert first_loss(a) != first_loss(b)


def test_a_trunk_cut_after_layer3_loads_and_reports_layer4_missing():
    from benchmark.finetune.encoders import encoder_for

    unet, report = encoder_for("medklip", load_config("demo"))  # MedKLIP keeps conv1 .. layer3 only
    assert report["missing"] and all(k.startswith("encoder.layer4.") for k in report["missing"])
    assert report["matched"] + len(report["missing"]) == report["encoder_keys"]
    assert report["unexpected"] == report["shape_mismatch"] == []


def test_imagenet_control_needs_a_local_file():
    from benchmark.finetune.encoders import encoder_for

    with pytest.raises(ValueError, match="--imagenet-weights"):
        encoder_for("imagenet", load_config("demo"))


def test_imagenet_control_loads_a_local_resnet50(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    from benchmark.finetune.encoders import encoder_for

    torch.manual_seed(1)
    sd = {k: v.contiguous() for k, v in resnet50(weights=None).state_dict().items()}
    save_file(sd, str(tmp_path / "r50.safetensors"))
    unet, report = encoder_for("imagenet", load_config("demo"), imagenet_weights=str(tmp_path / "r50.safetensors"))
    assert report["encoder_impl"] == "smp" and report["matched"] == report["encoder_keys"]
    assert torch.equal(unet.encoder.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])


def test_image_scores_follow_the_empty_image_rule():
    from benchmark.finetune.seg import image_scores

    truth = np.zeros((3, 4, 4), np.uint8)
    truth[0, :2] = 1
    pred = np.zeros_like(truth)
    pred[0, :1] = 1
    pred[2, 0, 0] = 1
    dice, iou = image_scores(pred, truth)
    assert np.allclose(dice, [2 * 4 / 12, 1.0, 0.0]) and np.allclose(iou, [0.5, 1.0, 0.0])


@pytest.fixture()
def tiny_siim(tmp_path_factory, monkeypatch):
    import benchmark.demo as demo

    root = tmp_path_factory.mktemp("demo")
    demo.generate(root, seed=0, n_train=1, n_test=12, datasets=["siim_pneumothorax"], progress=False, workers=1)
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(root))
    return root


def _args(out, *extra):
    return ["finetune", "seg", "--model", "afloc", "--dataset", "demo_siim", "--fraction", "1.0",
            "--max-epochs", "2", "-o", str(out), *extra]


def test_short_run_writes_results_and_resumes(tiny_siim, tmp_path, tiny_config, monkeypatch):
    from benchmark.cli.main import main

    out = tmp_path / "run"
    assert main(_args(out, "--config", tiny_config)) == 0
    res = json.loads((out / "results.json").read_text())
    for k in ("dice", "iou"):
        m = res["test"][k]
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
    assert res["test"]["n_boot"] == 50 and res["encoder"]["matched"] == res["encoder"]["encoder_keys"]
    assert [e["epoch"] for e in res["epochs"]] == [1, 2] and res["best_epoch"] in (1, 2)
    ids = {p: (out / "ids" / f"{p}.txt").read_text().split() for p in ("train", "validation", "test")}
    assert ids["train"] and ids["validation"] and ids["test"]
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["validation"]) & set(ids["test"])
    import hashlib

    assert res["ids"]["test"]["sha256"] == hashlib.sha256((out / "ids" / "test.txt").read_bytes()).hexdigest()

    # a run interrupted after epoch 1 resumes from its checkpoint and ends where the unbroken run ends
    import benchmark.finetune.seg as seg

    real_save = seg.save_checkpoint

    def save_then_stop(folder, model, opt, state):
        real_save(folder, model, opt, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(seg, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        seg.run_seg("afloc", "demo_siim", 1.0, 0, part, load_config(tiny_config), max_epochs=2)
    monkeypatch.setattr(seg, "save_checkpoint", real_save)
    assert not (part / "results.json").exists() and (part / "checkpoint" / "state.json").is_file()
    assert main(_args(part, "--config", tiny_config)) == 2  # an unfinished run is not overwritten
    assert main(_args(part, "--config", tiny_config, "--resume")) == 0
    resumed = json.loads((part / "results.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["max_epochs"] == 2 and resumed["config"]["max_epochs"] != 2  # the override is recorded
    assert resumed["epochs"][0] == res["epochs"][0]
    assert resumed["epochs"][1]["val_loss"] == pytest.approx(res["epochs"][1]["val_loss"], rel=1e-4)


@pytest.fixture()
def tiny_config(tmp_path):
    import yaml

    from benchmark.finetune.config import CONFIG_DIR

    cfg = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    cfg.update(image_size=64, batch_size=4, n_boot=50, decoder_channels=[32, 16, 16, 8, 8])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_seeds_aggregate_to_mean_and_sd():
    from benchmark.finetune.seg import aggregate

    def run(seed, d):
        return {"seed": seed, "test": {k: {"value": d} for k in ("dice", "iou", "dice_positive", "iou_positive")}}

    agg = aggregate([run(0, 0.5), run(1, 0.7), run(2, 0.9)])
    assert agg["seeds"] == [0, 1, 2] and agg["dice"]["mean"] == pytest.approx(0.7)
    assert agg["dice"]["sd"] == pytest.approx(0.2)
    assert aggregate([run(0, 0.5)])["iou"]["sd"] is None
