"""The CheXlocalize human benchmark as a pseudo-model: human masks returned as maps per sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from baselines.human_benchmark.adapter import HumanBenchmark
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


# ------------------------------------------------------------------ salient points (hit rate)
def _points_file(folder, data):
    path = folder / "hb_salient_pt_test.json"
    path.write_text(json.dumps(data))
    return path


def test_salient_point_hit_rule():
    """CheXlocalize's human hit: any point inside the GT → 1, none → 0, empty GT → NaN; gt[int(y), int(x)]."""
    from benchmark.protocols.chexlocalize import salient_point_hit

    gt = np.zeros((10, 8), np.uint8)  # h = 10, w = 8
    gt[4:6, 2:5] = 1
    assert salient_point_hit([(3.5, 4.2)], gt) == 1.0
    assert salient_point_hit([(0.0, 0.0), (7.9, 9.9)], gt) == 0.0
    assert salient_point_hit([(0.0, 0.0), (2.0, 5.0)], gt) == 1.0  # one inside is enough
    assert salient_point_hit([], gt) == 0.0  # a reader who marked nothing missed
    assert np.isnan(salient_point_hit([(3.5, 4.2)], np.zeros((10, 8), np.uint8)))
    assert np.isnan(salient_point_hit([], np.zeros((10, 8), np.uint8)))
    # int() truncation: the last pixel of the mask still hits, the first one past it does not
    assert salient_point_hit([(4.999, 5.999)], gt) == 1.0
    assert salient_point_hit([(5.0, 4.0)], gt) == 0.0
    assert salient_point_hit([(3.0, 6.0)], gt) == 0.0
    assert salient_point_hit([(1.999, 4.5)], gt) == 0.0
    # x is the column, y the row
    one = np.zeros((10, 8), np.uint8)
    one[1, 6] = 1
    assert salient_point_hit([(6.5, 1.5)], one) == 1.0
    assert salient_point_hit([(1.5, 6.5)], one) == 0.0
    # truncation toward zero puts (-0.5, y) in column 0; a point truly outside is ignored, never wrapped
    edge = np.zeros((10, 8), np.uint8)
    edge[3, 0] = edge[3, 7] = 1
    assert salient_point_hit([(-0.5, 3.5)], edge) == 1.0
    assert salient_point_hit([(-1.2, 3.5)], edge) == 0.0  # int → -1: not the last column
    assert salient_point_hit([(8.0, 3.5), (3.0, 10.0), (float("nan"), 3.0)], edge) == 0.0


def test_points_record_uses_the_sample_ground_truth():
    from benchmark.protocols.base import resolve_protocol

    gt = np.zeros((40, 30), np.uint8)
    gt[22:35, 8:22] = 1
    s = _sample("patient1_study1_view1_frontal", "Cardiomegaly")
    s.rles = [_rle(gt)]
    proto = resolve_protocol("chexlocalize@1")
    assert proto.points_record([(10.2, 30.7)], s, (40, 30)) == {"hit": 1.0}
    assert proto.points_record([(10.2, 5.0)], s, None) == {"hit": 0.0}  # size from the sample
    neg = _sample("patient1_study1_view1_frontal", "Edema")
    assert np.isnan(proto.points_record([(10.2, 30.7)], neg, (40, 30))["hit"])


def test_salient_points_are_read_beside_the_segmentations(hb_file):
    path, _, _ = hb_file
    _points_file(path.parent, {"patient1_study1_view1_frontal": {"Cardiomegaly": [[10.5, 25.25], [3, 4]]},
                               "patient2_study1_view1_frontal": {"Airspace Opacity": [[50.0, 2.0]]}})
    hb = HumanBenchmark()
    hb.load(str(path), "cpu")
    samples = [_sample("patient1_study1_view1_frontal", "Cardiomegaly"),
               _sample("patient2_study1_view1_frontal", "Lung Opacity", meta=False),  # alias, id from the path
               _sample("patient1_study1_view1_frontal", "Edema")]
    pts = hb.salient_points_for_samples(samples)
    assert pts == [[(10.5, 25.25), (3.0, 4.0)], [(50.0, 2.0)], []]
    d = hb.describe()
    assert d["hit_from"] == "salient points" and d["n_point_entries"] == 2
    assert d["points_file"] == str(path.parent / "hb_salient_pt_test.json")
    assert d["n_points_unmatched"] == 1 and d["points_unmatched"] == ["patient1_study1_view1_frontal/Edema"]
    assert d["n_points_outside_image"] == 1  # x = 50 on a 30-pixel-wide image: counted, cannot hit


