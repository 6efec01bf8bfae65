"""canonical@1: original coordinates, box union, no NaN->0, unit bootstrap, point beside boot mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.protocols.base import resolve_protocol
from benchmark.sample import Sample


def _records(rng, n=60, cats=("A", "B", "C")):
    return pd.DataFrame({
        "sample_id": [f"ds/{i}" for i in range(n)],
        "image_id": [f"img{i // 2}" for i in range(n)],
        "patient_id": [f"pat{i // 6}" for i in range(n)],
        "category": rng.choice(list(cats), n),
        "iou": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
        "cnr": rng.normal(0.5, 0.3, n),
        "hit": rng.integers(0, 2, n).astype(float),
    })


def test_grounding_record_in_original_coordinates_with_box_union():
    # a 2-box lesion; a grid that is high exactly over it (letterbox 224 of a 400x300 image)
    s = Sample(sample_id="ms_cxr/a/p", image_path="x.jpg", split="test", category="Edema", image_size=(400, 300),
               boxes=[[50, 100, 100, 100], [100, 150, 100, 100]])
    grid = np.zeros((56, 56))
    rec = resolve_protocol("canonical@1").grounding_record(grid + np.arange(56)[None, :] * 0.0, s, (400, 300),
                                                          "letterbox:224")
    # a constant map highlights nothing: IoU and Dice are 0 (not NaN) for a present lesion, CNR 0
    assert rec["iou"] == 0.0 and rec["dice"] == 0.0 and rec["cnr"] == 0.0
    # ties rule: every pixel is a maximum -> hit = lesion share of the image
    union = 100 * 100 * 2 - 50 * 50
    assert rec["hit"] == pytest.approx(union / (400 * 300))
    assert rec["box_acc@0.1"] in (0.0, 1.0)


def test_point_is_full_data_and_boot_mean_is_reported_beside_it():
    rng = np.random.default_rng(0)
    rec = _records(rng)
    rows = resolve_protocol("canonical@1").summarize(rec, "grounding", n_boot=200, seed=0, unit="image")
    got = {(r["metric"], r["category"]): r for r in rows}
    for c in "ABC":
        assert got[("iou", c)]["point"] == pytest.approx(np.nanmean(rec.loc[rec.category == c, "iou"]))
        assert got[("iou", c)]["n"] == int(rec.loc[rec.category == c, "iou"].notna().sum())
    macro = np.mean([got[("iou", c)]["point"] for c in "ABC"])
    assert got[("iou", "all")]["point"] == pytest.approx(macro)
    r = got[("cnr", "all")]
    assert r["lo"] < r["point"] < r["hi"] and r["boot_mean"] != r["point"]


def test_patient_unit_resamples_whole_patients():
    rng = np.random.default_rng(1)
    rec = _records(rng)
    # all samples of a patient carry the same value: the patient bootstrap is then a bootstrap over 10
    # patient means, wider than treating the 60 rows as independent
    rec["cnr"] = rec["patient_id"].str[3:].astype(int).astype(float)
    rec["category"] = "A"
    proto = resolve_protocol("canonical@1")
    pat = {r["metric"]: r for r in proto.summarize(rec, "grounding", n_boot=400, seed=0, unit="patient")
           if r["category"] == "all"}
    smp = {r["metric"]: r for r in proto.summarize(rec.assign(image_id=rec.sample_id), "grounding", n_boot=400,
                                                    seed=0, unit="image") if r["category"] == "all"}
    assert (pat["cnr"]["hi"] - pat["cnr"]["lo"]) > (smp["cnr"]["hi"] - smp["cnr"]["lo"])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000))
def test_permuting_samples_leaves_estimates_unchanged(seed):
    rng = np.random.default_rng(seed)
    rec = _records(rng, n=30)
    perm = rng.permutation(len(rec))
    proto = resolve_protocol("canonical@1")
    a = proto.summarize(rec, "grounding", n_boot=50, seed=3, unit="image")
    b = proto.summarize(rec.iloc[perm], "grounding", n_boot=50, seed=3, unit="image")
    ka = {(r["metric"], r["category"]): r for r in a}
    kb = {(r["metric"], r["category"]): r for r in b}
    assert ka.keys() == kb.keys()
    for k in ka:
        for f in ("point", "boot_mean", "lo", "hi"):
            x, y = ka[k][f], kb[k][f]
            assert (np.isnan(x) and np.isnan(y)) or x == pytest.approx(y, abs=1e-12)


def test_classification_auroc_and_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(4)
    n = 120
    y = rng.integers(0, 2, n)
    s = np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1)
    rec = pd.DataFrame({"sample_id": [f"d/{i}" for i in range(n)], "image_id": [f"i{i}" for i in range(n)],
                        "category": np.where(np.arange(n) < 60, "X", "Y"), "label": y, "score": s})
    rows = resolve_protocol("canonical@1").summarize(rec, "classification", n_boot=100, seed=0, unit="image")
    got = {(r["metric"], r["category"]): r for r in rows}
    assert got[("auroc", "X")]["point"] == pytest.approx(roc_auc_score(y[:60], s[:60]))
    assert got[("balanced_accuracy", "Y")]["point"] == pytest.approx(balanced_accuracy_score(y[60:], s[60:] >= 0.5))
    assert got[("auroc", "all")]["lo"] <= got[("auroc", "all")]["hi"]


def test_stratified_option_is_accepted():
    rng = np.random.default_rng(5)
    rows = resolve_protocol("canonical@1").summarize(_records(rng), "grounding", n_boot=50, seed=0, unit="image",
                                                     params={"stratify": True})
    assert rows and all(set(r) == {"metric", "category", "point", "boot_mean", "lo", "hi", "n"} for r in rows)


def test_without_replicates_points_stand_and_intervals_are_empty():
    # images with several categories take the one-hot path of the replicate means
    rng = np.random.default_rng(6)
    rec = _records(rng)
    proto = resolve_protocol("canonical@1")
    for task, frame in (("grounding", rec), ("classification", rec.assign(label=rng.integers(0, 2, len(rec)),
                                                                         score=rng.random(len(rec))))):
        none = proto.summarize(frame, task, n_boot=0, seed=0, unit="image")
        boot = proto.summarize(frame, task, n_boot=20, seed=0, unit="image")
        assert ([(r["metric"], r["category"], r["n"]) for r in none]
                == [(r["metric"], r["category"], r["n"]) for r in boot])
        for a, b in zip(none, boot):
            assert (np.isnan(a["point"]) and np.isnan(b["point"])) or a["point"] == b["point"]
            assert np.isnan(a["boot_mean"]) and np.isnan(a["lo"]) and np.isnan(a["hi"])
