"""The CheXlocalize human benchmark as a pseudo-model: human masks returned as maps per sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from baselines.human_benchmark import HumanBenchmark
from benchmark.dataset import DataError
from benchmark.registry import models
from benchmark.sample import Sample

TASKS = ("Airspace Opacity", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
         "Lung Lesion", "Pleural Effusion", "Pneumothorax", "Support Devices")


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


@pytest.fixture()
def hb_file(tmp_path):
    h, w = 40, 30
    heart = np.zeros((h, w), np.uint8)
    heart[20:35, 8:22] = 1
    opacity = np.zeros((h, w), np.uint8)
    opacity[5:12, 3:9] = 1
    data = {
        "patient1_study1_view1_frontal": {t: _rle(heart if t == "Cardiomegaly" else np.zeros((h, w), np.uint8))
                                          for t in TASKS},
        "patient2_study1_view1_frontal": {t: _rle(opacity if t == "Airspace Opacity" else np.zeros((h, w), np.uint8))
                                          for t in TASKS},
    }
    path = tmp_path / "CheXlocalize" / "hb_segmentations_test.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path, heart, opacity


def _sample(cid, task, meta=True, size=(40, 30)):
    patient, study, view = cid.split("_", 2)
    path = f"/data/CheXpert/test/{patient}/{study}/{view}.jpg"
    return Sample(sample_id=f"chexlocalize/{cid}/{task}", image_path=path, split="test", category=task,
                  image_id=cid, image_size=size, meta={"cxr_id": cid} if meta else {})


def test_registered_hidden_and_outside_all():
    entry = models.entry("human_benchmark")
    assert "hidden" in entry.tags and entry.capabilities == ("grounding",)
    assert "human_benchmark" not in models.resolve(["all"])
    assert models.resolve(["human_benchmark"]) == ["human_benchmark"]


def test_human_masks_are_returned_per_sample(hb_file):
    path, heart, opacity = hb_file
    hb = HumanBenchmark()
    hb.load(str(path), "cpu")
    samples = [_sample("patient1_study1_view1_frontal", "Cardiomegaly"),
               _sample("patient2_study1_view1_frontal", "Lung Opacity", meta=False),  # id from the path, alias
               _sample("patient1_study1_view1_frontal", "Edema")]
    maps = hb.similarity_map_for_samples(samples, [(40, 30)] * 3)
    np.testing.assert_array_equal(maps[0], heart.astype(np.float32))
    np.testing.assert_array_equal(maps[1], opacity.astype(np.float32))
    assert maps[2].shape == (40, 30) and not maps[2].any()
    assert hb.describe()["n_unmatched"] == 0


def test_absent_pairs_are_counted_not_dropped(hb_file):
    path, _, _ = hb_file
    hb = HumanBenchmark()
    hb.load(str(path.parent.parent), "cpu")  # a CheXlocalize root works too
    maps = hb.similarity_map_for_samples([_sample("patient9_study1_view1_frontal", "Edema")])
    assert maps[0].shape == (40, 30) and not maps[0].any()
    assert hb.describe()["unmatched"] == ["patient9_study1_view1_frontal/Edema"]


def test_needs_the_file_and_the_sample_hook(tmp_path):
    with pytest.raises(DataError, match="hb_segmentations_test.json"):
        HumanBenchmark().load(None, "cpu")
    with pytest.raises(DataError, match="not found"):
        HumanBenchmark().load(str(tmp_path / "missing.json"), "cpu")
    with pytest.raises(NotImplementedError, match="similarity_map_for_samples"):
        HumanBenchmark().similarity_map(None, None)


def test_scored_by_the_chexlocalize_protocol(hb_file):
    """The human mask goes through the same metric code as a model map (native geometry)."""
    from benchmark.protocols.base import resolve_protocol

    path, heart, _ = hb_file
    hb = HumanBenchmark()
    hb.load(str(path), "cpu")
    gt = np.zeros_like(heart)
    gt[22:35, 8:22] = 1  # radiologists' ground truth overlapping the human benchmark
    s = _sample("patient1_study1_view1_frontal", "Cardiomegaly")
    s.rles = [_rle(gt)]
    grid = hb.similarity_map_for_samples([s])[0]
    rec = resolve_protocol("chexlocalize@1").grounding_record(grid, s, (40, 30), hb.input_geometry)
    expected = (heart & gt).sum() / (heart | gt).sum()
    assert rec["otsu_iou_tp"] == pytest.approx(expected)
    assert rec["iou_tp@0.5"] == pytest.approx(expected)
