"""Results that cannot be silently wrong: one test per finding of the bad-input and fault review.

Each test names its finding: a resume or the cache must know what changed (1, 2), comparisons refuse
unlike runs (3, 4), bad files are named and never scored (5, 8, 11), a run folder is never silently
replaced (6), inputs and flags are checked (7), open CI bounds are explained (9), failures are one
line with an exit code (10, 11), and long steps report progress and leave a log (13). Finding 12 (a
broken plugin) is in tests/test_extending.py.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
import toy

from baselines.sanity.adapter import CenterPriorModel
from benchmark.cli.main import main
from benchmark.registry import models

toy.register()


@pytest.fixture
def toy_root(tmp_path):
    return toy.make_toy(tmp_path / "toy_test")


def run(tmp_path, toy_root, *extra, models_="center_prior", out="run"):
    out = tmp_path / out
    rc = main(["-q", "run", "--models", models_, "--datasets", "toy_test", "--protocol", "toy@1",
               "--data-root", str(toy_root.parent / "{dataset}"), "--n-boot", "20", "--num-workers", "0",
               "--cache-dir", str(tmp_path / "cache"), "-o", str(out), *extra])
    return rc, out


class ScaledPrior(CenterPriorModel):
    """The centre prior times a number read from its checkpoint file: outputs follow the file's content."""

    takes_checkpoint = True
    preprocessing_id = "scaled-prior-test"

    def load(self, checkpoint, device):
        super().load(checkpoint, device)
        self.scale = float(open(checkpoint).read()) if checkpoint else 1.0

    def similarity_map(self, image_emb, text_emb):
        return super().similarity_map(image_emb, text_emb) * self.scale

    def score(self, image_emb, positive, negative):
        return np.full(len(image_emb), min(1.0, 0.1 * self.scale))


@pytest.fixture
def scaled():
    models.add("scaled_test", ScaledPrior, tags=("hidden",))
    yield "scaled_test"
    models.unregister("scaled_test")


def _peak(out, model="center_prior"):
    rows = json.loads((out / "results.json").read_text())["results"]["toy_test"][model]
    return next(r["point"] for r in rows if r["metric"] == "peak")


# -- 1 ---------------------------------------------------------------------------------------------
def test_1_resume_is_keyed_by_checkpoint_and_image_content_not_path(tmp_path, toy_root, scaled):
    ckpt = tmp_path / "w.txt"
    ckpt.write_text("1.0")
    rc, out = run(tmp_path, toy_root, "--ckpt", f"{scaled}={ckpt}", models_=scaled)
    assert rc == 0 and _peak(out, scaled) == pytest.approx(0.98, abs=0.01)
    ckpt.write_text("2.0")  # replaced in place: same path, other weights
    assert run(tmp_path, toy_root, "--ckpt", f"{scaled}={ckpt}", "--skip-existing", models_=scaled)[0] == 0
    assert _peak(out, scaled) == pytest.approx(2 * 0.98, abs=0.02)
    rec = json.loads((out / "results.json").read_text())["models"][scaled]
    import hashlib

    assert rec["checkpoint_sha256"] == hashlib.sha256(b"2.0").hexdigest()
    # a replaced image: the pair is recomputed too
    pair = out / "pairs" / f"toy_test__{scaled}.json"
    before = json.loads(pair.read_text())["fingerprint"]
    img = toy_root / "im001.png"
    import cv2

    cv2.imwrite(str(img), np.full((44, 50), 7, np.uint8))
    assert run(tmp_path, toy_root, "--ckpt", f"{scaled}={ckpt}", "--skip-existing", models_=scaled)[0] == 0
    assert json.loads(pair.read_text())["fingerprint"] != before


