"""Each demo dataset is written in its official format and its ground truth decodes as the
official tools decode it (pycocotools RLE, SIIM relative RLE, pydicom, LabelMe, COCO)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from benchmark.demo import generate
from benchmark.io.images import image_size, read_image

N_TEST, N_TRAIN = 6, 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = generate(out, seed=0, n_train=N_TRAIN, n_test=N_TEST, progress=False)
    return out, manifest


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def siim_decode(rle: str, height: int, width: int) -> np.ndarray:
    """The competition's relative RLE: (gap, length) pairs over column-major pixels."""
    flat = np.zeros(height * width, np.uint8)
    if rle.strip() == "-1":
        return flat.reshape(width, height).T.astype(bool)
    vals = [int(v) for v in rle.split()]
    pos = 0
    for gap, length in zip(vals[0::2], vals[1::2]):
        pos += gap
        flat[pos:pos + length] = 1
        pos += length
    return flat.reshape(width, height).T.astype(bool)


def test_manifest_counts_match_the_request(demo):
    out, m = demo
    assert json.loads((out / "manifest.json").read_text()) == m
    d = m["datasets"]
    assert d["mimic_cxr"]["counts"]["train"] == N_TRAIN
    for name in ("rsna_pneumonia", "siim_pneumothorax", "nih_bbox", "covid_rural"):
        assert d[name]["counts"]["test"] == N_TEST
    assert d["ms_cxr"]["counts"]["test"] == N_TEST and d["chexlocalize"]["counts"]["test"] == N_TEST
    assert d["chestx_det10"]["counts"]["test"] == N_TEST
    assert all(v["findings_not_drawn"] == 0 for v in d.values())
    assert m["material"]["openi_reports"] > 3900 and m["material"]["v7labs_lung_pairs_used"] > 300


def test_rsna_labels_and_dicoms(demo):
    import pydicom

    root = demo[0] / "rsna_pneumonia"
    rows = _rows(root / "stage_2_train_labels.csv")
    assert rows[0] == ["patientId", "x", "y", "width", "height", "Target"]
    cls = _rows(root / "stage_2_detailed_class_info.csv")
    assert cls[0] == ["patientId", "class"] and len(cls) == len(rows)
    pids = (root / "splits" / "test.txt").read_text().split()
    assert len(pids) == N_TEST and {r[0] for r in rows[1:]} == set(pids)
    pos, neg = 0, 0
    brighter = []
    for r in rows[1:]:
        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{r[0]}.dcm")
        assert (ds.Rows, ds.Columns) == (1024, 1024) and ds.ViewPosition in ("AP", "PA")
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.pixel_array.shape == (1024, 1024)
        if r[5] == "1":
            pos += 1
            x, y, w, h = (int(float(v)) for v in r[1:5])
            assert 0 <= x and 0 <= y and x + w <= 1024 and y + h <= 1024 and w > 0 and h > 0
            img = read_image(root / "stage_2_train_images" / f"{r[0]}.dcm").astype(float)
            mirror = img[y:y + h, 1024 - x - w:1024 - x]
            brighter.append(img[y:y + h, x:x + w].mean() - mirror.mean())
        else:
            neg += 1
            assert r[1:5] == ["", "", "", ""] and r[5] == "0"
    assert pos and neg
    assert np.mean(brighter) > 5  # the box holds the opacity: brighter than the mirrored lung


def test_siim_rle_and_photometric_semantics(demo):
    import pydicom

    root = demo[0] / "siim_pneumothorax"
    text = (root / "train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n")
    rows = [ln.split(",", 1) for ln in text.splitlines()[1:]]
    paths = {p.stem: p for p in (root / "dicom-images-train").rglob("*.dcm")}
    assert len(paths) == N_TEST and set(paths) == {r[0] for r in rows}
    for p in paths.values():  # <study>/<series>/<ImageId>.dcm
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert p.parent.name == ds.SeriesInstanceUID and p.parent.parent.name == ds.StudyInstanceUID
    by: dict[str, list[str]] = {}
    for i, r in rows:
        by.setdefault(i, []).append(r)
    assert any(v == ["-1"] for v in by.values())
    multi = [i for i, v in by.items() if len(v) > 1]
    assert multi, "several rows for a multi-part positive"
    for _i, rles in by.items():
        if rles == ["-1"]:
            continue
        masks = [siim_decode(r, 1024, 1024) for r in rles]
        assert all(m.any() for m in masks)
        assert sum(int(m.sum()) for m in masks) == int(np.logical_or.reduce(masks).sum())  # disjoint parts
    # both photometric interpretations, with correct pixel semantics
    seen = set()
    for p in paths.values():
        ds = pydicom.dcmread(p)
        raw = ds.pixel_array.astype(float)
        air = raw[-60:, :40].mean()  # below the arm, outside the body
        body = raw[-60:, 462:562].mean()  # abdomen
        seen.add(ds.PhotometricInterpretation)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert air > body  # stored inverted: air is high
        else:
            assert air < body
        disp = read_image(p).astype(float)  # the project's reader inverts MONOCHROME1
        assert disp[-60:, :40].mean() < disp[-60:, 462:562].mean()
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_mscxr_csv_and_coco_agree(demo):
    from pycocotools.coco import COCO

    from benchmark.demo import material

    root = demo[0] / "ms_cxr"
    rows = _rows(root / "MS_CXR_Local_Alignment_v1.1.0.csv")
    assert rows[0] == ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                       "image_height", "split"]
    coco = COCO(str(root / "MS_CXR_Local_Alignment_v1.1.0.json"))
    assert len(coco.getAnnIds()) == len(rows) - 1
    texts = " ".join(re.sub(r"\s+", " ", f"{r.findings} {r.impression}") for r in material.reports())
    for r, ann in zip(rows[1:], coco.loadAnns(coco.getAnnIds())):
        img = coco.loadImgs(ann["image_id"])[0]
        assert img["path"] == r[3] and r[3].startswith("files/p1")
        assert [float(v) for v in r[4:8]] == ann["bbox"] and ann["label_text"] == r[2]
        assert coco.cats[ann["category_id"]]["name"] == r[1]
        h, w = image_size(root / r[3])
        assert (w, h) == (int(r[8]), int(r[9])) == (ann["width"], ann["height"])
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        assert r[2] in texts  # a real report phrase
    for split in ("test", "val"):
        ids = (root / "splits" / f"{split}.txt").read_text().split()
        assert set(ids) == {r[0] for r in rows[1:] if r[10] == split}


