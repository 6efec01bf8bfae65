"""End-to-end runs of the sanity models on a toy dataset: records, schema, cache, resume, limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import toy
import yaml

from benchmark.cli.main import main
from benchmark.records import RESULTS_REQUIRED_KEYS, SCHEMA_VERSION, validate_results
from benchmark.run.config import RunConfig
from benchmark.run.engine import Runner

toy.register()


@pytest.fixture
def toy_root(tmp_path):
    return toy.make_toy(tmp_path / "toy_test")


def _run(tmp_path, toy_root, *extra):
    out = tmp_path / "run"
    rc = main(["-q", "run", "--models", "sanity", "--datasets", "toy_test", "--protocol", "toy@1",
               "--data-root", str(toy_root.parent / "{dataset}"), "--n-boot", "50", "--num-workers", "0",
               "-o", str(out), *extra])
    return rc, out


def test_run_writes_complete_versioned_record(tmp_path, toy_root, capsys):
    rc, out = _run(tmp_path, toy_root)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert validate_results(res) == []
    for k in RESULTS_REQUIRED_KEYS:
        assert k in res
    assert res["schema_version"] == SCHEMA_VERSION
    assert res["config"]["n_boot"] == 50 and res["protocol"]["id"] == "toy@1"
    ds = res["datasets"]["toy_test"]
    assert ds["n_samples_used"] == 6 and ds["card_version"] == "1" and len(ds["sample_hash"]) == 64
    assert set(res["results"]["toy_test"]) == {"random", "uniform", "center_prior"}
    rows = res["results"]["toy_test"]["center_prior"]
    tasks = {r["task"] for r in rows}
    assert tasks == {"grounding", "classification"}
    peak = [r for r in rows if r["metric"] == "center_ratio"][0]
    assert peak["point"] > 0 and peak["n"] == 3
    assert peak["lo"] - 1e-12 <= peak["boot_mean"] <= peak["hi"] + 1e-12
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["numpy"] and env["device"] == "cpu"
    # the SIMD paths that decide the last bits of demo data and CPU training are on record
    import torch

    assert env["cpu_simd"]["torch"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_simd"]["numpy"] and env["cpu_simd"]["opencv"]
    samples = pd.read_parquet(out / "samples" / "toy_test__random.parquet")
    assert {"sample_id", "image_id", "patient_id", "category", "label", "split", "task"} <= set(samples.columns)
    assert len(samples[samples.task == "grounding"]) == 3 and len(samples[samples.task == "classification"]) == 6
    assert "center_prior" in capsys.readouterr().out


def test_uniform_and_center_prior_differ_and_random_is_reproducible(tmp_path, toy_root):
    _, out1 = _run(tmp_path / "a", toy_root, "--no-cache")
    _, out2 = _run(tmp_path / "b", toy_root, "--no-cache")
    s1 = pd.read_parquet(out1 / "samples" / "toy_test__random.parquet")
    s2 = pd.read_parquet(out2 / "samples" / "toy_test__random.parquet")
    pd.testing.assert_frame_equal(s1, s2)
    u = pd.read_parquet(out1 / "samples" / "toy_test__uniform.parquet")
    assert (u.loc[u.task == "grounding", "center_ratio"] == 0).all()


def test_random_seed_changes_maps(tmp_path, toy_root):
    _, out1 = _run(tmp_path / "a", toy_root, "--seed", "0")
    _, out2 = _run(tmp_path / "b", toy_root, "--seed", "1")
    # the seed is a bootstrap seed; the random model's own seed is an adapter option
    _, out3 = _run(tmp_path / "c", toy_root, "--model-option", "random.seed=5")
    r1 = pd.read_parquet(out1 / "samples" / "toy_test__random.parquet")
    r3 = pd.read_parquet(out3 / "samples" / "toy_test__random.parquet")
    assert not r1["peak"].equals(r3["peak"])


def test_cache_is_used_on_second_run(tmp_path, toy_root):
    _run(tmp_path / "a", toy_root)
    _, out = _run(tmp_path / "b", toy_root)
    pair = json.loads((out / "pairs" / "toy_test__center_prior.json").read_text())
    assert pair["cache"]["hits"] > 0


def test_cache_keys_carry_the_weights_fingerprint_of_a_model_without_checkpoint(tmp_path, toy_root, monkeypatch):
    """An adapter whose weights no checkpoint file names (``weights_fingerprint``) must not be
    served the heatmaps cached from other weights: a changed fingerprint misses, the same one hits."""
    from baselines.sanity.adapter import CenterPriorModel

    def hits(run: str) -> int:
        _, out = _run(tmp_path / run, toy_root)
        return json.loads((out / "pairs" / "toy_test__center_prior.json").read_text())["cache"]["hits"]

    monkeypatch.setattr(CenterPriorModel, "weights_fingerprint", lambda self: "weights-a")
    assert hits("a") == 0
    assert hits("b") > 0
    monkeypatch.setattr(CenterPriorModel, "weights_fingerprint", lambda self: "weights-b")
    assert hits("c") == 0


def test_skip_existing_resumes_without_recomputing(tmp_path, toy_root, monkeypatch):
    rc, out = _run(tmp_path, toy_root)
    assert rc == 0
    first = json.loads((out / "results.json").read_text())

    def boom(*a, **k):
        raise AssertionError("a finished pair was recomputed")

    monkeypatch.setattr(Runner, "_records", boom)
    rc, _ = _run(tmp_path, toy_root, "--skip-existing")
    assert rc == 0
    again = json.loads((out / "results.json").read_text())
    assert again["results"] == first["results"]
    # a run with other settings is refused in this folder (its record would mix two settings)
    assert _run(tmp_path, toy_root, "--skip-existing", "--n-boot", "20")[0] == 2


def test_skip_existing_redoes_a_pair_whose_fallback_weights_changed(tmp_path, toy_root, monkeypatch):
    """Without --ckpt a model may fall back to versioned weights (the demo models, ``demo_weights`` in
    its manifest entry); a new version must invalidate the finished pairs although no flag changed."""
    from benchmark.registry import models

    entry = models.entry("center_prior")
    monkeypatch.setitem(entry.fields, "demo_weights", "demo-1")
    assert _run(tmp_path, toy_root)[0] == 0
    log = tmp_path / "redone.log"  # a file: pairs may run in forked jobs (--jobs)
    real = Runner._records

    def spy(self, *a, **k):
        with open(log, "a") as f:
            f.write("x")
        return real(self, *a, **k)

    monkeypatch.setattr(Runner, "_records", spy)
    assert _run(tmp_path, toy_root, "--skip-existing")[0] == 0
    assert not log.exists()
    monkeypatch.setitem(entry.fields, "demo_weights", "demo-2")
    assert _run(tmp_path, toy_root, "--skip-existing")[0] == 0
    assert log.read_text()


def test_demo_backed_models_name_their_demo_weights_and_the_recipe_that_builds_them():
    from benchmark.adapter import build_adapter
    from benchmark.registry import models, training

    for name, target in (("afloc", "afloc"), ("gloria", "gloria"), ("gloria_dot", "gloria"), ("convirt", "convirt"),
                         ("biovil", "biovil"), ("medklip", "medklip"), ("gradcam:densenet121", "classifier")):
        entry = models.entry(name)
        assert entry.get("train") == target and target in training, name
        assert entry.get("demo_weights", "").startswith(("afloc-demo-", f"{target}-demo-")), name
        a = build_adapter(name)
        assert (a.demo_weights, a.train_target) == (entry.get("demo_weights"), target)
    assert models.entry("gloria").get("demo_weights") == models.entry("gloria_dot").get("demo_weights")
    assert models.entry("center_prior").get("demo_weights") is None
    a = build_adapter("center_prior")
    with pytest.raises(ValueError, match="has no demo weights; give a checkpoint"):
        a.demo_checkpoint()


def _interrupted_at(pair: int):
    """``Runner._run_pair`` that stops the run with Ctrl-C when it reaches pair number ``pair``."""
    calls = {"n": 0}
    real = Runner._run_pair

    def flaky(self, plan, state):
        calls["n"] += 1
        if calls["n"] == pair:
            raise KeyboardInterrupt
        return real(self, plan, state)

    return flaky


def test_interrupted_run_resumes(tmp_path, toy_root, monkeypatch):
    real = Runner._run_pair
    monkeypatch.setattr(Runner, "_run_pair", _interrupted_at(2))
    rc, out = _run(tmp_path, toy_root)
    assert rc == 130
    done = sorted(p.name for p in (out / "pairs").iterdir())
    assert done == ["toy_test__center_prior.json"]
    monkeypatch.setattr(Runner, "_run_pair", real)
    rc, out = _run(tmp_path, toy_root, "--skip-existing")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]["toy_test"]) == {"random", "uniform", "center_prior"}


def test_run_record_is_a_throttled_snapshot_written_whenever_the_run_ends(tmp_path, toy_root, monkeypatch):
    import benchmark.run.engine as engine

    writes = []
    real_write = engine.atomic_write_json

    def counted(path, obj):
        if Path(path).name == "results.json":
            writes.append(sorted((obj.get("results") or {}).get("toy_test", {})))
        return real_write(path, obj)

    monkeypatch.setattr(engine, "atomic_write_json", counted)
    monkeypatch.setattr(Runner, "SNAPSHOT_S", 1e9)
    assert _run(tmp_path, toy_root)[0] == 0
    assert len(writes) == 2 and len(writes[-1]) == 3  # after the first pair, then at the end
    monkeypatch.setattr(Runner, "_run_pair", _interrupted_at(3))
    rc, out = _run(tmp_path / "stopped", toy_root)
    assert rc == 130
    assert len(json.loads((out / "results.json").read_text())["results"]["toy_test"]) == 2


def test_limit_recorded_and_marked(tmp_path, toy_root, capsys):
    rc, out = _run(tmp_path, toy_root, "--limit", "4")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["limit"] == 4 and res["datasets"]["toy_test"]["n_samples_used"] == 4
    printed = capsys.readouterr().out
    assert "LIMITED RUN" in printed and "(limit 4)" in printed


def test_missing_images_are_counted_not_dropped(tmp_path):
    root = toy.make_toy(tmp_path / "toy_test", n=4, bad=2)
    rc, out = _run(tmp_path, root)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    pair = json.loads((out / "pairs" / "toy_test__random.json").read_text())
    assert pair["n_run_skipped"] == 2 + 1  # two missing images: 1 positive (grounding) + 2 (classification)
    assert all("not found" in s["reason"] for s in pair["run_skipped"])
    assert min(res["datasets"]["toy_test"]["n_run_skipped"].values()) >= 1


def test_config_file_and_flag_override(tmp_path, toy_root):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"models": "uniform", "datasets": ["toy_test"], "protocol": "toy@1",
                                        "n_boot": 7, "seed": 3, "data_root": str(toy_root.parent / "{dataset}"),
                                        "num_workers": 0, "output": str(tmp_path / "from_yaml")}))
    out = tmp_path / "from_flag"
    rc = main(["-q", "run", "--config", str(cfg_path), "--n-boot", "11", "-o", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["n_boot"] == 11 and res["config"]["seed"] == 3
    assert res["config"]["models"] == ["uniform"]
    assert not (tmp_path / "from_yaml").exists()


def test_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        RunConfig.from_mapping({"modles": "all"}, "run.yaml")


def test_bad_ckpt_flag(tmp_path, toy_root):
    rc, _ = _run(tmp_path, toy_root, "--ckpt", "random")
    assert rc == 2


@pytest.mark.parametrize("flag,value,message", [("--batch-size", "0", "--batch-size must be a positive"),
                                                ("--num-workers", "-1", "--num-workers must be >= 0"),
                                                ("--device", "gpu", "--device must be auto, cpu or cuda")])
def test_bad_execution_flags_are_named(tmp_path, toy_root, capsys, flag, value, message):
    rc, _ = _run(tmp_path, toy_root, flag, value)
    assert rc == 2 and message in capsys.readouterr().err


def test_a_cuda_device_torch_cannot_see_is_an_error_before_any_model_loads(monkeypatch):
    import torch

    from benchmark.run.config import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        choose_device("cuda")
    assert choose_device("auto") == "cpu" and choose_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == "cuda:1" and choose_device("auto") == "cuda"
    for bad in ("cuda:2", "cuda:x"):
        with pytest.raises(ValueError, match="torch sees 2 CUDA device"):
            choose_device(bad)


def test_unknown_model_fails_fast_without_loading_torch():
    code = ("import sys; from benchmark.cli.main import main; rc = main(['run', '--models', 'nosuchmodel', "
            "'--datasets', 'demo']); print('RC', rc, 'TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RC 2 TORCH False" in out.stdout, out.stdout + out.stderr
    assert "nosuchmodel" in out.stderr


def test_unknown_dataset_suggests():
    code = "from benchmark.cli.main import main; import sys; sys.exit(main(['run', '--datasets', 'toy_tesst']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown dataset 'toy_tesst'" in out.stderr


def test_runner_hooks_per_sample_maps_and_grounding_probability(tmp_path, toy_root):
    import numpy as np

    from baselines.sanity.adapter import CenterPriorModel
    from benchmark.registry import models

    class PerSample(CenterPriorModel):
        input_geometry = "native"
        preprocessing_id = "per-sample-test"
        per_sample_maps = True

        def similarity_map_for_samples(self, samples, image_sizes):
            return [np.full(size, float(i)) for i, size in enumerate(image_sizes)]

    class WithProb(CenterPriorModel):
        preprocessing_id = "with-prob-test"
        grounding_probability = True

        def score(self, image_emb, positive, negative):
            return np.full(len(image_emb), 0.25)

    models.add("per_sample_test", PerSample, tags=("hidden",))
    models.add("with_prob_test", WithProb, tags=("hidden",))
    try:
        out = tmp_path / "run"
        assert main(["-q", "run", "--models", "per_sample_test,with_prob_test", "--datasets", "toy_test",
                     "--protocol", "toy@1", "--data-root", str(toy_root.parent / "{dataset}"), "--n-boot", "5",
                     "--num-workers", "0", "-o", str(out)]) == 0
        per = pd.read_parquet(out / "samples" / "toy_test__per_sample_test.parquet")
        g = per[per.task == "grounding"]
        assert list(g["peak"]) == [0.0, 1.0, 2.0]  # one map per sample, in order
        wp = pd.read_parquet(out / "samples" / "toy_test__with_prob_test.parquet")
        assert (wp.loc[wp.task == "grounding", "prob"] == 0.25).all()
    finally:
        models.unregister("per_sample_test")
        models.unregister("with_prob_test")


def test_prompts_a_model_cannot_score_are_skipped_and_counted(tmp_path, toy_root):
    """A fixed-label model (Grad-CAM classifier) refusing a finding must not stop the run."""
    from baselines.sanity.adapter import CenterPriorModel
    from benchmark.registry import models

    asked = []

    class Refusing(CenterPriorModel):
        preprocessing_id = "refusing-test"

        def unsupported(self, query):
            asked.append(query.text)
            return "no output for this finding" if query.finding == "Pneumonia" else None

    models.add("refusing_test", Refusing, tags=("hidden",))
    try:
        out = tmp_path / "run"
        assert main(["-q", "run", "--models", "refusing_test,center_prior", "--datasets", "toy_test",
                     "--protocol", "toy@1", "--data-root", str(toy_root.parent / "{dataset}"), "--n-boot", "5",
                     "--num-workers", "0", "-o", str(out)]) == 0
        pair = json.loads((out / "pairs" / "toy_test__refusing_test.json").read_text())
        ref = json.loads((out / "pairs" / "toy_test__center_prior.json").read_text())
        samples = pd.read_parquet(out / "samples" / "toy_test__center_prior.parquet")
        assert pair["n_run_skipped"] == len(samples) > 0  # every toy sample names pneumonia
        assert all("cannot score this prompt: no output for this finding" in s["reason"] for s in pair["run_skipped"])
        assert ref["n_run_skipped"] == 0
        assert len(set(asked)) == len(asked)  # asked once per distinct prompt
    finally:
        models.unregister("refusing_test")


def test_record_file_stems_are_portable_and_reversible():
    from benchmark.records import parse_stem, record_stem

    stem = record_stem("demo_chexlocalize", "gradcam++:densenet121")
    assert stem == "demo_chexlocalize__gradcam++%3Adensenet121"
    assert not set(stem) & set(':<>"/\\|?*')
    assert parse_stem(stem) == ("demo_chexlocalize", "gradcam++:densenet121")
    assert parse_stem("demo_rsna__clip:openai") == ("demo_rsna", "clip:openai")  # runs written before
    with pytest.raises(ValueError, match="not <dataset>__<model>"):
        parse_stem("results")


def test_sample_hash_does_not_depend_on_where_the_dataset_lives(tmp_path, monkeypatch):
    """COVID Rural's ground truth is mask files: the hash takes them relative to the dataset root,
    so the same collection in two folders (two caches, two machines) is recognised as the same."""
    import shutil

    from benchmark.demo import generate

    first = tmp_path / "a" / "demo"
    generate(first, n_train=8, n_test=6, datasets=["covid_rural"], progress=False, workers=1)
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, moved)
    hashes = []
    for root in (first, moved):
        monkeypatch.setenv("AFLOC_BENCH_DEMO", str(root))
        out = tmp_path / f"run-{root.name}-{len(hashes)}"
        assert main(["-q", "run", "--models", "uniform", "--datasets", "demo_covid_rural", "--n-boot", "0",
                     "--no-cache", "--num-workers", "0", "-o", str(out)]) == 0
        ds = json.loads((out / "results.json").read_text())["datasets"]["demo_covid_rural"]
        assert ds["root"].startswith(str(root)) and ds["n_samples_used"] > 0
        hashes.append(ds["sample_hash"])
    assert hashes[0] == hashes[1]