# -- 2 ---------------------------------------------------------------------------------------------
def test_2_the_cache_knows_the_adapter_code_and_survives_a_torn_entry(tmp_path, toy_root, scaled, monkeypatch):
    ckpt = tmp_path / "w.txt"
    ckpt.write_text("1.0")
    args = ("--ckpt", f"{scaled}={ckpt}")
    assert run(tmp_path, toy_root, *args, models_=scaled, out="a")[0] == 0
    _, out = run(tmp_path, toy_root, *args, models_=scaled, out="b")
    hits = json.loads((out / "pairs" / f"toy_test__{scaled}.json").read_text())["cache"]
    assert hits["hits"] > 0 and hits["misses"] == 0
    # the adapter's code changes (same preprocessing_id): its cached maps are never served again
    monkeypatch.setattr(ScaledPrior, "code_version", "changed")
    _, out = run(tmp_path, toy_root, *args, models_=scaled, out="c")
    assert json.loads((out / "pairs" / f"toy_test__{scaled}.json").read_text())["cache"]["hits"] == 0
    # a torn entry (e.g. a full disk) is recomputed and counted, never served, never fatal
    entries = sorted((tmp_path / "cache").rglob("*.arrays"))
    for e in entries:
        e.write_bytes(e.read_bytes()[:40])
    rc, out = run(tmp_path, toy_root, *args, models_=scaled, out="d")
    cache = json.loads((out / "pairs" / f"toy_test__{scaled}.json").read_text())["cache"]
    assert rc == 0 and cache["hits"] == 0 and cache["corrupt"] > 0


# -- 3 ---------------------------------------------------------------------------------------------
def test_3_regress_refuses_an_unlike_golden_and_counts_each_cell_once(tmp_path, toy_root, capsys):
    _, full = run(tmp_path, toy_root, out="full")
    _, part = run(tmp_path, toy_root, "--limit", "3", out="part")
    capsys.readouterr()
    assert main(["regress", str(part), "--against", str(full), "--tolerance", "1e-9"]) == 2
    err = capsys.readouterr().err
    assert "unlike runs" in err and "limit: 3 against None" in err and "sample_hash" in err
    assert main(["regress", str(part), "--against", str(full), "--allow-mismatch", "--all-rows"]) in (0, 1)
    out = capsys.readouterr().out
    assert "MISMATCH (allowed): limit" in out and "LIMITED RUN" in out
    assert main(["regress", str(full), "--against", str(full), "--tolerance", "1e-12"]) == 0
    n_ref = sum(len(rows) for rows in json.loads((full / "results.json").read_text())["results"]["toy_test"].values())
    assert f"{n_ref}/{n_ref} cells within tolerance" in capsys.readouterr().out  # once each, no prompt-set alias


# -- 4 ---------------------------------------------------------------------------------------------
def test_4_build_refuses_a_pair_from_two_runs_and_compare_marks_limited_runs(tmp_path, toy_root, capsys):
    _, a = run(tmp_path, toy_root, out="a")
    _, b = run(tmp_path, toy_root, out="b")
    capsys.readouterr()
    assert main(["build", str(a), str(b), "--no-paper"]) == 2
    assert "center_prior on toy_test is in both" in capsys.readouterr().err
    _, lim = run(tmp_path, toy_root, "--limit", "4", out="lim")
    _, lim2 = run(tmp_path, toy_root, "--limit", "4", models_="uniform", out="lim2")
    capsys.readouterr()
    assert main(["compare", str(lim), str(lim2), "--n-boot", "20"]) == 0
    assert "LIMITED RUN (--limit 4)" in capsys.readouterr().out
    assert main(["compare", str(a), str(lim2), "--n-boot", "20"]) == 2
    assert "unlike runs" in capsys.readouterr().err


# -- 5 ---------------------------------------------------------------------------------------------
def test_5_a_truncated_image_is_named_at_load_and_never_scored(tmp_path, capsys):
    root = toy.make_toy(tmp_path / "toy_test", n=4)
    import cv2

    cv2.imwrite(str(root / "im002.png"), (np.random.default_rng(1).random((300, 300)) * 255).astype(np.uint8))
    data = (root / "im002.png").read_bytes()
    (root / "im002.png").write_bytes(data[: len(data) // 3])
    rc, out = run(tmp_path, root)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    skipped = res["datasets"]["toy_test"]["n_run_skipped"]["center_prior"]
    reasons = json.loads((out / "pairs" / "toy_test__center_prior.json").read_text())["run_skipped"]
    assert skipped >= 1 and any("truncated PNG" in r["reason"] and r["path"].endswith("im002.png") for r in reasons)
    samples = pd.read_parquet(out / "samples" / "toy_test__center_prior.parquet")
    assert "toy/im002.png" not in set(samples["sample_id"])


# -- 6 ---------------------------------------------------------------------------------------------
def test_6_a_second_run_into_a_folder_keeps_the_first_runs_pairs(tmp_path, toy_root):
    _, out = run(tmp_path, toy_root, models_="center_prior")
    _, out = run(tmp_path, toy_root, models_="uniform")
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]["toy_test"]) == {"center_prior", "uniform"}
    assert set(res["models"]) >= {"center_prior", "uniform"}
    # other settings are refused, the record is untouched
    assert run(tmp_path, toy_root, "--n-boot", "7", models_="random")[0] == 2
    assert set(json.loads((out / "results.json").read_text())["results"]["toy_test"]) == {"center_prior", "uniform"}