def test_chexlocalize_rle_polygons_and_labels(demo):
    from pycocotools import mask as mu

    from benchmark.datasets.chexlocalize.demo import CHEXLOCALIZE_TASKS
    from benchmark.demo.encode import rasterize_polygons

    root = demo[0] / "chexlocalize"
    for split in ("val", "test"):
        seg = json.loads((root / "CheXlocalize" / f"gt_segmentations_{split}.json").read_text())
        ann = json.loads((root / "CheXlocalize" / f"gt_annotations_{split}.json").read_text())
        labels = {r[0]: r for r in _rows(root / "CheXpert" / f"{split}_labels.csv")}
        header = labels.pop("Path")
        assert header[0] == "Path" and len(header) == 15 and "Lung Opacity" in header
        assert set(seg) == set(ann)
        for cxr, tasks in seg.items():
            assert sorted(tasks) == sorted(CHEXLOCALIZE_TASKS)
            p, s, v = cxr.split("_")[:3]
            rel = f"{split}/{p}/{s}/{v}_frontal.jpg"
            h, w = image_size(root / "CheXpert" / rel)
            row = dict(zip(header, labels[rel]))
            assert any(mu.area(r) > 0 for r in tasks.values())
            for task, rle in tasks.items():
                assert rle["size"] == [h, w]
                m = mu.decode(rle).astype(bool)
                polys = ann[cxr].get(task, [])
                assert np.array_equal(m, rasterize_polygons(polys, (h, w)))
                col = "Lung Opacity" if task == "Airspace Opacity" else task
                assert (row[col] == "1.0") == bool(m.any())
    hb = json.loads((root / "CheXlocalize" / "hb_segmentations_test.json").read_text())
    test_rows = _rows(root / "CheXpert" / "test_labels.csv")[1:]
    assert len(hb) == len(test_rows) == N_TEST
    gt = json.loads((root / "CheXlocalize" / "gt_segmentations_test.json").read_text())
    agree = []
    for cxr, tasks in gt.items():
        for task, rle in tasks.items():
            a, b = mu.decode(rle).astype(bool), mu.decode(hb[cxr][task]).astype(bool)
            if a.any():
                agree.append((a & b).sum() / max(1, (a | b).sum()))
    assert 0.2 < np.mean(agree) < 0.99  # a noisy reader: close to, not equal to, the ground truth


def test_covid_rural_masks_match_labelme_polygons(demo):
    from benchmark.demo.encode import rasterize_polygons

    root = demo[0] / "covid_rural"
    jpgs = sorted((root / "jpgs").glob("*.jpg"))
    assert len(jpgs) == N_TEST
    for jp in jpgs:
        assert re.fullmatch(r"COVID-19-AR-\d{8}_\d\d-\d\d-\d{4}-XR", jp.stem)
        lm = json.loads((root / "jpgs" / "jsons" / f"{jp.stem}.json").read_text())
        assert lm["version"] == "4.5.6"
        h, w = image_size(jp)
        assert (lm["imageHeight"], lm["imageWidth"]) == (h, w)
        labels = {s["label"] for s in lm["shapes"]}
        assert {"right_lung", "left_lung"} <= labels
        polys = [s["points"] for s in lm["shapes"] if s["label"] == "groud_glass_opacity"]
        mask = read_image(root / "pngs_masks" / f"{jp.stem}.png") > 0
        assert mask.shape == (h, w)
        assert np.array_equal(mask, rasterize_polygons(polys, (h, w)) if polys else np.zeros((h, w), bool))


