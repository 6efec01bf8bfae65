"""The journal version's datasets in their official layouts: NIH ChestX-ray14 and CXR-LT 2024 (multi-label
classification), WSSS4LUAD and DHMC LUAD (single-label pathology classification) and Quilt-1M (training
pairs). Hand-written fixtures in each official format, bad input, validation of an empty root, registration."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from datasets_fixtures import txv_data, write_png

from benchmark import pathologies
from benchmark.dataset import DataError
from benchmark.datasets import common as C
from benchmark.datasets.cxr_lt.loader import CXRLT, LABEL_SETS
from benchmark.datasets.dhmc_luad.loader import DHMCLUAD
from benchmark.datasets.nih_bbox.loader import read_data_entry
from benchmark.datasets.nih_chestxray14.loader import CLASSES as NIH_CLASSES
from benchmark.datasets.nih_chestxray14.loader import NIHChestXray14, read_labelled_list
from benchmark.datasets.quilt1m.loader import Quilt1M
from benchmark.datasets.wsss4luad.loader import WSSS4LUAD, parse_label
from benchmark.pathologies import UnknownCategoryError
from benchmark.prompts import classification_prompts
from benchmark.registry import datasets

NEW = ["nih_chestxray14", "cxr_lt", "wsss4luad", "dhmc_luad", "quilt1m"]
NIH_CANONICAL = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                 "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia"]


# ============================================================================================ NIH ChestX-ray14
ENTRY_HEAD = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
ENTRY_ROWS = [
    "00000001_000.png,Cardiomegaly|Effusion,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,No Finding,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,Pleural_Thickening|Hernia,0,2,80,F,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Infiltration,0,3,74,F,PA,2500,2048,0.168,0.168",
]


def nih_root(root: Path, rows=ENTRY_ROWS, test=("00000001_000.png", "00000002_000.png", "00000003_000.png"),
             train_val=("00000001_001.png",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text(ENTRY_HEAD + "\n".join(rows) + "\n")
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in test))
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in train_val))
    # both archive layouts: images_0NN/images/ (NIH and Kaggle) and a flat images/ folder
    write_png(root / "images_001" / "images" / "00000001_000.png", 40, 48)
    write_png(root / "images_001" / "images" / "00000001_001.png", 40, 48)
    write_png(root / "images" / "00000002_000.png", 32, 32)
    write_png(root / "images_002" / "images" / "00000003_000.png", 36, 30)
    return root


def test_nih_one_sample_per_image_and_class_from_data_entry(tmp_path):
    ds = NIHChestXray14(nih_root(tmp_path))
    s = ds.samples()
    assert len(s) == 3 * 14 and ds.split == "test"
    assert [x.category for x in s[:14]] == NIH_CANONICAL  # AFLoc's NIHChestXray.categories order
    by_image = {}
    for x in s:
        by_image.setdefault(x.image_id, {})[x.category] = x.label
    assert {c for c, y in by_image["00000001_000"].items() if y} == {"Cardiomegaly", "Pleural Effusion"}
    assert {c for c, y in by_image["00000002_000"].items() if y} == {"Pleural Thickening", "Hernia"}
    assert {c for c, y in by_image["00000003_000"].items() if y} == {"Infiltration"}
    first = s[0]
    assert first.sample_id == "nih_chestxray14/00000001_000/Atelectasis" and first.patient_id == "1"
    assert first.view == "PA" and first.image_size == (40, 48) and first.split == "test"
    assert first.image_path.endswith("images_001/images/00000001_000.png")
    assert s[14].image_path.endswith("images/00000002_000.png") and s[14].view == "AP" and s[14].patient_id == "2"
    assert s[2].prompts["simple"] == "Findings suggesting effusion."  # AFLoc's word, not the canonical name
    assert s[14 + 12].prompts["simple"] == "Findings suggesting pleural thickening."
    assert first.meta["finding_labels"] == ["Cardiomegaly", "Pleural Effusion"]
    assert first.meta["modality"] == "chest_xray" and first.meta["afloc_dataset"] == "GENERIC"
    c = ds.counts()
    assert (c["images"], c["positive_samples"], c["patients"], c["split_rows"]) == (3, 5, 3, 3)
    assert ds.validate({"samples": 42, "images": 3})["ok"]
    assert [x.image_id for x in NIHChestXray14(tmp_path, split="train_val").samples()[::14]] == ["00000001_001"]
    assert not any(x.label for x in NIHChestXray14(tmp_path, split="train_val").samples())  # No Finding: all 0
    every = NIHChestXray14(tmp_path, split="all")
    assert len(every.samples()) == 4 * 14 and every.stats["table_rows"] == 4
    assert len(NIHChestXray14(tmp_path, views=["PA"]).samples()) == 2 * 14


def test_nih_zero_shot_prompts_use_the_official_words():
    card = datasets.get("nih_chestxray14").card
    pos, neg = classification_prompts(card, "Pleural Effusion")
    assert pos[0] == "effusion:small bilateral pleural effusion left" and neg == ["no effusion. "]
    pos, neg = classification_prompts(card, "Pleural Thickening")
    assert pos[0] == "pleural thickening:mild diffuse pleural thickening apical" and len(pos) == 3 * 2 * 6
    assert [card.official_spelling[c] for c in NIH_CANONICAL] == [
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
        "consolidation", "edema", "emphysema", "fibrosis", "pleural thickening", "hernia"]


def write_labelled_list(path: Path, rows: list[tuple[str, set[str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([name] + ["1" if c in labels else "0" for c in NIH_CLASSES]) for name, labels in rows]
    path.write_bytes("\r\n".join(lines).encode())  # MRM's line ends: CRLF, none after the last line
    return path


def test_nih_mrm_list_labels_from_the_list_or_the_table(tmp_path, monkeypatch):
    data = tmp_path / "cards"
    (data / "nih_chestxray14").mkdir(parents=True)
    for f in ("card.yaml", "prompts.yaml"):
        (data / "nih_chestxray14" / f).write_text((C.dataset_dir("nih_chestxray14") / f).read_text())
    write_labelled_list(data / "nih_chestxray14" / "splits" / "mrm_test_list.txt",
                        [("00000001_000.png", {"Cardiomegaly"}),  # the table also says Effusion
                         ("00000003_000.png", {"Infiltration"})])
    monkeypatch.setenv("AFLOC_BENCH_DATASETS_DIR", str(data))
    root = nih_root(tmp_path / "root")
    ds = NIHChestXray14(root, split="mrm_test")
    s = ds.samples()
    assert len(s) == 28 and {(x.image_id, x.category) for x in s if x.label} == {
        ("00000001_000", "Cardiomegaly"), ("00000003_000", "Infiltration")}
    assert ds.stats["list_label_disagreements"] == 1 and ds.label_disagreements == ["00000001_000.png"]
    rep = ds.validate({"samples": 28})
    assert any("1 image(s) of the mrm_test list have labels that differ" in w for w in rep["warnings"])
    assert not rep["split_source"]["overridden"]
    # this stand-in list is not the published one, and validate says so
    assert len(rep["problems"]) == 1 and "differs from the card's 1ee08b01" in rep["problems"][0]
    table = NIHChestXray14(root, split="mrm_test", labels_from="data_entry")
    assert {(x.image_id, x.category) for x in table.samples() if x.label} == {
        ("00000001_000", "Cardiomegaly"), ("00000001_000", "Pleural Effusion"), ("00000003_000", "Infiltration")}
    # a root-local list of names overrides the shipped list; its labels come from the table
    (root / "splits").mkdir()
    (root / "splits" / "mrm_test.txt").write_text("00000002_000\n")
    local = NIHChestXray14(root, split="mrm_test")
    assert {x.category for x in local.samples() if x.label} == {"Pleural Thickening", "Hernia"}
    assert local.split_source["overridden"]


def test_shipped_mrm_list_against_the_real_data_entry_table():
    card = datasets.get("nih_chestxray14").card
    path = C.dataset_dir("nih_chestxray14") / card.extra["splits"]["mrm_test"]["file"]
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == card.extra["splits"]["mrm_test"]["sha256"]
    assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == "9c345e4c85e8abc8e900e64f7a185726dfcec52b"
    rows = read_labelled_list(path)
    assert len(rows) == len({n for n, _ in rows}) == 22433
    per_class = [sum(c in labels for _, labels in rows) for c in NIH_CLASSES]
    assert per_class == [2420, 582, 2754, 3938, 1133, 1335, 242, 1089, 957, 413, 509, 362, 734, 42]
    assert sum(per_class) == card.expected_counts["mrm_test"]["positive_samples"]
    entries = read_data_entry(txv_data("nih_entry"), {n for n, _ in rows})  # Data_Entry_2017_v2020.csv
    assert len({entries[n]["patient"] for n, _ in rows}) == card.expected_counts["mrm_test"]["patients"] == 6187
    diff: Counter = Counter()
    images = set()
    for name, labels in rows:
        table = set(entries[name]["labels"])
        for c in NIH_CLASSES:
            if (c in labels) != (c in table):
                diff[(c, c in labels)] += 1
                images.add(name)
    assert len(images) == 36  # as the card and PROVENANCE.md say: the list lacks 37 of the table's labels
    assert diff == {("Pneumonia", False): 18, ("Mass", False): 6, ("Infiltration", False): 6,
                    ("Atelectasis", False): 3, ("Effusion", False): 2, ("Nodule", False): 2}


def test_nih_all_split_counts_of_the_card_match_the_real_table():
    entries = read_data_entry(txv_data("nih_entry"))
    card = datasets.get("nih_chestxray14").card
    want = card.expected_counts["all"]
    assert len(entries) == want["table_rows"] == want["split_images"] and want["samples"] == 14 * len(entries)
    assert len({e["patient"] for e in entries.values()}) == want["patients"]
    assert {x for e in entries.values() for x in e["labels"]} == set(NIH_CLASSES)  # No Finding dropped


def test_nih_bad_input_names_the_file_and_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv: Data_Entry_2017 table not found \(looked for "
                                        r"Data_Entry_2017.csv, Data_Entry_2017_v2020.csv"):
        NIHChestXray14(tmp_path).samples()
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,View Position\na.png,Mass,PA\n")
    (tmp_path / "test_list.txt").write_text("a.png\n")
    with pytest.raises(DataError) as err:
        NIHChestXray14(tmp_path).samples()
    assert "Data_Entry_2017.csv: missing column(s) ['Patient ID']" in str(err.value) and "\n" not in str(err.value)
    root = nih_root(tmp_path / "typo", rows=[*ENTRY_ROWS[:2], "00000002_000.png,Heart Bigness,0,2,80,F,AP,1,1,1,1"])
    with pytest.raises(UnknownCategoryError, match=r"Data_Entry_2017.csv: row 4: unknown category 'Heart Bigness'"):
        NIHChestXray14(root).samples()
    root = nih_root(tmp_path / "other", rows=[*ENTRY_ROWS[:2], "00000002_000.png,Lung Opacity,0,2,80,F,AP,1,1,1,1"])
    with pytest.raises(DataError, match=r"row 4: Finding Labels 'Lung Opacity' is not one of the 14 ChestX-ray14"):
        NIHChestXray14(root).samples()
    root = nih_root(tmp_path / "absent", rows=ENTRY_ROWS[:2])
    with pytest.raises(DataError, match=r"test_list.txt: entry 2: image '00000002_000.png' is not in "
                                        r"Data_Entry_2017.csv"):
        NIHChestXray14(root).samples()
    (root / "test_list.txt").write_text("00000001_000.png extra\n")
    with pytest.raises(DataError, match=r"test_list.txt: line 1: expected one image file name"):
        NIHChestXray14(root).samples()
    with pytest.raises(DataError, match=r"labels_from='both': expected 'list'"):
        NIHChestXray14(root, labels_from="both").samples()
    with pytest.raises(DataError, match=r"unknown split 'val' \(known: test, train_val, all, mrm_test"):
        NIHChestXray14(root, split="val").samples()
    bad = write_labelled_list(tmp_path / "l.txt", [("a.png", set())])
    bad.write_text("a.png 0 1 2\n")
    with pytest.raises(DataError, match=r"l.txt: line 1: expected '<image file name>' and 14 labels 0/1"):
        read_labelled_list(bad)


def test_nih_missing_image_is_skipped_by_name(tmp_path):
    root = nih_root(tmp_path)
    (root / "images" / "00000002_000.png").unlink()
    ds = NIHChestXray14(root)
    assert len(ds.samples()) == 2 * 14
    assert ds.skipped == [{"path": str(root / "images" / "00000002_000.png"), "reason": "image file not found"}]
    with pytest.raises(DataError, match="00000002_000.png: image file not found"):
        NIHChestXray14(root, strict=True).samples()


# ============================================================================================ CXR-LT 2024
T2 = LABEL_SETS["t2"]


def cxr_lt_rows(classes, positives: list[set[str]], path_col="fpath", metadata=True):
    head = (["dicom_id", "subject_id", "study_id", path_col] if metadata else [path_col]) + list(classes)
    rows = []
    for k, pos in enumerate(positives):
        subject, study, dicom = f"1000003{k}", f"5041426{k}", f"d{k}"
        fpath = f"files/p10/p{subject}/s{study}/{dicom}.jpg"
        meta = [dicom, subject, study, fpath] if metadata else [fpath]
        rows.append(meta + [int(c in pos) for c in classes])
    return head, rows


def write_cxr_lt(csv_path: Path, head, rows, image_root: Path, jpg=True) -> Path:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)
    col = head.index("fpath") if "fpath" in head else head.index("path")
    for r in rows:
        if jpg:
            write_png(image_root / r[col], 30, 40)  # cv2 writes by suffix: a real JPEG
    return csv_path


def test_cxr_lt_t2_one_sample_per_image_and_column(tmp_path):
    head, rows = cxr_lt_rows(T2, [{"Normal"}, {"Tortuous Aorta", "Pleural Effusion", "Support Devices"}])
    write_cxr_lt(tmp_path / "cxr-lt-2024" / "test_labeled_task2.csv", head, rows, tmp_path)
    ds = CXRLT(tmp_path)
    s = ds.samples()
    assert len(s) == 2 * 26 and len(T2) == 26
    assert [x.category for x in s[:15]][-2:] == ["Mass", "No Finding"]  # the Normal column, canonical name
    assert {x.category for x in s if x.label and x.image_id == "d0"} == {"No Finding"}
    assert {x.category for x in s if x.label and x.image_id == "d1"} == {"Tortuous Aorta", "Pleural Effusion",
                                                                        "Support Devices"}
    first = s[0]
    assert first.sample_id == "cxr_lt/d0/Atelectasis" and first.patient_id == "10000030"
    assert first.image_size == (30, 40) and first.image_path == str(tmp_path / rows[0][3])
    assert s[14].prompts["simple"] == "Findings suggesting Normal."  # the column's word
    assert first.meta["study_id"] == "50414260" and first.meta["label_set"] == "t2"
    assert ds.counts()["positive_samples"] == 4 and ds.validate({"samples": 52})["ok"]


def test_cxr_lt_t3_path_column_image_root_and_development_split(tmp_path):
    head, rows = cxr_lt_rows(LABEL_SETS["t3"], [{"Bulla"}, set(), {"Scoliosis", "Hilum"}], path_col="path",
                             metadata=False)
    images = tmp_path / "mimic-cxr-jpg"
    write_cxr_lt(tmp_path / "labels" / "development_labeled_task3.csv", head, rows, images)
    ds = CXRLT(tmp_path / "labels", split="val", label_set="T3", image_root=str(images))
    s = ds.samples()
    assert len(s) == 3 * 5 and [x.category for x in s[:5]] == ["Bulla", "Cardiomyopathy", "Hilum", "Osteopenia",
                                                               "Scoliosis"]
    assert s[0].image_id == "d0" and s[0].patient_id == "10000030" and s[0].view is None  # subject from fpath
    assert {x.category for x in s if x.label and x.image_id == "d2"} == {"Scoliosis", "Hilum"}
    with pytest.raises(DataError, match=r"test_labeled_task3.csv: CXR-LT label file not found"):
        CXRLT(tmp_path / "labels", label_set="t3", image_root=str(images)).samples()


def test_cxr_lt_zero_shot_prompts_follow_the_official_table():
    card = datasets.get("cxr_lt").card
    assert classification_prompts(card, "No Finding") == (
        ["Normal: no abnormalities detected ", "Normal: normal findings ", "Normal: unremarkable study "],
        ["no Normal. "])
    pos, _ = classification_prompts(card, "Tortuous Aorta")
    assert pos[0] == "Tortuous Aorta:mild ascending aorta tortuosity aortic arch" and len(pos) == 27
    assert classification_prompts(card, "Hilum")[0][0] == "Hilum: enlarged hilum left hilum"
    assert list(card.extra["label_sets"]["t2"]) == list(T2) and list(card.extra["label_sets"]["t3"]) == list(
        LABEL_SETS["t3"])


def test_cxr_lt_bad_input(tmp_path):
    with pytest.raises(DataError) as err:
        CXRLT(tmp_path).samples()
    assert "test_labeled_task2.csv: CXR-LT label file not found" in str(err.value)
    head, rows = cxr_lt_rows(T2, [set()])
    write_cxr_lt(tmp_path / "test_labeled_task2.csv", head[:-1], [r[:-1] for r in rows], tmp_path)
    with pytest.raises(DataError, match=r"test_labeled_task2.csv: missing column\(s\) \['Tortuous Aorta'\]; "
                                        r"expected fpath \(or path\) and the 26 class columns"):
        CXRLT(tmp_path).samples()
    head, rows = cxr_lt_rows(T2, [set(), set()])
    rows[1][4 + T2.index("Edema")] = 2
    write_cxr_lt(tmp_path / "test_labeled_task2.csv", head, rows, tmp_path)
    with pytest.raises(DataError, match=r"test_labeled_task2.csv: row 3: Edema must be 0 or 1, got '2'"):
        CXRLT(tmp_path).samples()
    with pytest.raises(DataError, match=r"label_set='t4': expected t2"):
        CXRLT(tmp_path, label_set="t4").samples()
    with pytest.raises(DataError, match=r"cxr_lt splits are test and development"):
        CXRLT(tmp_path, split="train").samples()
    head, rows = cxr_lt_rows(T2, [set()])
    write_cxr_lt(tmp_path / "test_labeled_task2.csv", head + ["Kyphosis"], [r + [1] for r in rows], tmp_path)
    ds = CXRLT(tmp_path)
    rep = ds.validate({"samples": 26})
    assert rep["ok"] and any("were not read: Kyphosis" in w for w in rep["warnings"])


# ============================================================================================ WSSS4LUAD
def wsss_root(root: Path) -> Path:
    for name in ("436219-7159-48057-[1, 0, 0]", "436219-7159-48058-[0, 1, 0]", "436219-7200-48000-[0, 0, 1]",
                 "436220-100-200-[0, 0, 1]", "436221-1-2-[1, 1, 0]", "436222-3-4-[1, 0, 1]", "no-label",
                 "bad-[2, 0, 0]"):
        write_png(root / "1.training" / f"{name}.png", 24, 20, color=True)
    (root / "1.training" / "readme.txt").write_text("not a patch")
    return root


def test_wsss4luad_single_label_patches_one_sample_per_class(tmp_path):
    root = wsss_root(tmp_path)
    ds = WSSS4LUAD(root)
    s = ds.samples()
    assert ds.split == "train" and len(s) == 4 * 3
    # patches by class in AFLoc's order (normal, stroma, tumor), then by file name; classes in that order
    assert [x.image_id for x in s[::3]] == ["436219-7200-48000-[0, 0, 1]", "436220-100-200-[0, 0, 1]",
                                            "436219-7159-48058-[0, 1, 0]", "436219-7159-48057-[1, 0, 0]"]
    assert [x.category for x in s[:3]] == ["Normal Tissue", "Tumor-associated Stroma", "Tumor Epithelial Tissue"]
    assert [x.label for x in s[:3]] == [1, 0, 0] and [x.label for x in s[-3:]] == [0, 0, 1]
    assert [x.prompts["simple"] for x in s[:3]] == [
        "non-tumor is present.", "tumor-associated stromal tissue is present.", "invasive carcinoma is present."]
    assert s[-1].meta["label_vector"] == [1, 0, 0] and s[-1].meta["class"] == "tumor"
    assert s[0].image_size == (24, 20) and s[0].patient_id is None and s[0].meta["modality"] == "pathology"
    assert ds.stats["multi_label_images"] == 2 and len(ds.excluded) == 2
    assert ds.stats["table_images"] == 8 and (ds.stats["split_normal"], ds.stats["split_tumor"]) == (2, 1)
    reasons = {Path(x["path"]).name: x["reason"] for x in ds.skipped}
    assert reasons == {"no-label.png": "file name carries no [tumor, stroma, normal] label (expected "
                                       "'<name>-[a, b, c].png')",
                       "bad-[2, 0, 0].png": "unknown label [2, 0, 0]: expected three 0/1 values "
                                            "[tumor, stroma, normal]"}
    rep = ds.validate({"samples": 12})
    assert not rep["ok"] and sum("1 sample(s) skipped" in p for p in rep["problems"]) == 2
    assert rep["excluded"] == {"label [1, 1, 0] is not single-class (AFLoc keeps [0, 0, 1], [0, 1, 0], [1, 0, 0])": 1,
                               "label [1, 0, 1] is not single-class (AFLoc keeps [0, 0, 1], [0, 1, 0], [1, 0, 0])": 1}
    with pytest.raises(DataError, match=r"bad-\[2, 0, 0\].png: unknown label \[2, 0, 0\]"):
        WSSS4LUAD(root, strict=True).samples()


def test_wsss4luad_label_parsing_and_split():
    assert parse_label("x-[1, 0, 0]") == (1, 0, 0) and parse_label("x-[0,0,1]") == (0, 0, 1)
    assert isinstance(parse_label("x-[1, 0]"), str) and isinstance(parse_label("x"), str)
    with pytest.raises(DataError, match="wsss4luad has one split, 'train'"):
        WSSS4LUAD("/nonexistent-but-unused", split="test").load_samples()


# ============================================================================================ DHMC LUAD
def dhmc_root(root: Path, classes=("solid", "Lepidic", " acinar ")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "MetaData_Release_1.0.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File Name", "Class", "Microns Per Pixel", "Magnification"])
        for k, c in enumerate(classes, start=1):
            w.writerow([f"DHMC_{k:04d}.tif", c, "0.2522", "40"])
    for k in range(1, len(classes) + 1):
        write_png(root / "images_224" / f"DHMC_{k:04d}.tif", 22, 28, color=True)
    return root


def test_dhmc_luad_one_sample_per_slide_and_pattern(tmp_path):
    root = dhmc_root(tmp_path)
    ds = DHMCLUAD(root)
    s = ds.samples()
    assert ds.split == "all" and len(s) == 3 * 5
    assert [x.category for x in s[:5]] == ["Solid Pattern", "Lepidic Pattern", "Acinar Pattern",
                                           "Micropapillary Pattern", "Papillary Pattern"]
    assert [[x.label for x in s[k:k + 5]] for k in (0, 5, 10)] == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert s[0].image_path == str(root / "images_224" / "DHMC_0001.tif") and s[0].image_size == (22, 28)
    assert s[0].sample_id == "dhmc_luad/DHMC_0001/Solid Pattern" and s[0].image_id == "DHMC_0001"
    assert s[5].meta == {"class": "lepidic", "csv_row": 3, "Microns Per Pixel": "0.2522", "Magnification": "40",
                         "afloc_dataset": "GENERIC", "modality": "pathology"}
    assert s[1].prompts["simple"] == "a histopathological photograph of lepidic pattern adenocarcinoma of the lung."
    assert ds.stats["split_solid"] == 1 and ds.validate({"samples": 15})["ok"]
    # the release's layout: slides at the root (option image_dir, or no images_224/ folder)
    write_png(root / "DHMC_0001.tif", 9, 9)
    assert DHMCLUAD(root, image_dir=".").samples()[0].image_size == (9, 9)
    missing = DHMCLUAD(root, image_dir=".")
    assert len(missing.samples()) == 5 and len(missing.skipped) == 2


def test_dhmc_luad_bad_input(tmp_path):
    with pytest.raises(DataError) as err:
        DHMCLUAD(tmp_path).samples()
    assert "MetaData_Release_1.0.csv: slide table not found" in str(err.value)
    (tmp_path / "MetaData_Release_1.0.csv").write_text("Filename,Label\nDHMC_0001.tif,solid\n")
    with pytest.raises(DataError, match=r"MetaData_Release_1.0.csv: missing column\(s\) \['File Name', 'Class'\]; "
                                        r"expected 'File Name' and 'Class'"):
        DHMCLUAD(tmp_path).samples()
    root = dhmc_root(tmp_path / "r", classes=("solid", "cribriform"))
    with pytest.raises(DataError, match=r"MetaData_Release_1.0.csv: row 3: unknown Class 'cribriform' for "
                                        r"DHMC_0002.tif; expected one of solid, lepidic, acinar, micropapillary, "
                                        r"papillary"):
        DHMCLUAD(root).samples()
    with pytest.raises(DataError, match="dhmc_luad has one split, 'all'"):
        DHMCLUAD(root, split="test").samples()


# ============================================================================================ Quilt-1M
QUILT_COLUMNS = ["caption", "image_path", "subset", "split", "pathology", "roi_text", "noisy_text", "corrected_text",
                 "med_umls_ids", "magnification", "height", "width"]
QUILT_ROWS = [
    ["H&E section  of a  lymph node.", "a_image_1.jpg", "quilt", "train", "['Hematopathology']", "", "", "", "",
     "1", "448", "640"],
    ["Another caption of the same image.", "a_image_1.jpg", "openpath", "train", "", "", "", "", "", "", "", ""],
    ["Dermatopathology, basal cell carcinoma.", "b_image_2.jpg", "pubmed", "val", "", "", "", "", "", "", "", ""],
    ["", "c_image_3.jpg", "laion", "train", "", "", "", "", "", "", "", ""],
    ["A missing image.", "d_image_4.jpg", "quilt", "train", "", "", "", "", "", "", "", ""],
]


def quilt_root(root: Path, columns=QUILT_COLUMNS, rows=QUILT_ROWS, index=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "quilt_1M_lookup.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(([""] if index else []) + columns)  # pandas' to_csv header: an unnamed index column first
        for k, r in enumerate(rows):
            w.writerow(([100 + k] if index else []) + r)
    for name in ("a_image_1.jpg", "b_image_2.jpg", "c_image_3.jpg"):
        write_png(root / "quilt_1m" / name, 16, 16, color=True)
    return root


def test_quilt1m_training_pairs_from_the_lookup_table(tmp_path):
    root = quilt_root(tmp_path)
    ds = Quilt1M(root)
    s = ds.samples()
    assert [x.sample_id for x in s] == ["quilt1m/100", "quilt1m/101"]  # one sample per row; the index column as id
    assert s[0].prompts == {"report": "H&E section of a lymph node."} and s[0].category is None and s[0].label is None
    assert s[0].image_path == str(root / "quilt_1m" / "a_image_1.jpg") and s[0].image_id == s[1].image_id
    assert s[0].meta["subset"] == "quilt" and s[0].meta["csv_size"] == (448, 640) and s[0].meta["csv_row"] == 2
    assert s[0].meta["pathology"] == "['Hematopathology']" and s[0].meta["modality"] == "pathology"
    assert [x["reason"] for x in ds.excluded] == ["empty caption (CSV row 5)"]
    assert ds.skipped == [{"path": str(root / "quilt_1m" / "d_image_4.jpg"), "reason": "image file not found"}]
    assert (ds.stats["table_rows"], ds.stats["split_rows"], ds.stats["split_images"]) == (5, 4, 3)
    val = Quilt1M(root, split="validate").samples()
    assert [x.prompts["report"] for x in val] == ["Dermatopathology, basal cell carcinoma."]
    assert val[0].split == "validate"
    only = Quilt1M(root, subsets=["openpath"])
    assert [x.sample_id for x in only.samples()] == ["quilt1m/101"]
    assert sum("not in subsets option" in e["reason"] for e in only.excluded) == 3
    assert Quilt1M(root, text_column="corrected_text").samples() == []  # every corrected_text is empty here
    no_index = quilt_root(tmp_path / "plain", index=False)
    assert [x.sample_id for x in Quilt1M(no_index).samples()] == ["quilt1m/2", "quilt1m/3"]  # CSV lines


def test_quilt1m_feeds_the_trainer_and_prepare(tmp_path):
    from benchmark.training.data import pairs_from_dataset

    root = quilt_root(tmp_path)
    pairs, info = pairs_from_dataset("quilt1m", "train", data_root=str(root))
    assert [p.report for p in pairs] == ["H&E section of a lymph node.", "Another caption of the same image."]
    assert info["n_loader_skipped"] == 1 and info["n_without_report"] == 0
    val, _ = pairs_from_dataset("quilt1m", "validate", data_root=str(root))  # the trainer's default val_split
    assert [p.image_path for p in val] == [str(root / "quilt_1m" / "b_image_2.jpg")]
    from benchmark.cli.main import main

    out = tmp_path / "prepared"
    assert main(["prepare", "quilt1m", "--data-root", str(root), "--out", str(out), "--size", "32"]) == 0
    meta = json.loads((out / "prepared.json").read_text())
    assert (meta["dataset"], meta["n_samples"], meta["n_loader_skipped"]) == ("quilt1m", 2, 1)


def test_quilt1m_bad_input(tmp_path):
    with pytest.raises(DataError, match="quilt_1M_lookup.csv: lookup table not found"):
        Quilt1M(tmp_path).samples()
    quilt_root(tmp_path, columns=["text", *QUILT_COLUMNS[1:]])
    with pytest.raises(DataError, match=r"quilt_1M_lookup.csv: missing column\(s\) \['caption'\]; expected "
                                        r"image_path, caption, subset, split"):
        Quilt1M(tmp_path).samples()
    rows = [list(r) for r in QUILT_ROWS]
    rows[2][2] = "reddit"
    quilt_root(tmp_path / "s", rows=rows)
    with pytest.raises(DataError, match=r"quilt_1M_lookup.csv: row 4: unknown subset 'reddit'; expected one of "
                                        r"openpath, pubmed, quilt, laion"):
        Quilt1M(tmp_path / "s").samples()
    rows[2][2], rows[2][3] = "pubmed", "test"
    quilt_root(tmp_path / "t", rows=rows)
    with pytest.raises(DataError, match=r"row 4: split 'test'; expected train or val"):
        Quilt1M(tmp_path / "t").samples()
    with pytest.raises(DataError, match=r"subsets: unknown \['youtube'\]"):
        Quilt1M(tmp_path / "t", subsets=["youtube"]).samples()
    with pytest.raises(DataError, match="quilt1m splits are train and val"):
        Quilt1M(tmp_path / "t", split="test").samples()


# ============================================================================================ all five
EMPTY_ROOT_FILES = {
    "nih_chestxray14": ["Data_Entry_2017.csv", "test_list.txt", "images"],
    "cxr_lt": ["cxr-lt-2024/test_labeled_task2.csv", "files"],
    "wsss4luad": ["1.training"],
    "dhmc_luad": ["MetaData_Release_1.0.csv"],
    "quilt1m": ["quilt_1M_lookup.csv", "quilt_1m"],
}


@pytest.mark.parametrize("name", NEW)
def test_validate_on_an_empty_root_names_the_expected_files(name, tmp_path):
    from benchmark.dataset import build_dataset

    rep = build_dataset(name, str(tmp_path)).validate()
    assert not rep["ok"] and rep["missing_files"] == [str(tmp_path / f) for f in EMPTY_ROOT_FILES[name]]
    assert "expected layout" in rep["problems"][0]
    missing = build_dataset(name, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        missing.samples()
    assert missing.card.source_url in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", NEW)
def test_card_readme_and_prompts_are_complete_data(name):
    card = datasets.get(name).card
    for field in ("title", "source_url", "licence", "access", "layout", "default_split", "resampling_unit"):
        assert getattr(card, field), (name, field)
    assert card.prompt_sets and card.views and card.tasks and card.extra["changelog"]
    assert card.default_split in card.extra["splits"]
    assert "not_in_pathology_table" not in card.extra
    for cat in card.categories:  # every class is a canonical name of the shared table
        assert pathologies.canonical_name(cat) == cat, (name, cat)
    readme = (C.dataset_dir(name) / "README.md").read_text()
    assert card.source_url in readme and f"card version {card.version}" in readme
    for split, counts in card.expected_counts.items():
        for k, v in counts.items():
            assert f"{k} {v:,}" in readme, (name, split, k)
    assert f"[`{name}`]({name}/README.md)" in (C.datasets_dir() / "README.md").read_text()
    if "classification" in card.tasks:
        cls = card.classification
        assert cls["mode"] == ("softmax" if card.modality == "pathology" else "multilabel")
        assert cls["metric"] == ("balanced_accuracy" if cls["mode"] == "softmax" else "auroc")
        assert set(card.official_spelling) <= set(card.categories)
        if card.modality == "pathology" or name == "nih_chestxray14":  # every class has its own official word
            assert set(card.official_spelling) == set(card.categories)
        prompts = C.load_prompts(name)
        for cat in card.categories:
            word = card.official_spelling.get(cat, cat)
            pos, neg = classification_prompts(card, cat)
            assert pos and neg
            if card.modality == "pathology":  # the grounding prompt is AFLoc's zero-shot prompt, verbatim
                assert prompts.render("simple", category=word, canonical=cat) == pos[0]
            else:
                assert prompts.render("simple", category=word, canonical=cat) == f"Findings suggesting {word}."


def test_registration_collections_and_ls(capsys):
    from benchmark.cli.main import main

    assert main(["ls", "datasets"]) == 0
    lines = {ln.split(" ", 1)[0]: ln for ln in capsys.readouterr().out.splitlines()}
    for name in NEW:
        assert name in lines
    assert lines["quilt1m"].startswith("quilt1m [training] (training)")
    assert lines["wsss4luad"].startswith("wsss4luad [classification] (pathology, classification)")
    assert set(datasets.resolve("pathology")) >= {"sicapv2", "wsss4luad", "dhmc_luad"}
    assert set(datasets.resolve("classification")) >= {"nih_chestxray14", "cxr_lt", "wsss4luad", "dhmc_luad"}
    assert "quilt1m" not in datasets.resolve("pathology") and "quilt1m" not in datasets.resolve("classification")
    assert {"nih_chestxray14", "cxr_lt"} <= set(datasets.resolve("chest"))
    assert main(["ls", "datasets", "pathology"]) == 0
    assert {ln.split(" ", 1)[0] for ln in capsys.readouterr().out.splitlines()} == set(datasets.resolve("pathology"))


def test_cxr_lt_task3_entry_reads_the_cxr_lt_files():
    from pathlib import Path

    from benchmark.dataset import build_dataset, resolve_root

    assert resolve_root("cxr_lt_t3", "/data/{dataset}") == Path("/data/cxr_lt")
    assert resolve_root("cxr_lt", "/data/{dataset}") == Path("/data/cxr_lt")
    assert build_dataset("cxr_lt_t3", "/data/{dataset}").label_set == "t3"
    assert build_dataset("cxr_lt", "/data/{dataset}").label_set == "t2"