# -- 7 ---------------------------------------------------------------------------------------------
def test_7_flags_and_bring_your_own_scores_are_checked(tmp_path, toy_root, capsys):
    assert run(tmp_path, toy_root, "--prompt-set", "fancy")[0] == 2
    assert "--prompt-set 'fancy': none of the datasets has it" in capsys.readouterr().err
    ckpt = tmp_path / "w.txt"
    ckpt.write_text("1")
    assert run(tmp_path, toy_root, "--ckpt", f"random={ckpt}", models_="random")[0] == 2
    assert "weight-free model and takes no checkpoint" in capsys.readouterr().err
    import argparse

    from benchmark.cli.run import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert "seeded models" not in p.format_help() and "model-option random.seed" in p.format_help()
    # score: labels other than 0/1 and non-finite scores are named, never scored
    from benchmark.cli.score import read_inputs

    path = tmp_path / "preds.npz"
    np.savez(path, heatmaps=np.random.default_rng(0).random((3, 8, 8)).astype(np.float32),
             masks=np.ones((3, 8, 8), np.uint8), categories=np.array(["A"] * 3), labels=np.array([1, 2, 0]),
             scores=np.array([0.1, 0.2, 0.3]))
    with pytest.raises(Exception, match=r"labels.*0 or 1.*\[2\]"):
        read_inputs(str(path))
    np.savez(path, heatmaps=np.random.default_rng(0).random((3, 8, 8)).astype(np.float32),
             masks=np.ones((3, 8, 8), np.uint8), categories=np.array(["A"] * 3), labels=np.array([1, 0, 0]),
             scores=np.array([0.1, np.nan, 0.3]))
    with pytest.raises(Exception, match="scores.*finite"):
        read_inputs(str(path))


# -- 8 ---------------------------------------------------------------------------------------------
def test_8_dropped_samples_are_counted_named_and_shown(tmp_path, capsys):
    root = toy.make_toy(tmp_path / "toy_test", n=6, bad=1)  # one listed image is missing
    (root / "im001.png").write_bytes(b"")  # and one is empty
    table = pd.read_csv(root / "labels.csv")
    extra = pd.DataFrame([{"image": "im003.png", "x": 5, "y": 5, "w": 20, "h": 20, "label": 1},  # repeated id
                          {"image": "im005.png", "x": 500, "y": 500, "w": 20, "h": 20, "label": 1}])  # outside
    table = table[table.image != "im005.png"]
    pd.concat([table, extra]).to_csv(root / "labels.csv", index=False)
    rc, out = run(tmp_path, root)
    assert rc == 0
    ds = json.loads((out / "results.json").read_text())["datasets"]["toy_test"]
    reasons = " | ".join(s["reason"] for s in ds["skipped"])
    assert "duplicate sample id" in reasons and "wholly outside" in reasons
    printed = capsys.readouterr().out
    assert f"toy_test: {ds['n_samples_used']} of {ds['n_samples_total']} samples used; {ds['n_skipped']} skipped by" \
        in printed
    pair = json.loads((out / "pairs" / "toy_test__center_prior.json").read_text())
    assert {"image file not found", "empty image file (0 bytes)"} <= {r["reason"].split(": ")[-1] for r in
                                                                       pair["run_skipped"]} | \
        {r["reason"] for r in pair["run_skipped"]}
    # a resume keeps the run-time skips on record
    before = ds["n_run_skipped"]
    assert run(tmp_path, root, "--skip-existing")[0] == 0
    assert json.loads((out / "results.json").read_text())["datasets"]["toy_test"]["n_run_skipped"] == before


# -- 9 ---------------------------------------------------------------------------------------------
def test_9_an_open_bound_is_explained_under_the_table():
    from benchmark.tables import OPEN_BOUND_NOTE, summary_table

    state = {"protocol": {"id": "x@1"}, "results": {"d": {"m": [
        {"task": "classification", "metric": "auroc", "category": "all", "point": 0.7, "lo": 0.6, "hi": None,
         "n": 40}]}}, "datasets": {"d": {"n_samples_used": 40, "n_samples_total": 40, "n_skipped": 0}}}
    text = summary_table(state)
    assert "0.700 [0.600, n/a]" in text and OPEN_BOUND_NOTE in text


