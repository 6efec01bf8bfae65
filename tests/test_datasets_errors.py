"""Bad input gives a clear error naming the file (or a recorded skip naming it), never a silent drop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets_fixtures import write_dicom, write_json, write_png

from benchmark.dataset import DataError
from benchmark.datasets.chestx_det10.loader import ChestXDet10
from benchmark.datasets.chexlocalize.loader import CheXlocalize
from benchmark.datasets.ms_cxr.loader import MSCXR
from benchmark.datasets.nih_bbox.loader import NIHBBox
from benchmark.datasets.rsna_pneumonia.loader import RSNAPneumonia
from benchmark.datasets.siim_pneumothorax.loader import SIIMPneumothorax
from benchmark.pathologies import UnknownCategoryError

RSNA_CSV = ("patientId,x,y,width,height,Target\n"
            "aaa,,,,,0\n"
            "bbb,100,200,50,60,1\n"
            "bbb,500,200,40,60,1\n"
            "ccc,,,,,0\n")


def rsna_root(tmp_path, csv=RSNA_CSV):
    (tmp_path / "stage_2_train_labels.csv").write_text(csv)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.txt").write_text("aaa\nbbb\nccc\n")
    return tmp_path


def test_missing_root_names_download_page_and_layout(tmp_path):
    with pytest.raises(DataError) as err:
        RSNAPneumonia(tmp_path / "nowhere").samples()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg
    assert "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge" in msg
    assert "\n" not in msg and "afloc-bench validate --datasets rsna_pneumonia" in msg  # one line, and where to look
    from benchmark.cli.validate import print_report

    report = RSNAPneumonia(tmp_path / "nowhere").validate()
    import io

    buf = io.StringIO()
    print_report(report, buf)
    assert "stage_2_train_labels.csv" in buf.getvalue() and "stage_2_train_images/<patientId>.dcm" in buf.getvalue()


def test_missing_table_in_existing_root_names_file_and_layout(tmp_path):
    with pytest.raises(DataError) as err:
        SIIMPneumothorax(tmp_path).samples()
    assert "train-rle.csv" in str(err.value) and "dicom-images-train" in str(err.value)


def test_missing_image_is_skipped_by_name_or_raises_when_strict(tmp_path):
    root = rsna_root(tmp_path)
    for pid in ("aaa", "bbb"):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm")
    ds = RSNAPneumonia(root)
    assert [s.image_id for s in ds.samples()] == ["aaa", "bbb"]
    assert ds.skipped == [{"path": str(root / "stage_2_train_images" / "ccc.dcm"), "reason": "image file not found"}]
    with pytest.raises(DataError, match="ccc.dcm: image file not found"):
        RSNAPneumonia(root, strict=True).samples()


def test_corrupt_dicom_is_skipped_with_the_file_named(tmp_path):
    root = rsna_root(tmp_path)
    write_dicom(root / "stage_2_train_images" / "aaa.dcm")
    write_dicom(root / "stage_2_train_images" / "bbb.dcm")
    (root / "stage_2_train_images" / "ccc.dcm").write_bytes(b"this is not a DICOM file")
    ds = RSNAPneumonia(root)
    assert len(ds.samples()) == 2
    (skip,) = ds.skipped
    assert skip["path"].endswith("ccc.dcm") and skip["reason"].startswith("unreadable DICOM")
    rep = ds.validate({"samples": 3})
    assert not rep["ok"]
    assert any("ccc.dcm" in p and "unreadable DICOM" in p for p in rep["problems"])


def test_rsna_table_errors_name_the_row(tmp_path):
    bad = RSNA_CSV.replace("bbb,500,200,40,60,1", "bbb,,,,,1")
    with pytest.raises(DataError, match=r"stage_2_train_labels.csv: row 4: Target 1 needs"):
        RSNAPneumonia(rsna_root(tmp_path, bad)).samples()


def test_split_list_id_not_in_table(tmp_path):
    root = rsna_root(tmp_path)
    (root / "splits" / "test.txt").write_text("aaa\nzzz\n")
    with pytest.raises(DataError, match=r"splits/test.txt: line 2: patientId 'zzz' is not in"):
        RSNAPneumonia(root).samples()


@pytest.mark.parametrize("rle,expected", [
    ("1 2 3", "odd number of values"),
    ("5 x 3 4", "not a list of integers"),
    ("1048570 10", "runs past the image end"),
    ("3 -2", "negative gap or a non-positive length"),
])
def test_malformed_siim_rle_names_csv_and_row(tmp_path, rle, expected):
    (tmp_path / "train-rle.csv").write_text(f"ImageId, EncodedPixels\nimg1, -1\nimg2, {rle}\n")
    write_dicom(tmp_path / "dicom-images-train" / "s" / "r" / "img1.dcm")
    write_dicom(tmp_path / "dicom-images-train" / "s" / "r" / "img2.dcm")
    with pytest.raises(DataError) as err:
        SIIMPneumothorax(tmp_path, split="all").samples()
    assert "train-rle.csv: row 3" in str(err.value) and expected in str(err.value)


def test_siim_mixed_negative_and_positive_rows(tmp_path):
    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\nimg1, 10 5\nimg1, -1\n")
    (tmp_path / "dicom-images-train").mkdir()
    with pytest.raises(DataError, match="row 3: ImageId img1 has both"):
        SIIMPneumothorax(tmp_path, split="all").samples()


def test_malformed_chexlocalize_rle_names_json_and_cxr(tmp_path):
    write_png(tmp_path / "CheXpert" / "test" / "patient1" / "study1" / "view1_frontal.jpg", 20, 20)
    from pycocotools import mask as mu

    good = mu.encode(np.asfortranarray(np.ones((20, 20), np.uint8)))["counts"].decode()
    entry = {t: {"size": [20, 20], "counts": good} for t in ["Edema", "Cardiomegaly"]}
    entry["Edema"] = {"size": [20, 21], "counts": good}  # runs do not cover 20x21
    write_json(tmp_path / "CheXlocalize" / "gt_segmentations_test.json", {"patient1_study1_view1_frontal": entry})
    with pytest.raises(DataError) as err:
        CheXlocalize(tmp_path).samples()
    msg = str(err.value)
    assert "gt_segmentations_test.json" in msg and "patient1_study1_view1_frontal" in msg and "Edema" in msg


def test_unknown_category_chestx_det10(tmp_path):
    write_json(tmp_path / "test.json", [{"file_name": "1.png", "syms": ["Pnuemothorax"], "boxes": [[1, 2, 3, 4]]}])
    (tmp_path / "test_data").mkdir()
    with pytest.raises(UnknownCategoryError) as err:
        ChestXDet10(tmp_path).samples()
    msg = str(err.value)
    assert "test.json" in msg and "entry 0 (1.png)" in msg and "'Pnuemothorax'" in msg and "Pneumothorax" in msg


def test_unknown_category_nih_csv_row(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                                 "00000001_000.png,Cardiomegaly,1,2,3,4\n"
                                                 "00000002_000.png,Heart Bigness,1,2,3,4\n")
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID,View Position\n")
    with pytest.raises(UnknownCategoryError, match=r"BBox_List_2017.csv: row 3: unknown category 'Heart Bigness'"):
        NIHBBox(tmp_path).samples()


def test_unknown_category_ms_cxr_json(tmp_path):
    write_json(tmp_path / "MS_CXR_Local_Alignment_v1.0.0.json", {
        "images": [{"id": 1, "path": "files/p10/p10000001/s1/d.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4], "width": 10, "height": 10,
                         "label_text": "x", "category_id": 1}],
        "categories": [{"id": 1, "name": "Lung Blob"}]})
    write_png(tmp_path / "files/p10/p10000001/s1/d.jpg", 10, 10)
    with pytest.raises(UnknownCategoryError, match=r"MS_CXR_Local_Alignment_v1.0.0.json: annotation 0 \(id 1\)"):
        MSCXR(tmp_path).samples()


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['dedup'\]"):
        SIIMPneumothorax("/tmp", dedup=False)


def test_ms_cxr_image_size_mismatch_is_skipped(tmp_path):
    write_json(tmp_path / "MS_CXR_Local_Alignment_v1.0.0.json", {
        "images": [{"id": 1, "path": "files/p10/p10000001/s1/d.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4], "width": 10, "height": 10,
                         "label_text": "x", "category_id": 1}],
        "categories": [{"id": 1, "name": "Edema"}]})
    write_png(tmp_path / "files/p10/p10000001/s1/d.jpg", 12, 10)
    ds = MSCXR(tmp_path)
    assert ds.samples() == []
    assert "differs from the annotation's 10x10" in ds.skipped[0]["reason"]


def test_malformed_json_names_file(tmp_path):
    (tmp_path / "test.json").write_text("[{")
    (tmp_path / "test_data").mkdir()
    with pytest.raises(DataError, match="test.json: cannot read JSON"):
        ChestXDet10(tmp_path).samples()
    write_json(tmp_path / "test.json", [{"file_name": "1.png", "syms": ["Mass"], "boxes": [[5, 5, 2, 9]]}])
    with pytest.raises(DataError, match=r"entry 0 \(1.png\): box \[5, 5, 2, 9\] has x2 <= x1"):
        ChestXDet10(tmp_path).samples()
    json.loads((tmp_path / "test.json").read_text())
