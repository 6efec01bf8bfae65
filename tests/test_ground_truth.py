"""export-gt writes the masks each protocol scores against, in its frame."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmark import demo
from benchmark.ground_truth import export_ground_truth


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "seed0"
    demo.generate(out, seed=0, n_train=2, n_test=6, datasets=["ms_cxr"], progress=False, workers=1)
    return out


def test_afloc_compat_ground_truth_is_the_official_frame(small_demo, tmp_path, monkeypatch):
    from benchmark.dataset import build_dataset
    from benchmark.geometry.afloc import afloc_sample_mask
    from benchmark.io.images import image_size

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    summary = export_ground_truth("demo_ms_cxr", "afloc-compat@1", tmp_path / "gt.npz")
    with np.load(tmp_path / "gt.npz") as z:
        masks, ids, frame = z["masks"], [str(i) for i in z["sample_id"]], str(z["frame"])
        cats = z["categories"]
    assert frame == "letterbox:224" and masks.shape[1:] == (224, 224) and summary["n"] == len(ids) == len(cats)
    by_id = {s.sample_id: s for s in build_dataset("demo_ms_cxr").samples()}
    for i in (0, len(ids) - 1):
        s = by_id[ids[i]]
        np.testing.assert_array_equal(masks[i], afloc_sample_mask(s, 224, image_size(s.image_path)))
    assert masks.max() >= 1


def test_native_frame_masks_go_to_a_folder(small_demo, tmp_path, monkeypatch):
    import cv2

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    summary = export_ground_truth("demo_ms_cxr", "canonical@1", tmp_path / "gt", limit=3)
    rows = list(csv.DictReader((tmp_path / "gt" / "index.csv").open()))
    assert len(rows) == summary["n"] == 3 and rows[0]["frame"] == "native"
    m = cv2.imread(str(tmp_path / "gt" / rows[0]["file"]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (int(rows[0]["height"]), int(rows[0]["width"])) and m.max() == 1


def test_cli_and_unknown_protocol(small_demo, tmp_path, monkeypatch, capsys):
    from benchmark.cli.main import main

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    assert main(["-q", "export-gt", "demo_ms_cxr", "-o", str(tmp_path / "g.npz"), "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["n"] == 2
    with pytest.raises(ValueError, match="ground truth is defined for"):
        from benchmark.ground_truth import protocol_mask

        protocol_mask("toy", None, (4, 4))