def test_without_points_file_the_hook_gives_none(hb_file, tmp_path):
    path, _, _ = hb_file
    hb = HumanBenchmark()
    hb.load(str(path), "cpu")
    assert hb.salient_points_for_samples([_sample("patient1_study1_view1_frontal", "Cardiomegaly")]) == [None]
    assert hb.describe()["hit_from"] == "mask argmax"
    # an explicit hb_points path is used wherever it lies, and must exist
    other = tmp_path / "elsewhere"
    other.mkdir()
    _points_file(other, {"patient1_study1_view1_frontal": {"Cardiomegaly": [[1, 2]]}})
    hb = HumanBenchmark(hb_points=str(other / "hb_salient_pt_test.json"))
    hb.load(str(path), "cpu")
    assert hb.salient_points_for_samples([_sample("patient1_study1_view1_frontal", "Cardiomegaly")]) == [[(1.0, 2.0)]]
    with pytest.raises(DataError, match="not found"):
        HumanBenchmark(hb_points=str(tmp_path / "missing.json")).load(str(path), "cpu")


@pytest.mark.parametrize("data, expected", [
    ([["patient1_study1_view1_frontal", "Cardiomegaly", [1, 2]]], "top level is a list"),
    ({"patient1_study1_view1_frontal": [[1, 2]]}, "expected a mapping task"),
    ({"patient1_study1_view1_frontal": {"Cardiomegaly": {"x": 1, "y": 2}}}, "expected a list of"),
    ({"patient1_study1_view1_frontal": {"Cardiomegaly": [[1, 2, 3]]}}, "point 0: expected"),
    ({"patient1_study1_view1_frontal": {"Cardiomegaly": [[1, 2], ["1", 2]]}}, "point 1: expected"),
    ({"patient1_study1_view1_frontal": {"Cardiomegaly": [[float("nan"), 2]]}}, "two finite numbers"),
    ({"patient1_study1_view1_frontal": {"Pneumonia": [[1, 2]]}}, "10 CheXlocalize tasks"),
    ({"patient1_study1_view1_frontal": {"Airspace Opacity": [[1, 2]], "Lung Opacity": [[3, 4]]}}, "listed twice"),
])
def test_malformed_points_file_is_a_clear_error(hb_file, data, expected):
    path, _, _ = hb_file
    points = _points_file(path.parent, data)
    with pytest.raises(DataError, match=expected) as err:
        HumanBenchmark().load(str(path), "cpu")
    assert err.value.path == str(points)


def test_unreadable_points_file_is_a_clear_error(hb_file):
    path, _, _ = hb_file
    (path.parent / "hb_salient_pt_test.json").write_text("{not json")
    with pytest.raises(DataError, match=r"expected a JSON file \{cxr_id: \{task: \[\[x, y\]"):
        HumanBenchmark().load(str(path), "cpu")


# ------------------------------------------------------------------ end to end through the runner
def _write_chexlocalize(root, h=40, w=30, points=True):
    """Two test CXRs whose human hit by salient points is the opposite of the hit by the mask's argmax."""
    import cv2

    z = np.zeros((h, w), np.uint8)

    def box(r0, r1, c0, c1):
        m = z.copy()
        m[r0:r1, c0:c1] = 1
        return m

    gt = {"test": {"patient1_study1_view1_frontal": {"Cardiomegaly": box(20, 35, 10, 22)},
                   "patient2_study1_view1_frontal": {"Airspace Opacity": box(5, 12, 3, 9),
                                                     "Edema": box(25, 35, 5, 15)}},
          "val": {"patient9_study1_view1_frontal": {"Edema": box(25, 35, 5, 15)}}}
    hb = {"patient1_study1_view1_frontal": {"Cardiomegaly": box(15, 30, 10, 22)},  # first pixel (15, 10): outside GT
          "patient2_study1_view1_frontal": {"Airspace Opacity": box(5, 15, 3, 12),  # first pixel (5, 3): inside GT
                                            "Edema": box(25, 35, 5, 15)}}
    for split, cxrs in gt.items():
        for cid in cxrs:
            p, s, v = cid.split("_", 2)
            img = root / "CheXpert" / split / p / s / f"{v}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(img), np.full((h, w), 100, np.uint8))
    (root / "CheXlocalize").mkdir(parents=True)
    for split, cxrs in gt.items():
        (root / "CheXlocalize" / f"gt_segmentations_{split}.json").write_text(json.dumps(
            {c: {t: _rle(m.get(t, z)) for t in TASKS} for c, m in cxrs.items()}))
    seg = root / "CheXlocalize" / "hb_segmentations_test.json"
    seg.write_text(json.dumps({c: {t: _rle(m.get(t, z)) for t in TASKS} for c, m in hb.items()}))
    if points:
        _points_file(root / "CheXlocalize", {
            "patient1_study1_view1_frontal": {"Cardiomegaly": [[15.5, 25.5]]},  # row 25, col 15: inside the GT
            "patient2_study1_view1_frontal": {"Airspace Opacity": [[10.5, 13.5]]},  # row 13: below the GT
            # no Edema entry for patient2: a miss although the reader's mask equals the GT
        })
    return seg


