"""Hand-written fixtures in the official formats: MS-CXR (csv + COCO json), CheXlocalize (RLE json written
with pycocotools), COVID Rural (png masks + LabelMe), ChestX-Det10, SICAPv2 (xlsx), MIMIC-CXR."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from datasets_fixtures import write_json, write_png

from benchmark.datasets.chestx_det10.loader import ChestXDet10
from benchmark.datasets.chexlocalize.loader import CheXlocalize, cxr_id_of, human_benchmark_mask, human_benchmark_masks
from benchmark.datasets.covid_rural.loader import CovidRural, afloc_rstrip_corruptions
from benchmark.datasets.mimic_cxr.loader import MIMICCXR, extract_report
from benchmark.datasets.ms_cxr.loader import MSCXR
from benchmark.datasets.sicapv2.loader import SICAPv2
from benchmark.geometry.rasterize import decode_rle

# --------------------------------------------------------------------------------------------- MS-CXR
MS_ROWS = [
    # dicom_id, category, label_text, subject, study, x, y, w, h, W, H, split
    ("d1", "Pneumonia", "Left lower lobe consolidation", "10000032", "50414267", 100, 200, 50, 60, 400, 300, "test"),
    ("d1", "Pneumonia", "left lower lobe consolidation", "10000032", "50414267", 300, 210, 40, 30, 400, 300, "test"),
    ("d1", "Pleural Effusion", "small right effusion", "10000032", "50414267", 20, 150, 60, 80, 400, 300, "test"),
    ("d2", "Cardiomegaly", "Enlarged heart", "11000011", "51000011", 120, 100, 160, 120, 300, 400, "train"),
    ("d2", "Pneumonia", "patchy opacity", "11000011", "51000011", 10, 10, 20, 20, 300, 400, "train"),
    ("d2", "Pneumonia", "right base opacity", "11000011", "51000011", 50, 50, 20, 20, 300, 400, "train"),
]


def ms_path(r) -> str:
    return f"files/p{r[3][:2]}/p{r[3]}/s{r[4]}/{r[0]}.jpg"


def write_ms_cxr(root: Path, version: str = "1.1.0", with_json: bool = True, with_csv: bool = True) -> Path:
    stem = f"MS_CXR_Local_Alignment_v{version}"
    if with_csv:
        with open(root / f"{stem}.csv", "w", newline="") as f:
            w = csv.writer(f)
            head = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                    "image_width", "image_height"]
            w.writerow(head + (["split"] if version == "1.1.0" else []))
            for r in MS_ROWS:
                w.writerow([r[0], r[1], r[2], ms_path(r), *r[5:11]] + ([r[11]] if version == "1.1.0" else []))
    if with_json:
        cats = sorted({r[1] for r in MS_ROWS})
        images, anns = {}, []
        for i, r in enumerate(MS_ROWS):
            if r[0] not in images:
                images[r[0]] = {"id": len(images) + 1, "file_name": f"{r[0]}.jpg", "path": ms_path(r),
                                "width": r[9], "height": r[10]}
            anns.append({"id": i + 1, "image_id": images[r[0]]["id"], "category_id": cats.index(r[1]) + 1,
                         "bbox": [r[5], r[6], r[7], r[8]], "area": r[7] * r[8], "iscrowd": 0,
                         "width": r[9], "height": r[10], "label_text": r[2]})
        write_json(root / f"{stem}.json", {"info": {}, "licenses": [], "images": list(images.values()),
                                            "annotations": anns,
                                            "categories": [{"id": i + 1, "name": c, "supercategory": "disease"}
                                                           for i, c in enumerate(cats)]})
    for r in MS_ROWS:
        if not (root / ms_path(r)).exists():
            write_png(root / ms_path(r), r[10], r[9])  # JPEG name, any raster codec works for the header
    return root


def test_ms_cxr_json_is_loadable_by_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    write_ms_cxr(tmp_path)
    coco = COCO(str(tmp_path / "MS_CXR_Local_Alignment_v1.1.0.json"))
    assert len(coco.anns) == 6 and {c["name"] for c in coco.cats.values()} == {r[1] for r in MS_ROWS}


def test_ms_cxr_merges_boxes_per_lowercased_phrase(tmp_path):
    write_ms_cxr(tmp_path)
    ds = MSCXR(tmp_path)
    s = ds.samples()
    assert ds.stats["source"] == "MS_CXR_Local_Alignment_v1.1.0.json"  # the COCO json, as AFLoc reads
    # d1: the two casings of one phrase merge; 2 phrases on d1 + 3 on d2
    assert len(s) == 5 and ds.split == "all"
    first = s[0]
    assert first.prompts == {"simple": "Findings suggesting Pneumonia.", "precise": "left lower lobe consolidation"}
    assert first.boxes == [[100.0, 200.0, 50.0, 60.0], [300.0, 210.0, 40.0, 30.0]]
    assert first.image_size == (300, 400) and first.category == "Pneumonia" and first.patient_id == "10000032"
    assert first.image_path.endswith("files/p10/p10000032/s50414267/d1.jpg")
    eff = next(x for x in s if x.category == "Pleural Effusion")
    assert eff.prompts["simple"] == "Findings suggesting Pleural Effusion."
    assert ds.validate()["ok"]


def test_ms_cxr_csv_source_and_split_and_category_merge(tmp_path):
    write_ms_cxr(tmp_path, with_json=False)
    from_csv = MSCXR(tmp_path).samples()
    assert len(from_csv) == 5
    test = MSCXR(tmp_path, split="test").samples()
    assert {x.image_id for x in test} == {"d1"} and len(test) == 2
    by_cat = MSCXR(tmp_path, merge="category").samples()  # AFLoc's MS_CXR_CLS set
    assert len(by_cat) == 4
    pn = next(x for x in by_cat if x.image_id == "d2" and x.category == "Pneumonia")
    assert len(pn.boxes) == 2 and set(pn.prompts) == {"simple"}


def test_ms_cxr_v1_0_0_has_no_split_column(tmp_path):
    write_ms_cxr(tmp_path, version="1.0.0")
    assert len(MSCXR(tmp_path).samples()) == 5
    with pytest.raises(Exception, match="v1.1.0 CSV"):
        MSCXR(tmp_path, split="test").samples()


def test_ms_cxr_image_root_without_files_prefix(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    write_ms_cxr(ann, with_csv=False)
    imgs = tmp_path / "mimic" / "files"  # AFLoc's MIMIC_IMG_DIR points inside files/
    (ann / "files").rename(imgs.parent.mkdir() or imgs)
    ds = MSCXR(ann, image_root=str(imgs))
    assert len(ds.samples()) == 5 and not ds.skipped


# --------------------------------------------------------------------------------------------- CheXlocalize
def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


TASKS10 = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
           "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def write_chexlocalize(root: Path, h: int = 40, w: int = 50) -> dict:
    cxrs = {"val": ["patient64541/study1/view1_frontal", "patient64542/study1/view1_frontal",
                    "patient64542/study1/view2_lateral"],
            "test": ["patient64741/study1/view1_frontal", "patient64742/study2/view1_frontal"]}
    masks = {}
    for split, paths in cxrs.items():
        gt, hb = {}, {}
        rows = []
        for k, p in enumerate(paths):
            write_png(root / "CheXpert" / split / f"{p}.jpg", h, w)
            rows.append({"Path": f"CheXpert-v1.0/{'valid' if split == 'val' else 'test'}/{p}.jpg",
                         "Frontal/Lateral": "Lateral" if "lateral" in p else "Frontal",
                         "AP/PA": "" if "lateral" in p else "AP", "Lung Opacity": "1", "Edema": "0"})
            if k == 0:  # only the first CXR of each split is in the GT json (at least one positive)
                entry = {}
                for t in TASKS10:
                    m = np.zeros((h, w), np.uint8)
                    if t in ("Airspace Opacity", "Edema"):
                        m[5:20, 10:30 if t == "Edema" else 25] = 1
                    entry[t] = encode(m)
                    masks[(cxr_id_of(p + ".jpg"), t)] = m
                gt[cxr_id_of(p + ".jpg")] = entry
                hb[cxr_id_of(p + ".jpg")] = {t: encode(np.roll(masks[(cxr_id_of(p + ".jpg"), t)], 2, axis=1))
                                            for t in TASKS10}
        write_json(root / "CheXlocalize" / f"gt_segmentations_{split}.json", gt)
        if split == "test":
            write_json(root / "CheXlocalize" / "hb_segmentations_test.json", hb)
        with open(root / "CheXpert" / f"{split}_labels.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    return masks


def test_chexlocalize_positives_negatives_and_absent_images(tmp_path):
    masks = write_chexlocalize(tmp_path)
    ds = CheXlocalize(tmp_path, split="val")
    s = ds.samples()
    assert len(s) == 30  # 3 CXRs x 10 tasks
    pos = [x for x in s if x.label == 1]
    assert {(x.image_id, x.category) for x in pos} == {("patient64541_study1_view1_frontal", "Airspace Opacity"),
                                                       ("patient64541_study1_view1_frontal", "Edema")}
    for x in pos:
        m = decode_rle(x.rles[0])
        assert m.shape == x.image_size == (40, 50)
        assert np.array_equal(m, masks[(x.image_id, x.category)])
    absent = [x for x in s if x.image_id == "patient64542_study1_view2_lateral"]
    assert len(absent) == 10 and all(x.label == 0 and not x.rles for x in absent)
    assert {x.view for x in absent} == {"LATERAL"}
    ao = next(x for x in pos if x.category == "Airspace Opacity")
    assert ao.prompts["simple"] == "Findings suggesting Airspace Opacity."
    assert ao.meta["chexpert_label"] == "1"  # read from the csv's "Lung Opacity" column
    assert [x.category for x in s[:10]] == sorted(TASKS10)
    rep = ds.validate({"images": 3, "samples": 30, "positive_samples": 2})
    assert rep["ok"], rep["problems"]


def test_chexlocalize_human_benchmark_masks(tmp_path):
    masks = write_chexlocalize(tmp_path)
    hb = human_benchmark_masks(tmp_path)
    assert len(hb) == 10
    cid = "patient64741_study1_view1_frontal"
    got = human_benchmark_mask(tmp_path, cid, "Edema")
    assert np.array_equal(got, np.roll(masks[(cid, "Edema")], 2, axis=1))
    assert human_benchmark_mask(tmp_path, cid, "Lung Opacity").sum() > 0  # the CheXpert word maps to Airspace Opacity
    assert human_benchmark_mask(tmp_path, cid, "Pneumothorax").sum() == 0


# --------------------------------------------------------------------------------------------- COVID Rural
def write_covid(root: Path, stems: list[str], empty: tuple[str, ...] = (), no_mask: tuple[str, ...] = ()) -> None:
    for st in stems:
        write_png(root / "jpgs" / f"{st}.jpg", 60, 80, value=90)
        if st in no_mask:
            continue
        m = np.zeros((60, 80), np.uint8)
        if st not in empty:
            m[10:30, 20:50] = 255
        write_png(root / "pngs_masks" / f"{st}.png", mask=m)
        write_json(root / "jpgs" / "jsons" / f"{st}.json", {
            "version": "4.5.6", "flags": {}, "imagePath": f"../{st}.jpg", "imageData": None,
            "imageHeight": 60, "imageWidth": 80,
            "shapes": [{"label": "right_lung", "points": [[1, 1], [30, 1], [30, 50]], "group_id": None,
                        "shape_type": "polygon", "flags": {}},
                       {"label": "groud_glass_opacity", "points": [[20.5, 10], [49.5, 10], [49.5, 29.5], [20.5, 29.5]],
                        "group_id": None, "shape_type": "polygon", "flags": {}}]})


def test_covid_rural_masks_polygons_and_afloc_rules(tmp_path):
    stems = ["COVID-19-AR-16406484_02-23-2020-XR", "COVID-19-AR-16406484_03-01-2020-XR",
             "COVID-19-AR-16424082_12-26-1999-XR", "COVID-19-AR-16434409_01-01-2020-XR"]
    write_covid(tmp_path, stems, empty=(stems[2],), no_mask=(stems[3],))
    ds = CovidRural(tmp_path)
    s = ds.samples()
    assert [x.image_id for x in s] == stems[:2]
    x = s[0]
    assert x.category == "COVID-19" and x.prompts["simple"] == "Findings suggesting pneumonia."
    assert x.patient_id == "COVID-19-AR-16406484" and x.image_size == (60, 80)
    assert x.mask_paths and x.polygons == [[[20.5, 10.0], [49.5, 10.0], [49.5, 29.5], [20.5, 29.5]]]
    assert x.meta["mask_pixels"] == 600
    reasons = sorted(e["reason"] for e in ds.excluded)
    assert reasons == ["empty mask (AFLoc skips it)", "no mask in pngs_masks (AFLoc uses annotated images only)"]
    assert not ds.skipped and ds.validate()["ok"]
    keep = CovidRural(tmp_path, require_nonempty_mask=False).samples()
    assert len(keep) == 3 and keep[2].label == 0 and not keep[2].mask_paths


def test_covid_rural_rstrip_quirk_report(tmp_path):
    # the real stems end in "-XR": untouched by rstrip; stems ending in j/p/g/n would be corrupted
    assert afloc_rstrip_corruptions(["COVID-19-AR-1_01-01-2020-XR.jpg"], ["COVID-19-AR-1_01-01-2020-XR.png"]) == []
    bad = afloc_rstrip_corruptions(["scan_lung.jpg", "x_p.jpg"], ["scan_lung.png"])
    assert [b["afloc_stem"] for b in bad] == ["scan_lun", "x_", "scan_lu"]  # "n" is stripped by ".png" only
    write_covid(tmp_path, ["case_lung"])
    ds = CovidRural(tmp_path)
    assert [x.image_id for x in ds.samples()] == ["case_lung"]  # removesuffix keeps the stem intact
    rep = ds.validate()
    assert any("rstrip would corrupt" in w and "case_lung.jpg" in w for w in rep["warnings"])


# --------------------------------------------------------------------------------------------- ChestX-Det10
def test_chestx_det10_boxes_converted_and_grouped(tmp_path):
    recs = [{"file_name": "36199.png", "syms": [], "boxes": []},
            {"file_name": "36346.png", "syms": ["Effusion", "Fibrosis", "Effusion"],
             "boxes": [[90, 668, 217, 788], [699, 307, 774, 417], [700, 600, 800, 700]]}]
    write_json(tmp_path / "test.json", recs)
    write_json(tmp_path / "train.json", [{"file_name": "1.png", "syms": ["Mass"], "boxes": [[1, 2, 3, 4]]}])
    for r in recs:
        write_png(tmp_path / "test_data" / r["file_name"], 1024, 1024)
    write_png(tmp_path / "train_data" / "1.png", 16, 16)
    ds = ChestXDet10(tmp_path)
    s = ds.samples()
    assert [(x.category, x.boxes) for x in s] == [
        ("Pleural Effusion", [[90.0, 668.0, 127.0, 120.0], [700.0, 600.0, 100.0, 100.0]]),
        ("Fibrosis", [[699.0, 307.0, 75.0, 110.0]])]
    assert s[0].prompts["simple"] == "Findings suggesting Effusion." and s[0].image_size == (1024, 1024)
    assert ds.stats["split_images_without_boxes"] == 1
    assert len(ChestXDet10(tmp_path, split="train").samples()) == 1
    assert len(ChestXDet10(tmp_path, negatives=True).samples()) == 20


# --------------------------------------------------------------------------------------------- SICAPv2
def write_sicap(root: Path) -> None:
    import openpyxl

    rows = [("16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg", 1, 0, 0, 0, 0),
            ("16B0001851_Block_Region_1_0_1_xini_7315_yini_59786.jpg", 0, 1, 0, 0, 0),
            ("17B0003896_Block_Region_2_0_0_xini_1_yini_2.jpg", 0, 0, 1, 1, 1),
            ("17B0003896_Block_Region_2_1_0_xini_3_yini_4.jpg", 0, 0, 0, 1, 0)]
    (root / "partition" / "Test").mkdir(parents=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["image_name", "NC", "G3", "G4", "G5", "G4C"])
    for r in rows:
        ws.append(list(r))
    wb.save(root / "partition" / "Test" / "Test.xlsx")
    for i, r in enumerate(rows):
        write_png(root / "images" / r[0], 32, 32, value=120, color=True)
        m = np.zeros((32, 32), np.uint8)
        if i:  # the benign patch has an empty mask
            m[4:12, 4:12] = i
        write_png(root / "masks" / r[0], mask=m)


def test_sicapv2_argmax_classes_prompts_and_masks(tmp_path):
    write_sicap(tmp_path)
    ds = SICAPv2(tmp_path)
    every = ds.samples()
    names = ["Non-cancerous", "Gleason Pattern 3", "Gleason Pattern 4", "Gleason Pattern 5"]
    # one sample per (patch, class), label 1 for the patch's class: softmax classification sees every class
    assert len(every) == 16 and [x.category for x in every[:4]] == names
    assert [x.label for x in every[4:8]] == [0, 1, 0, 0] and len({x.image_id for x in every}) == 4
    assert every[5].sample_id.endswith("/G3") and every[4].sample_id.endswith("/NC")
    s = [x for x in every if x.label]
    assert [x.meta["class"] for x in s] == ["NC", "G3", "G4", "G5"]  # G4 and G5 tied: argmax keeps G4
    assert [x.category for x in s] == names
    assert s[1].prompts["simple"] == "an example of prostate cancer, gleason pattern 3."
    assert s[2].prompts["simple"] == "an example of gleason grade 4."
    assert s[0].mask_paths == [] and all(x.mask_paths for x in s[1:])  # grounding = non-empty masks (AFLoc)
    assert not any(x.mask_paths for x in every if not x.label)  # one grounding query per patch: its class
    assert set(s[0].meta["class_prompts"]) == {"NC", "G3", "G4", "G5"} and s[2].meta["grades"]["G4C"] == 1
    assert ds.stats["empty_masks"] == 1 and ds.validate({"samples": 16})["ok"]


# --------------------------------------------------------------------------------------------- MIMIC-CXR
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_extract_report_sections():
    assert extract_report(REPORT) == ("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
                                      "nodular opacities that most likely represent nipple shadows. "
                                      "No acute cardiopulmonary process.")
    assert extract_report("FINDINGS AND IMPRESSION: Clear lungs.") == "Clear lungs. Clear lungs."
    assert extract_report("WET READ: abc\nCOMPARISON: none") == ""


def test_mimic_frontal_reports_and_ms_cxr_exclusion(tmp_path):
    rows = [("a1", "50000001", "10000001", "train", "PA"), ("a2", "50000001", "10000001", "train", "LATERAL"),
            ("a3", "50000002", "10000002", "train", "AP"), ("a4", "50000003", "10000003", "test", "PA"),
            ("a5", "50000004", "10000004", "train", "PA")]
    with open(tmp_path / "mimic-cxr-2.0.0-split.csv", "w") as f:
        f.write("dicom_id,study_id,subject_id,split\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]}\n" for r in rows))
    with open(tmp_path / "mimic-cxr-2.0.0-metadata.csv", "w") as f:
        f.write("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
                + "".join(f"{r[0]},{r[2]},{r[1]},CHEST,{r[4]},30,20\n" for r in rows))
    for r in rows:
        write_png(tmp_path / f"files/p{r[2][:2]}/p{r[2]}/s{r[1]}/{r[0]}.jpg", 30, 20)
        rep = tmp_path / f"files/p{r[2][:2]}/p{r[2]}/s{r[1]}.txt"
        if r[0] != "a5":
            rep.write_text(REPORT if r[0] != "a3" else "INDICATION: cough\n")
    (tmp_path / "ms.csv").write_text("dicom_id,category_name\na1,Pneumonia\n")
    ds = MIMICCXR(tmp_path)
    s = ds.samples()
    assert [x.image_id for x in s] == ["a1"]
    assert s[0].prompts["report"].startswith("There is no focal consolidation") and s[0].label is None
    assert s[0].image_size == (30, 20) and s[0].view == "PA" and s[0].split == "train"
    assert sorted(e["reason"].split(" (")[0] for e in ds.excluded) == [
        "report has no FINDINGS/IMPRESSION section", "view LATERAL not in views option ['AP', 'PA']"]
    assert [k["reason"].split(" (")[0] for k in ds.skipped] == ["report file not found"]
    excl = MIMICCXR(tmp_path, exclude_csv=str(tmp_path / "ms.csv"))
    assert excl.samples() == [] and any("MS-CXR" in e["reason"] for e in excl.excluded)
    assert [x.image_id for x in MIMICCXR(tmp_path, split="test").samples()] == ["a4"]
    rep = ds.validate({"samples": 1})
    assert rep["checks"]["prompts"].startswith("1 sample(s)")
    assert "chexpert" not in s[0].meta  # no label table: no labels, no error

    # the official CheXpert label table, when present, gives each sample its study's labels
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,No Finding,Pleural Effusion\n"
        "10000001,50000001,1.0,,-1.0\n10000002,50000002,0.0,1.0,\n")
    labelled = MIMICCXR(tmp_path).samples()
    assert labelled[0].meta["chexpert"] == {"Atelectasis": 1.0, "No Finding": None, "Pleural Effusion": -1.0}
    from benchmark.training.data import pairs_from_dataset

    pairs, _ = pairs_from_dataset("mimic_cxr", "train", str(tmp_path))
    assert [p.labels for p in pairs] == [labelled[0].meta["chexpert"]]
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").write_text("subject_id,study_id,Atelectasis\n1,50000001,yes\n")
    from benchmark.dataset import DataError

    with pytest.raises(DataError, match="mimic-cxr-2.0.0-chexpert.csv.*study 50000001"):
        MIMICCXR(tmp_path).samples()


# --------------------------------------------------------------------------------------------- VinDr-CXR
def test_vindr_physionet_layout_test_split(tmp_path):
    from datasets_fixtures import write_dicom

    from benchmark.datasets.vindr_cxr.loader import VinDrCXR

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "annotations_test.csv").write_text(
        "image_id,rad_ID,class_name,x_min,y_min,x_max,y_max\n"
        "im1,R11,Nodule/Mass,10,20,30,50\n"
        "im1,R11,Pleural effusion,100,100,200,180\n"
        "im1,R11,Nodule/Mass,60,20,70,40\n"
        "im2,R11,No finding,,,,\n")
    for i in ("im1", "im2"):
        write_dicom(tmp_path / "test" / f"{i}.dicom", rows=256, cols=200, view="PA")
    ds = VinDrCXR(tmp_path)  # default split test
    s = ds.samples()
    assert [(x.category, x.boxes) for x in s] == [("Nodule/Mass", [[10.0, 20.0, 20.0, 30.0], [60.0, 20.0, 10.0, 20.0]]),
                                                  ("Pleural Effusion", [[100.0, 100.0, 100.0, 80.0]])]
    assert s[0].image_size == (256, 200) and s[0].view == "PA" and s[0].meta["rad_ids"] == ["R11", "R11"]
    assert ds.stats["split_images_without_boxes"] == 1
    neg = VinDrCXR(tmp_path, negatives=True).samples()
    assert sorted((x.image_id, x.label) for x in neg) == [("im1", 1), ("im1", 1), ("im2", 0), ("im2", 0)]


def test_sicapv2_missing_image_is_skipped_without_image_checks(tmp_path):
    write_sicap(tmp_path)
    gone = tmp_path / "images" / "16B0001851_Block_Region_1_0_1_xini_7315_yini_59786.jpg"
    gone.unlink()
    ds = SICAPv2(tmp_path, check_images=False)
    s = ds.samples()
    assert len(s) == 12 and not any(x.image_path == str(gone) for x in s)
    assert [k["reason"] for k in ds.skipped] == ["image file not found"]
