"""Pairs side by side (``run --jobs N``): the records of one process on one thread, in the plan's order."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from small_run import run_small

from benchmark.dataset import DataError
from benchmark.run import jobs as jobs_module
from benchmark.run.config import RunConfig
from benchmark.run.jobs import JobFailed, job_layout, joined_units, run_jobs
from benchmark.run.numerics import Numerics


def test_layout_one_thread_per_job_on_any_machine(monkeypatch):
    for cores in (1, 2, 64):
        monkeypatch.setattr(jobs_module, "usable_cores", lambda c=cores: c)
        assert job_layout(None, None, "cpu", 105) == (min(cores, 105), 1)  # the demo: one thread whatever the cores
        assert job_layout(None, None, "cpu", 1) == (1, 1)
    assert job_layout(3, None, "cpu", 2) == (2, 1)  # never more jobs than pairs
    assert job_layout(None, 4, "cpu", 105) == (1, 4)  # an explicit thread count: one job on it
    assert job_layout(None, None, "cpu", 10, sharded=True) == (1, 1)
    assert job_layout(None, None, "cuda", 10) == (1, None)  # a GPU run leaves torch's setting
    assert job_layout(None, 8, "cuda:0", 10) == (1, 8)


def test_flags_are_checked():
    with pytest.raises(ValueError, match="--jobs must be a positive whole number"):
        RunConfig.from_mapping({"jobs": 0})
    with pytest.raises(ValueError, match="--threads must be a positive whole number"):
        RunConfig.from_mapping({"threads": "two"})
    with pytest.raises(ValueError, match="--threads 2 needs --jobs 1"):
        RunConfig.from_mapping({"jobs": 2, "threads": 2})
    assert RunConfig.from_mapping({"jobs": "3", "threads": 1}).jobs == 3


def test_thread_count_is_part_of_the_outputs_identity():
    assert Numerics(threads=1).identity == "" and Numerics(threads=1).default
    assert Numerics(threads=2).identity == "|threads=2" and not Numerics(threads=2).default
    assert Numerics("bf16", threads=4).record() == {"precision": "bf16", "channels_last": False, "threads": 4}
    assert Numerics(device="cuda", threads=4).identity == ""  # a GPU's outputs do not depend on it


def test_units_keep_pairs_that_share_work_together():
    keys = [[("reads", "a", "x")], [("reads", "a", "y")], [("reads", "a", "x"), ("counts", "m")],
            [("reads", "b", "x")], [("reads", "b", "z"), ("counts", "m")], [("reads", "b", "y")]]
    assert joined_units(6, keys) == [[0, 2, 4], [1], [3], [5]]


def test_a_failing_job_stops_the_run_with_its_error():
    def fails(k: int) -> dict:
        if k == 2:
            raise DataError("/data/x.png", "not an image (expected PNG)")
        return {"k": k}

    got: list[int] = []
    with pytest.raises(DataError, match=r"^/data/x.png: not an image \(expected PNG\)$"):
        run_jobs(fails, [[0], [1], [2], [3]], 2, lambda k, job, r: got.append(r["k"]))
    assert 2 not in got

    def dies(k: int) -> dict:
        if k == 1:
            os._exit(3)
        return {"k": k}

    with pytest.raises(JobFailed, match="exit code 3"):
        run_jobs(dies, [[0], [1], [2]], 2, lambda k, job, r: None)


def test_jobs_give_the_numbers_of_one_process(small_run_demo, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_run_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    # GLoRIA's two heatmaps and the two CAMs share inputs and scores (one unit); Grad-CAM counts its maps
    models = "sanity,afloc,gloria,gloria_dot,gradcam:densenet121,eigencam:densenet121"
    threads = torch.get_num_threads()
    assert run_small(tmp_path / "one", models, "--jobs", "1") == 0
    assert torch.get_num_threads() == threads  # the run's one thread is not left behind
    assert run_small(tmp_path / "two", models, "--jobs", "2") == 0
    ra, rb = (json.loads((tmp_path / p / "results.json").read_text()) for p in ("one", "two"))
    assert ra["execution"] == {"jobs": 1, "threads": 1} and rb["execution"] == {"jobs": 2, "threads": 1}
    for key in ("results", "models", "datasets", "skipped_pairs"):
        assert ra[key] == rb[key], key
        assert json.dumps(ra[key]) == json.dumps(rb[key]), f"{key}: order"  # the plan's order
    assert rb["models"]["gradcam:densenet121"]["maps"]["total"] > 0
    names = sorted(p.name for p in (tmp_path / "one" / "samples").glob("*.parquet"))
    assert len(names) == 2 * 8 and names == sorted(p.name for p in (tmp_path / "two" / "samples").glob("*.parquet"))
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "samples" / name),
                                      pd.read_parquet(tmp_path / "two" / "samples" / name))
    log = (tmp_path / "two" / "run.log").read_text()
    assert "in 2 jobs side by side" in log and "[16/16]" in log
    assert "tuned afloc-compat@1 on demo_chexlocalize" in log  # the jobs' own lines reach run.log


def test_jobs_log_their_progress_instead_of_drawing_bars(monkeypatch, caplog):
    import sys

    from benchmark.progress import Progress

    caplog.set_level("INFO", logger="afloc_bench.progress")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal
    with Progress(3, "here") as bar:
        assert bar._bar is not None  # this process draws its bar
    got: list[bool] = []
    run_jobs(lambda k: {"bar": Progress(3, "in a job")._bar is not None}, [[0], [1]], 2,
             lambda k, job, r: got.append(r["bar"]))
    assert got == [False, False]  # two jobs on one terminal: log lines only


def test_a_run_keeps_families_together_and_heavy_models_apart():
    from benchmark.run.engine import PairPlan, Runner

    pairs = [(d, m) for d in ("demo_rsna", "demo_siim") for m in
             ("afloc", "afloc_untrained", "gloria", "gloria_dot", "gradcam:densenet121", "center_prior", "random",
              "conch", "biomedclip")]
    units = joined_units(len(pairs), [Runner._unit_keys(PairPlan(d, m, ["grounding"])) for d, m in pairs])
    named = sorted(sorted(f"{m}@{d[5:]}" for d, m in (pairs[k] for k in unit)) for unit in units)
    assert named == [["afloc@rsna", "afloc_untrained@rsna"], ["afloc@siim", "afloc_untrained@siim"],
                     ["biomedclip@rsna"], ["biomedclip@siim"], ["center_prior@rsna", "random@rsna"],
                     ["center_prior@siim", "random@siim"], ["conch@rsna"], ["conch@siim"],
                     ["gloria@rsna", "gloria_dot@rsna"], ["gloria@siim", "gloria_dot@siim"],
                     ["gradcam:densenet121@rsna", "gradcam:densenet121@siim"]]  # its map counts add up in one job
