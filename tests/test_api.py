"""The Python API (``import afloc_bench``) gives the command line's numbers, and docs/api.md runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import afloc_bench as ab
from benchmark import demo
from benchmark.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "seed0"
    demo.generate(out, seed=0, n_train=2, n_test=6, datasets=["ms_cxr"], progress=False, workers=1)
    return out


@pytest.fixture
def demo_env(small_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_evaluate_equals_the_command_line(demo_env, capsys):
    args = ["--models", "afloc,center_prior", "--datasets", "demo_ms_cxr", "--n-boot", "50", "--num-workers", "0"]
    assert main(["-q", "run", *args, "-o", str(demo_env / "cli")]) == 0
    capsys.readouterr()
    run = ab.evaluate("afloc,center_prior", "demo_ms_cxr", n_boot=50, num_workers=0, output=demo_env / "api")
    cli = json.loads((demo_env / "cli" / "results.json").read_text())
    assert run.record["results"] == cli["results"]
    table = run.table()
    assert len(table) == sum(len(rows) for m in cli["results"].values() for rows in m.values())
    cell = table.query("model == 'afloc' and metric == 'iou' and category == 'all'").iloc[0]
    assert cell["point"] == next(r["point"] for r in cli["results"]["demo_ms_cxr"]["afloc"]
                                 if r["metric"] == "iou" and r["category"] == "all")
    assert len(run.samples("demo_ms_cxr", "afloc")) == cell["n"]
    with pytest.raises(KeyError, match="no records of 'biovil'"):
        run.samples("demo_ms_cxr", "biovil")
    assert ab.RunResult.open(demo_env / "api").record == run.record
    with pytest.raises(ValueError, match="unknown key"):
        ab.evaluate("afloc", "demo_ms_cxr", n_bootstrap=5)


def test_heatmaps_are_the_maps_a_run_saves(demo_env):
    ds = ab.load_dataset("demo_ms_cxr")
    model = ab.load_model("afloc", device="cpu")
    run = ab.evaluate("afloc", "demo_ms_cxr", n_boot=0, num_workers=0, batch_size=2, output=demo_env / "run",
                      save_heatmaps=3)
    with np.load(run.folder / "heatmaps" / "demo_ms_cxr__afloc.npz") as z:
        ids, saved = [str(i) for i in z["sample_id"]], z["grid"]
    by_id = {s.sample_id: s for s in ds.samples()}
    grids = ab.heatmaps(model, [by_id[i] for i in ids], dataset=ds, batch_size=2)
    assert len(grids) == len(ids) == 3
    # the same maps; batches of other images and prompts move only the last bits
    np.testing.assert_allclose(np.stack(grids), saved, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        ab.load_model("chexzero")


def test_score_heatmaps_equals_score_command(tmp_path, capsys):
    rng = np.random.default_rng(1)
    maps = rng.random((5, 64, 64)).astype(np.float32)
    masks = np.zeros((5, 64, 64), dtype=np.uint8)
    masks[:, 10:40, 20:50] = 1
    cats = np.array(["A", "B", "A", "B", "A"])
    np.savez(tmp_path / "p.npz", heatmaps=maps, masks=masks, categories=cats)
    assert main(["score", "--input", str(tmp_path / "p.npz"), "--protocol", "canonical@1", "--n-boot", "30",
                 "--json", str(tmp_path / "out.json")]) == 0
    capsys.readouterr()
    got = ab.score_heatmaps(maps, masks, list(cats), protocol="canonical@1", n_boot=30)
    assert got["metrics"] == json.loads((tmp_path / "out.json").read_text())["metrics"]


def test_docs_api_page_runs_as_written(demo_env, capsys):
    blocks = re.findall(r"```python\n(.*?)\n```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - the page's own example
    assert "afloc" in capsys.readouterr().out
