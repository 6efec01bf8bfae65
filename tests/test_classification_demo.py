"""The chest classification demo sets (NIH ChestX-ray14, CXR-LT 2024): written in their official layouts,
read by the real loaders, valid, and scored per class by a run of the weight-free models."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from benchmark import demo
from benchmark.cli.main import main
from benchmark.dataset import build_dataset
from benchmark.datasets.cxr_lt.loader import LABEL_SETS
from benchmark.datasets.nih_chestxray14.demo import NIH14_KIND
from benchmark.datasets.nih_chestxray14.loader import CLASSES as NIH_CLASSES
from benchmark.registry import datasets

SETS = ["nih_chestxray14", "cxr_lt"]
SMALL = {"seed": 0, "n_train": 1, "n_test": 160, "datasets": SETS}  # 40 test images per set


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_demo") / "demo"
    return out, demo.generate(out, progress=False, **SMALL)


@pytest.fixture()
def demo_env(small, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small[0]))
    return small[0]


def test_registration():
    names = datasets.resolve("classification_demo")
    assert sorted(names) == ["demo_cxr_lt", "demo_cxr_lt_t3", "demo_nih_chestxray14"]
    assert not set(names) & set(datasets.resolve("demo"))
    assert set(SETS) <= set(demo.available())
    assert datasets.entry("demo_cxr_lt_t3").options == {"label_set": "t3"}


def test_the_manifest_counts(small):
    sets = small[1]["datasets"]
    assert sets["nih_chestxray14"]["counts"]["test"] == 40 and sets["cxr_lt"]["counts"]["test"] == 40
    assert all(s["findings_not_drawn"] == 0 for s in sets.values())


def test_nih_layout_and_labels(demo_env):
    root = demo_env / "nih_chestxray14"
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    assert list(entry.columns[:7]) == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                                       "Patient Gender", "View Position"]
    test = (root / "test_list.txt").read_text().split()
    train_val = (root / "train_val_list.txt").read_text().split()
    assert len(test) == 40 and len(train_val) == 8 and not set(test) & set(train_val)
    assert set(entry["Image Index"]) == set(test) | set(train_val)
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) and (root / "images" / n).is_file() for n in test)
    ds = build_dataset("demo_nih_chestxray14")
    samples = ds.samples()
    assert len(samples) == 14 * 40 and ds.skipped == [] and samples[0].image_size == (768, 768)
    positive = {s.category for s in samples if s.label == 1}
    canonical = {c: ds.canonical(c, "test") for c in NIH_CLASSES}
    # every label the phantom draws has positives and negatives; Pleural_Thickening and Hernia have none
    assert positive == {canonical[c] for c in NIH14_KIND}
    assert all(any(s.label == 0 and s.category == canonical[c] for s in samples) for c in NIH14_KIND)
    assert any(s.meta["finding_labels"] == [] for s in samples)  # "No Finding" images
    assert len(build_dataset("demo_nih_chestxray14", split="train_val").samples()) == 14 * 8


def test_cxr_lt_layout_and_labels(demo_env):
    root = demo_env / "cxr_lt"
    t2 = pd.read_csv(root / "cxr-lt-2024" / "test_labeled_task2.csv")
    t3 = pd.read_csv(root / "cxr-lt-2024" / "test_labeled_task3.csv")
    assert list(t2.columns[5:]) == list(LABEL_SETS["t2"]) and list(t3.columns[5:]) == list(LABEL_SETS["t3"])
    assert list(t2["fpath"]) == list(t3["fpath"]) and len(t2) == 40
    for p in t2["fpath"]:
        assert re.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.jpg", p)
        assert (root / p).read_bytes()[:3] == b"\xff\xd8\xff"
    # Normal exactly when nothing else is positive
    others = t2.drop(columns=["dicom_id", "subject_id", "study_id", "ViewPosition", "fpath", "Normal"])
    assert ((others.sum(axis=1) == 0) == (t2["Normal"] == 1)).all()
    assert t2[list(LABEL_SETS["t2"])].sum().gt(0).sum() >= 15
    assert t3[["Bulla", "Cardiomyopathy", "Hilum"]].sum().gt(0).all()
    assert t3[["Osteopenia", "Scoliosis"]].sum().eq(0).all()
    for name, n_classes in (("demo_cxr_lt", 26), ("demo_cxr_lt_t3", 5)):
        ds = build_dataset(name)
        assert len(ds.samples()) == n_classes * 40 and ds.skipped == []


def test_every_set_validates(demo_env, capsys):
    rc = main(["validate", "--datasets", "classification_demo"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 of 3 dataset(s) valid" in out and "warning" not in out


def _run(name: str, out, *extra: str) -> dict:
    rc = main(["-q", "run", "--models", "random,uniform", "--datasets", name, "--n-boot", "20", "-o", str(out),
               "--no-cache", "--num-workers", "0", *extra])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["results"][name]
    assert set(res) == {"random", "uniform"}
    return res


@pytest.mark.parametrize("name,drawn", [("demo_nih_chestxray14", len(NIH14_KIND)), ("demo_cxr_lt", 15)])
def test_a_run_gives_per_class_auroc_with_intervals(demo_env, tmp_path, name, drawn):
    for model, rows in _run(name, tmp_path / "run").items():
        per_class = [r for r in rows if r["metric"] == "auroc" and r["category"] != "all"]
        assert all({"point", "lo", "hi"} <= set(r) and r["n"] == 40 for r in per_class), model
        scored = [r for r in per_class if r["point"] is not None and math.isfinite(r["point"])]
        assert len(scored) >= drawn, (model, len(scored))
        # afloc-compat's official interval is undefined where a replicate lacks positives (rare classes)
        with_ci = [r for r in scored if r["lo"] is not None and r["hi"] is not None]
        assert len(with_ci) >= 5, model
        if model == "uniform":
            assert all(r["point"] == 0.5 for r in scored)
            assert all(r["lo"] == r["hi"] == 0.5 for r in with_ci)


def test_the_canonical_mean_skips_the_classes_without_positives(demo_env, tmp_path):
    """afloc-compat averages every class (NaN with an absent one, as AFLoc's code); canonical@1 averages the
    classes it can score, so the demo gets a mean AUROC with an interval."""
    res = _run("demo_nih_chestxray14", tmp_path / "run", "--protocol", "canonical@1")
    mean = [r for r in res["random"] if r["metric"] == "auroc" and r["category"] == "all"]
    assert len(mean) == 1 and all(math.isfinite(mean[0][k]) for k in ("point", "lo", "hi"))
    assert mean[0]["lo"] <= mean[0]["point"] <= mean[0]["hi"]


def test_the_preview_sheet_reads_both_sets(small, tmp_path):
    from benchmark.demo import preview

    out = preview.contact_sheet(small[0], tmp_path / "sheet.png", per_dataset=2, datasets=["nih_chestxray14", "cxr_lt"])
    assert out.is_file() and out.stat().st_size > 5_000
    assert all(c[3] for c in preview.READERS["nih_chestxray14"](small[0], 2))  # each image's class prompt