# -- 10 --------------------------------------------------------------------------------------------
def _text_file(d):
    (d / "notes.ckpt").write_text("not a checkpoint")
    return d / "notes.ckpt"


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "missing.ckpt", "not found"),
    (lambda d: d, "not an afloc-bench checkpoint folder"),
    (_text_file, "not a PyTorch file"),
])
def test_10_a_bad_checkpoint_is_one_line_naming_the_file(tmp_path, toy_root, capsys, make, expected):
    (tmp_path / "ck").mkdir()
    target = make(tmp_path / "ck")
    rc, _ = run(tmp_path, toy_root, "--ckpt", f"afloc={target}", models_="afloc")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(target) in err[0] and expected in err[0] and "Traceback" not in err[0]


# -- 11 --------------------------------------------------------------------------------------------
def test_11_bad_input_gives_one_line_not_a_traceback(tmp_path, toy_root, capsys):
    for template in ("{}", "{foo}", "{dataset"):
        rc = main(["run", "--models", "center_prior", "--datasets", "toy_test", "--data-root", template])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--data-root" in err[0], err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [center_prior\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert str(cfg) in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, _ = run(tmp_path, toy_root, out="a_file/run")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and str(blocker) in err[0]
    # a full disk: one line naming the file, exit code 3 (the environment, not the input)
    import errno

    import benchmark.records as records

    real = records.atomic_write_bytes

    def full(path, data):
        if str(path).endswith("results.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    records.atomic_write_bytes = full
    try:
        rc, out = run(tmp_path, toy_root, out="full_disk")
    finally:
        records.atomic_write_bytes = real
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and err == [f"afloc-bench run: error: {out / 'results.json'}: no space left on the device"]
    # a non-finite box coordinate is a counted skip naming the sample (no OverflowError)
    table = pd.read_csv(toy_root / "labels.csv")
    table["x"] = table["x"].astype(float)
    table.loc[1, "x"] = float("inf")
    table.to_csv(toy_root / "labels.csv", index=False)
    rc, out = run(tmp_path, toy_root, out="inf")
    ds = json.loads((out / "results.json").read_text())["datasets"]["toy_test"]
    assert rc == 0 and any("non-finite" in s["reason"] for s in ds["skipped"])


# -- 13 --------------------------------------------------------------------------------------------
def test_13_progress_off_a_terminal_run_log_modes_and_late_flags(tmp_path, toy_root, monkeypatch, caplog):
    monkeypatch.setenv("AFLOC_BENCH_PROGRESS_EVERY", "0")
    import importlib

    import benchmark.progress

    importlib.reload(benchmark.progress)
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        rc = main(["run", "--models", "center_prior", "--datasets", "toy_test", "--protocol", "toy@1",
                   "--data-root", str(toy_root.parent / "{dataset}"), "--n-boot", "20", "--num-workers", "0",
                   "--no-cache", "-o", str(out), "-v"])  # a global flag after the subcommand
    finally:
        os.umask(old)
        monkeypatch.delenv("AFLOC_BENCH_PROGRESS_EVERY")
        importlib.reload(benchmark.progress)
    assert rc == 0
    assert any("center_prior × toy_test" in r.getMessage() and " img " in r.getMessage() for r in caplog.records)
    log_text = (out / "run.log").read_text()
    assert "center_prior × toy_test" in log_text
    assert stat.S_IMODE((out / "results.json").stat().st_mode) == 0o644
    # no data: nothing is written, and every missing root is named
    rc = main(["run", "--models", "center_prior", "--datasets", "toy_test", "--data-root",
               str(tmp_path / "nowhere" / "{dataset}"), "-o", str(tmp_path / "empty")])
    assert rc == 2 and not (tmp_path / "empty").exists()


def test_13_regress_help_names_no_path_that_does_not_exist(capsys):
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["regress", "--help"])
    text = capsys.readouterr().out
    root = Path(__file__).resolve().parents[1]
    for token in text.split():
        token = token.strip(".,;:()'\"`")
        if token.startswith("results/"):
            assert (root / token).exists(), token
