"""Paired comparison of two runs (`afloc-bench compare`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.cli.main import main
from benchmark.compare import compare_frames, compare_runs


def _frame(rng, n=80, shift=0.0, order=None):
    df = pd.DataFrame({
        "sample_id": [f"ds/{i}" for i in range(n)],
        "image_id": [f"img{i}" for i in range(n)],
        "patient_id": [f"p{i // 4}" for i in range(n)],
        "category": np.array(["A", "B"])[np.arange(n) % 2],
        "label": (np.arange(n) % 3 == 0).astype(int),
        "split": "test",
        "iou": np.clip(rng.random(n) + shift, 0, 1),
        "cnr": rng.normal(0, 1, n) + shift,
        "score": rng.random(n),
    })
    return df if order is None else df.iloc[order].reset_index(drop=True)


def _run(tmp_path, name, frames, protocol="canonical@1"):
    root = tmp_path / name
    (root / "samples").mkdir(parents=True)
    for (ds, model), df in frames.items():
        df.to_parquet(root / "samples" / f"{ds}__{model}.parquet")
    (root / "results.json").write_text(json.dumps({"schema_version": 1, "config": {"protocol": protocol}}))
    return root


def test_run_compared_with_itself_has_zero_difference(tmp_path):
    rng = np.random.default_rng(0)
    df = _frame(rng)
    a = _run(tmp_path, "a", {("rsna", "m1"): df})
    res = compare_runs(a, a, n_boot=200)
    assert not res.empty
    assert (res["diff"].abs() < 1e-15).all() and (res["lo"] == 0).all() and (res["hi"] == 0).all()
    assert (res["p_value"] == 1.0).all()
    assert set(res["metric"]) == {"iou", "cnr", "auroc"}


def test_known_shift_is_recovered_and_pairing_survives_row_order(tmp_path):
    rng = np.random.default_rng(1)
    base = _frame(rng)
    b = base.copy()
    b["cnr"] = base["cnr"] - 0.3  # A is better by exactly 0.3 on every sample
    shuffled = b.iloc[rng.permutation(len(b))].reset_index(drop=True)
    rows = compare_frames(base, shuffled, metrics=["cnr"], n_boot=300, seed=0)
    overall = [r for r in rows if r["category"] == "all"][0]
    assert overall["diff"] == pytest.approx(0.3) and overall["lo"] == pytest.approx(0.3)
    assert overall["hi"] == pytest.approx(0.3) and overall["p_value"] == 0.0


def test_paired_interval_is_narrower_than_the_two_separate_intervals():
    from benchmark.protocols.base import resolve_protocol

    rng = np.random.default_rng(2)
    a = _frame(rng, n=200)
    b = a.copy()
    b["iou"] = np.clip(a["iou"] - 0.02 + rng.normal(0, 0.01, len(a)), 0, 1)
    rows = compare_frames(a, b, metrics=["iou"], n_boot=400, seed=0)
    d = [r for r in rows if r["category"] == "all"][0]
    canon = resolve_protocol("canonical@1")
    ra = [r for r in canon.summarize(a, "grounding", n_boot=400, seed=0, unit="image")
          if r["metric"] == "iou" and r["category"] == "all"][0]
    assert (d["hi"] - d["lo"]) < 0.5 * (ra["hi"] - ra["lo"])
    assert d["lo"] > 0


def test_unmatched_samples_are_counted_not_silently_dropped(tmp_path):
    rng = np.random.default_rng(3)
    a = _frame(rng)
    b = _frame(rng).iloc[:70]
    rows = compare_frames(a, b, metrics=["iou"], n_boot=50)
    assert rows[0]["n_only_a"] == 10 and rows[0]["n_only_b"] == 0 and rows[0]["n"] == 70


def test_cli_compare_prints_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(4)
    a = _run(tmp_path, "a", {("rsna", "m1"): _frame(rng), ("covid", "m1"): _frame(rng)})
    b = _run(tmp_path, "b", {("rsna", "m2"): _frame(rng, shift=0.1), ("covid", "m2"): _frame(rng)})
    out = tmp_path / "cmp.json"
    rc = main(["compare", str(a), str(b), "--metric", "iou", "--n-boot", "100", "--seed", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "rsna" in text and "covid" in text
    data = json.loads(out.read_text())
    assert {r["dataset"] for r in data["rows"]} == {"rsna", "covid"}
    assert all(r["model_a"] == "m1" and r["model_b"] == "m2" for r in data["rows"])
    assert all(r["q_value"] is not None for r in data["rows"] if r["category"] == "all")


def test_cli_compare_reports_a_missing_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "y")]) == 2
    assert "samples" in capsys.readouterr().err


def test_a_metric_without_paired_values_in_a_task_gets_no_row(tmp_path):
    # a sample has one row per task: grounding rows carry iou/cnr and no score, classification
    # rows a score and no iou/cnr; neither task may report the other's metrics as empty rows
    rng = np.random.default_rng(6)
    grd = _frame(rng).assign(task="grounding", score=np.nan)
    cls = _frame(rng).assign(task="classification", iou=np.nan, cnr=np.nan)
    cls["sample_id"] = cls["sample_id"] + "/cls"
    a = _run(tmp_path, "a", {("rsna", "m1"): pd.concat([grd, cls], ignore_index=True)})
    res = compare_runs(a, a, n_boot=20)
    assert (res["n"] > 0).all()
    assert sorted(set(res["metric"])) == ["auroc", "cnr", "iou"]
    assert len(res[res["metric"] == "auroc"]) == 3 and len(res[res["metric"] == "iou"]) == 3  # all, A, B


def test_without_replicates_the_differences_stand_and_intervals_are_empty(tmp_path):
    rng = np.random.default_rng(7)
    a = _run(tmp_path, "a", {("rsna", "m1"): _frame(rng)})
    b = _run(tmp_path, "b", {("rsna", "m1"): _frame(rng, shift=0.1)})
    with_ci = compare_runs(a, b, n_boot=50)
    none = compare_runs(a, b, n_boot=0)
    assert np.allclose(none["diff"], with_ci["diff"], rtol=0, atol=1e-15)
    assert none[["lo", "hi", "p_value"]].isna().all().all()


@pytest.mark.parametrize("command", ["compare", "score", "run"])
def test_a_negative_replicate_count_is_refused_by_every_command(command, capsys):
    argv = {"compare": ["compare", "a", "b"], "score": ["score", "--input", "x.npz", "--protocol", "canonical@1"],
            "run": ["run", "--models", "uniform"]}[command]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--n-boot", "-1"])
    assert exc.value.code == 2
    assert "--n-boot: expected a whole number >= 0" in capsys.readouterr().err