def test_chestx_det10_and_nih_boxes(demo):
    root = demo[0] / "chestx_det10"
    for split, folder in (("test", "test_data"), ("train", "train_data")):
        entries = json.loads((root / f"{split}.json").read_text())
        for e in entries:
            assert set(e) == {"file_name", "syms", "boxes"} and len(e["syms"]) == len(e["boxes"])
            h, w = image_size(root / folder / e["file_name"])
            for x1, y1, x2, y2 in e["boxes"]:
                assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h
    assert any(e["boxes"] for e in json.loads((root / "test.json").read_text()))
    root = demo[0] / "nih_bbox"
    lines = (root / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    entry = {r[0]: r for r in _rows(root / "Data_Entry_2017.csv")[1:]}
    assert len(entry) == N_TEST
    for ln in lines[1:]:
        name, label, *box = ln.split(",")
        assert len(box) == 4 and label in {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule",
                                           "Pneumonia", "Pneumothorax"}
        x, y, w, h = map(float, box)
        H, W = image_size(root / "images" / name)
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H
        assert (label if label != "Infiltrate" else "Infiltration") in entry[name][1].split("|")


def test_mimic_layout_reports_and_tables(demo):
    root = demo[0] / "mimic_cxr"
    split = _rows(root / "mimic-cxr-2.0.0-split.csv")
    meta = {r[0]: r for r in _rows(root / "mimic-cxr-2.0.0-metadata.csv")[1:]}
    chex = _rows(root / "mimic-cxr-2.0.0-chexpert.csv")
    assert split[0] == ["dicom_id", "study_id", "subject_id", "split"]
    assert chex[0][:2] == ["subject_id", "study_id"] and len(chex[0]) == 16
    assert sum(r[3] == "train" for r in split[1:]) == N_TRAIN
    for dicom_id, study, subject, _ in split[1:]:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        img = folder / f"s{study}" / f"{dicom_id}.jpg"
        h, w = image_size(img)
        assert meta[dicom_id][4] in ("AP", "PA") and (int(meta[dicom_id][5]), int(meta[dicom_id][6])) == (h, w)
        report = (folder / f"s{study}.txt").read_text()
        assert "FINAL REPORT" in report and ("IMPRESSION:" in report or "FINDINGS:" in report)


def _prov(out, name):
    return [json.loads(ln) for ln in (out / "provenance" / f"{name}.jsonl").read_text().splitlines()]


def test_written_boxes_are_the_bounding_boxes_of_the_drawn_masks(demo):
    """Provenance keeps each drawn lesion's mask box ([x, y, w, h], end-exclusive); every box table
    must say the same in its own convention."""
    out = demo[0]
    rows = _rows(out / "rsna_pneumonia" / "stage_2_train_labels.csv")[1:]
    written = sorted(tuple(int(float(v)) for v in r[1:5]) for r in rows if r[5] == "1")
    drawn = sorted(tuple(b) for p in _prov(out, "rsna_pneumonia") for f in p["findings"] if f["kind"] == "pneumonia"
                   for b in f["boxes"])
    assert written and written == drawn
    # MS-CXR: the phrase's finding is the first drawn finding of each image
    rows = _rows(out / "ms_cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv")[1:]
    written = sorted(tuple(int(v) for v in r[4:8]) for r in rows)
    drawn = sorted(tuple(b) for p in _prov(out, "ms_cxr") for b in p["findings"][0]["boxes"])
    assert written == drawn
    # ChestX-Det10: inclusive corners [x1, y1, x2, y2] = [x, y, x + w - 1, y + h - 1]
    entries = json.loads((out / "chestx_det10" / "test.json").read_text())
    written = sorted(tuple(b) for e in entries for b in e["boxes"])
    drawn = sorted((x, y, x + w - 1, y + h - 1) for p in _prov(out, "chestx_det10") if p["split"] == "test"
                   for f in p["findings"] for x, y, w, h in f["boxes"])
    assert written == drawn
    # NIH: one box per (image, label): the union of that finding's lesion boxes
    lines = (out / "nih_bbox" / "BBox_List_2017.csv").read_text().splitlines()[1:]
    written = sorted(tuple(int(float(v)) for v in ln.split(",")[2:6]) for ln in lines)
    drawn = []
    for p in _prov(out, "nih_bbox"):
        for f in p["findings"]:
            if f["boxes"]:
                b = np.array(f["boxes"])
                x0, y0 = b[:, 0].min(), b[:, 1].min()
                drawn.append((int(x0), int(y0), int((b[:, 0] + b[:, 2]).max() - x0),
                              int((b[:, 1] + b[:, 3]).max() - y0)))
    assert written == sorted(drawn)


def test_preview_and_cli(demo, tmp_path):
    from benchmark.cli.main import main
    from benchmark.demo.preview import contact_sheet

    png = contact_sheet(demo[0], tmp_path / "sheet.png", per_dataset=2)
    assert png.stat().st_size > 10_000
    rc = main(["-q", "demo-data", "--out", str(tmp_path / "cli"), "--n-train", "2", "--n-test", "2",
               "--datasets", "covid_rural", "--preview", str(tmp_path / "p.png")])
    assert rc == 0 and (tmp_path / "cli" / "manifest.json").is_file() and (tmp_path / "p.png").is_file()
    assert main(["-q", "demo-data", "--out", str(tmp_path / "x"), "--datasets", "nope"]) == 2
