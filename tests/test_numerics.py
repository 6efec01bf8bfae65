"""``--precision`` and ``--channels-last``: recorded, cached apart from fp32, and close to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import demo
from benchmark.cli.main import main
from benchmark.run.config import RunConfig
from benchmark.run.numerics import Numerics


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "seed0"
    demo.generate(out, seed=0, n_train=2, n_test=6, datasets=["ms_cxr"], progress=False, workers=1)
    return out


def _run(out: Path, *extra: str) -> dict:
    code = main(["-q", "run", "--models", "afloc,center_prior", "--datasets", "demo_ms_cxr", "--n-boot", "40",
                 "--num-workers", "0", "--batch-size", "3", "-o", str(out), *extra])
    assert code == 0
    return json.loads((out / "results.json").read_text())


def _maps(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "samples" / "demo_ms_cxr__afloc.parquet")


def test_precision_flag_is_checked():
    assert RunConfig.from_mapping({"precision": "BF16"}).precision == "bf16"
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16"):
        RunConfig.from_mapping({"precision": "fp8"})


def test_default_numerics_leave_cache_keys_as_they_were():
    assert Numerics().identity == "" and Numerics().default
    assert Numerics("bf16").identity == "|bf16"
    assert Numerics("fp32", channels_last=True).identity == "|channels_last"
    assert Numerics("fp16", channels_last=True).identity == "|fp16,channels_last"


def test_outputs_come_back_as_float32():
    n = Numerics("bf16")
    x = {"a": torch.ones(2, dtype=torch.bfloat16), "b": (torch.arange(3), [torch.zeros(1, dtype=torch.float16)]),
         "w": torch.zeros(2, dtype=torch.float64)}  # MedKLIP's entity weights are float64 on purpose
    y = n.to_float32(x)
    assert y["a"].dtype == torch.float32 and y["b"][0].dtype == torch.int64 and y["b"][1][0].dtype == torch.float32
    assert y["w"].dtype == torch.float64
    assert Numerics().to_float32(x) is x  # fp32: untouched


def test_channels_last_converts_the_adapters_modules():
    from benchmark.adapter import build_adapter

    adapter = build_adapter("afloc")
    adapter.load(None, "cpu")
    assert Numerics(channels_last=True).prepare_adapter(adapter) >= 1
    convs = [m for m in adapter.engine.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if
                         c.weight.shape[-1] > 1)
    batch = Numerics(channels_last=True).batch_to_device(torch.zeros(2, 3, 8, 8), "cpu")
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_bf16_run_is_recorded_cached_apart_and_close_to_fp32(small_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    ref = _run(tmp_path / "fp32")
    bf = _run(tmp_path / "bf16", "--precision", "bf16")  # same cache: fp32 entries must not be served
    assert ref["config"]["precision"] == "fp32" and bf["config"]["precision"] == "bf16"
    a, b = _maps(tmp_path / "fp32"), _maps(tmp_path / "bf16")
    assert list(a["sample_id"]) == list(b["sample_id"])
    assert not np.array_equal(a["cnr"].to_numpy(), b["cnr"].to_numpy())  # computed anew, in bf16
    assert np.allclose(a["cnr"].to_numpy(), b["cnr"].to_numpy(), atol=0.05)
    fp_a = json.loads((tmp_path / "fp32" / "pairs" / "demo_ms_cxr__afloc.json").read_text())["fingerprint"]
    fp_b = json.loads((tmp_path / "bf16" / "pairs" / "demo_ms_cxr__afloc.json").read_text())["fingerprint"]
    assert fp_a != fp_b
    # the floor reads no network: its numbers are the same
    assert ref["results"]["demo_ms_cxr"]["center_prior"] == bf["results"]["demo_ms_cxr"]["center_prior"]
    again = _run(tmp_path / "fp32-again")  # a default run after them still reads its own entries
    pd.testing.assert_frame_equal(_maps(tmp_path / "fp32-again"), a)
    assert again["results"]["demo_ms_cxr"]["afloc"] == ref["results"]["demo_ms_cxr"]["afloc"]
