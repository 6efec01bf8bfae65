"""Bring-your-own maps as a run: a run's saved maps scored again give its numbers; gaps are counted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark import demo
from benchmark.cli.main import main


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "seed0"
    demo.generate(out, seed=0, n_train=2, n_test=6, datasets=["ms_cxr"], progress=False, workers=1)
    return out


def _run(out, models, *extra):
    return main(["-q", "run", "--models", models, "--datasets", "demo_ms_cxr", "--n-boot", "40", "--num-workers", "0",
                 "-o", str(out), *extra])


def test_saved_maps_scored_as_a_run_give_the_models_numbers(small_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    assert _run(tmp_path / "model", "afloc", "--save-heatmaps", "1000") == 0
    maps = tmp_path / "model" / "heatmaps" / "demo_ms_cxr__afloc.npz"
    assert _run(tmp_path / "byo", "byo", "--ckpt", f"byo={maps}") == 0
    a = json.loads((tmp_path / "model" / "results.json").read_text())["results"]["demo_ms_cxr"]["afloc"]
    b = json.loads((tmp_path / "byo" / "results.json").read_text())["results"]["demo_ms_cxr"]["byo"]
    assert [r for r in a if r["task"] == "grounding"] == b
    rec_a = pd.read_parquet(tmp_path / "model" / "samples" / "demo_ms_cxr__afloc.parquet")
    rec_b = pd.read_parquet(tmp_path / "byo" / "samples" / "demo_ms_cxr__byo.parquet")
    pd.testing.assert_frame_equal(rec_a[rec_a.task == "grounding"].reset_index(drop=True), rec_b)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "byo"), str(tmp_path / "model"), "--n-boot", "50"]) == 0
    assert "cnr" in capsys.readouterr().out

    # one map fewer: that sample is skipped and counted, never scored as an empty map
    with np.load(maps) as z:
        arrays = {k: z[k] for k in z.files}
    keep = slice(1, None)
    gap = tmp_path / "gap.npz"
    np.savez(gap, sample_id=arrays["sample_id"][keep], grid=arrays["grid"][keep],
             input_geometry=arrays["input_geometry"])
    assert _run(tmp_path / "gap", "byo", "--ckpt", f"byo={gap}") == 0
    state = json.loads((tmp_path / "gap" / "results.json").read_text())
    assert state["datasets"]["demo_ms_cxr"]["n_run_skipped"]["byo"] == 1
    assert state["models"]["byo"]["n_missing"] == 1
    assert len(pd.read_parquet(tmp_path / "gap" / "samples" / "demo_ms_cxr__byo.parquet")) == len(rec_b) - 1


@pytest.mark.parametrize("arrays,needle", [
    ({"grid": np.zeros((2, 4, 4))}, "missing ['input_geometry', 'sample_id']"),
    ({"sample_id": np.array(["a", "a"]), "grid": np.zeros((2, 4, 4)), "input_geometry": np.array("native")},
     "repeated: ['a']"),
    ({"sample_id": np.array(["a"]), "grid": np.zeros((1, 4, 4)), "input_geometry": np.array("fisheye")},
     "unknown input geometry"),
    ({"sample_id": np.array(["a"]), "grid": np.full((1, 4, 4), np.inf), "input_geometry": np.array("native")},
     "without infinite values"),
])
def test_bad_map_files_fail_in_one_line(tmp_path, arrays, needle):
    from baselines.byo.adapter import HeatmapFile
    from benchmark.dataset import DataError

    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=needle.replace("[", r"\[").replace("]", r"\]")) as err:
        HeatmapFile().load(str(path), "cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_score_on_a_dataset_writes_the_run_byo_writes(small_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    assert _run(tmp_path / "model", "afloc", "--save-heatmaps", "1000") == 0
    maps = tmp_path / "model" / "heatmaps" / "demo_ms_cxr__afloc.npz"
    assert main(["-q", "score", "--dataset", "demo_ms_cxr", "--input", str(maps), "--n-boot", "40",
                 "-o", str(tmp_path / "scored")]) == 0
    assert "run record:" in capsys.readouterr().out
    a = json.loads((tmp_path / "model" / "results.json").read_text())["results"]["demo_ms_cxr"]["afloc"]
    b = json.loads((tmp_path / "scored" / "results.json").read_text())["results"]["demo_ms_cxr"]["byo"]
    assert [r for r in a if r["task"] == "grounding"] == b
    assert main(["score", "--input", str(maps), "-o", str(tmp_path / "x")]) == 2
    assert "go with --dataset" in capsys.readouterr().err
