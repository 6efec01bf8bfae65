"""Sharded runs (``run --shard i/N``, torchrun) joined by ``merge`` give the numbers of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from small_run import DATASETS, run_small

from benchmark.cli.main import main
from benchmark.run.config import RunConfig
from benchmark.run.shards import shard_samples
from benchmark.sample import Sample


def _same_numbers(a: Path, b: Path) -> None:
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    assert ra["results"] == rb["results"]
    assert ra["models"] == rb["models"] and ra["skipped_pairs"] == rb["skipped_pairs"]
    for d in ra["datasets"]:
        assert ra["datasets"][d] == {**rb["datasets"][d], "root": ra["datasets"][d]["root"]}
    names = sorted(p.name for p in (a / "samples").glob("*.parquet"))
    assert names == sorted(p.name for p in (b / "samples").glob("*.parquet")) and names
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(a / "samples" / name), pd.read_parquet(b / "samples" / name))
    for name in names:  # the tuned thresholds too
        pa, pb = (json.loads((p / "pairs" / name.replace(".parquet", ".json")).read_text()) for p in (a, b))
        assert pa["protocol_params"] == pb["protocol_params"] and pa["n_run_skipped"] == pb["n_run_skipped"]


def test_shard_spec_is_checked():
    assert RunConfig(shard="1/3").shard_position() == (1, 3)
    for bad in ("3/3", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard expects i/N"):
            RunConfig.from_mapping({"shard": bad})


def test_shards_partition_by_image_in_order():
    samples = [Sample(sample_id=f"s{i}", image_path=f"img{i // 3}.png", split="test", category="Pneumonia")
               for i in range(14)]
    parts = [shard_samples(samples, i, 3) for i in range(3)]
    assert sorted(s.sample_id for p in parts for s in p) == sorted(s.sample_id for s in samples)
    for p in parts:
        assert [s.sample_id for s in p] == [s.sample_id for s in samples if s in p]  # dataset order kept
    assert {s.image_path for s in parts[0]} == {"img0.png", "img3.png"}  # whole images: k % 3 == 0
    blocks = shard_samples(samples, 1, 2, block=2)  # batches of two images: the 2nd and 4th batch
    assert sorted({s.image_path for s in blocks}) == ["img2.png", "img3.png"]


def test_counters_add_up_across_shards():
    from benchmark.run.shards import merged_model_record

    records = [{"model_id": "m", "seed": 3, "maps": {"total": 5, "all_zero": 1}, "unmatched": ["a"]},
               {"model_id": "m", "seed": 3, "maps": {"total": 4, "all_zero": 0}, "unmatched": ["b", "c"]}]
    out = merged_model_record(records, ("maps", "unmatched"))
    assert out == {"model_id": "m", "seed": 3, "maps": {"total": 9, "all_zero": 1}, "unmatched": ["a", "b", "c"]}


def test_shards_merge_to_the_numbers_of_one_process(small_run_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_run_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    # BioViL's text encoder rounds differently with its batch; Grad-CAM counts its maps (summed)
    models = "sanity,afloc,biovil,gradcam:densenet121"
    assert run_small(tmp_path / "one", models) == 0
    for i in range(2):
        assert run_small(tmp_path / f"shard-{i}", models, "--shard", f"{i}/2") == 0
        shard = json.loads((tmp_path / f"shard-{i}" / "results.json").read_text())
        assert shard["shard"] == {"index": i, "count": 2}
        assert all(rows == [] for m in shard["results"].values() for rows in m.values())  # nothing summarised
        n = len(pd.read_parquet(tmp_path / f"shard-{i}" / "samples" / "demo_ms_cxr__afloc.parquet"))
        assert 0 < n < len(pd.read_parquet(tmp_path / "one" / "samples" / "demo_ms_cxr__afloc.parquet"))
    assert (tmp_path / "shard-0" / "tuning").is_dir()  # its share of CheXlocalize's val records
    assert main(["-q", "merge", str(tmp_path / "shard-1"), str(tmp_path / "shard-0"), "-o", str(tmp_path / "m")]) == 0
    _same_numbers(tmp_path / "one", tmp_path / "m")
    capsys.readouterr()
    assert main(["-q", "merge", str(tmp_path / "shard-0"), "-o", str(tmp_path / "x")]) == 2
    assert "shards 1/2 missing" in capsys.readouterr().err
    assert main(["-q", "merge", str(tmp_path / "one"), "-o", str(tmp_path / "y")]) == 2
    assert "not a shard of a run" in capsys.readouterr().err


def test_torchrun_ranks_write_one_run_with_the_numbers_of_one_process(small_run_demo, tmp_path):
    env = {**os.environ, "AFLOC_BENCH_DEMO": str(small_run_demo), "AFLOC_BENCH_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    args = ["run", "--models", "sanity", "--datasets", DATASETS, "--n-boot", "40", "--num-workers", "0",
            "--batch-size", "2", "--no-cache"]
    one = subprocess.run([sys.executable, "-m", "benchmark.cli.main", "-q", *args, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "benchmark.cli.main", "-q", *args, "-o", str(tmp_path / "two")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    assert ranks.stdout.count("run record:") == 1  # rank 0 alone prints the tables
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == ["rank-0", "rank-1"]
    _same_numbers(tmp_path / "one", tmp_path / "two")