def _run_human(tmp_path, root, seg):
    import pandas as pd

    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner

    out = tmp_path / "run"
    cfg = RunConfig(models=["human_benchmark"], datasets=["chexlocalize"], protocol="chexlocalize@1",
                    ckpt={"human_benchmark": str(seg)}, data_root=str(root), split="test", n_boot=20,
                    cache=False, output=str(out), num_workers=0, quiet=True, device="cpu")
    state = Runner(cfg).run()
    rec = pd.read_parquet(out / "samples" / "chexlocalize__human_benchmark.parquet")
    rec = rec[rec["task"] == "grounding"].set_index("sample_id")
    rows = {r["category"]: r["point"] for r in state["results"]["chexlocalize"]["human_benchmark"]
            if r["metric"] == "hit"}
    return rec, rows, state


def test_runner_scores_the_human_hit_on_salient_points_not_the_argmax(tmp_path):
    root = tmp_path / "chexlocalize"
    seg = _write_chexlocalize(root)
    rec, rows, _ = _run_human(tmp_path, root, seg)
    hit = rec["hit"]
    assert hit["chexlocalize/patient1_study1_view1_frontal/Cardiomegaly"] == 1.0  # argmax would say 0
    assert hit["chexlocalize/patient2_study1_view1_frontal/Airspace Opacity"] == 0.0  # argmax would say 1
    assert hit["chexlocalize/patient2_study1_view1_frontal/Edema"] == 0.0  # no point: a miss
    assert np.isnan(hit["chexlocalize/patient1_study1_view1_frontal/Edema"])  # empty GT
    assert rows["Cardiomegaly"] == 1.0 and rows["Airspace Opacity"] == 0.0 and rows["Edema"] == 0.0
    # the mIoU columns still come from the human masks
    iou = rec.loc["chexlocalize/patient2_study1_view1_frontal/Edema", "otsu_iou_tp"]
    assert iou == pytest.approx(1.0)

    # the same layout without the points file: the hit falls back to the mask's argmax
    root2 = tmp_path / "no_points" / "chexlocalize"
    seg2 = _write_chexlocalize(root2, points=False)
    rec2, rows2, state2 = _run_human(tmp_path / "no_points", root2, seg2)
    hit2 = rec2["hit"]
    assert hit2["chexlocalize/patient1_study1_view1_frontal/Cardiomegaly"] == 0.0
    assert hit2["chexlocalize/patient2_study1_view1_frontal/Airspace Opacity"] == 1.0
    assert hit2["chexlocalize/patient2_study1_view1_frontal/Edema"] == 1.0
    assert state2["models"]["human_benchmark"]["hit_from"] == "mask argmax"


# ------------------------------------------------------------------ the demo writes the official points file
def test_demo_writes_salient_points_in_the_official_format(tmp_path):
    from benchmark.demo import generate
    from benchmark.protocols.chexlocalize import salient_point_hit

    generate(tmp_path, seed=0, n_train=1, n_test=12, datasets=["chexlocalize"], progress=False, workers=1)
    folder = tmp_path / "chexlocalize" / "CheXlocalize"
    pts = json.loads((folder / "hb_salient_pt_test.json").read_text())
    hb = json.loads((folder / "hb_segmentations_test.json").read_text())
    gt = json.loads((folder / "gt_segmentations_test.json").read_text())
    assert isinstance(pts, dict) and pts and set(pts) <= set(hb)
    hits = []
    for cid, tasks in pts.items():
        assert isinstance(tasks, dict) and tasks and set(tasks) <= set(TASKS)
        for task, points in tasks.items():
            reader = mask_utils.decode(hb[cid][task])
            assert reader.any() and 1 <= len(points) <= 3
            for pt in points:
                assert isinstance(pt, list) and len(pt) == 2 and all(isinstance(v, float) for v in pt)
                assert reader[int(pt[1]), int(pt[0])]  # the official indexing lands in the reader's own mask
    for cid, tasks in gt.items():
        for task, rle in tasks.items():
            hits.append(salient_point_hit(pts.get(cid, {}).get(task, []), mask_utils.decode(rle)))
    hits = np.array(hits)
    assert np.isfinite(hits).sum() > 0 and 0.0 < np.nanmean(hits) < 1.0  # a reader who mostly, not always, hits
    # the adapter reads it from beside the segmentations
    reader = HumanBenchmark()
    reader.load(str(tmp_path / "chexlocalize"), "cpu")
    assert reader.describe()["hit_from"] == "salient points" and reader.describe()["n_point_entries"] == sum(
        len(t) for t in pts.values())
