"""`afloc-bench validate`: files, counts (card or demo manifest), one mask, prompts; non-zero exit on a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets_fixtures import write_dicom, write_json, write_png

from benchmark.cli.main import main
from benchmark.cli.validate import manifest_counts


def run(capsys, *argv):
    rc = main(["validate", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_missing_root_names_download_page_and_layout(capsys, tmp_path):
    rc, out = run(capsys, "--datasets", "siim_pneumothorax,covid_rural", "--data-root", str(tmp_path / "{dataset}"))
    assert rc == 1
    assert "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation" in out
    assert "dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm" in out
    assert "github.com/haimingt/opacity_segmentation_covid_chest_X_ray" in out
    assert "0 of 2 dataset(s) valid" in out


def test_missing_required_file_is_named(capsys, tmp_path):
    (tmp_path / "chestx_det10" / "test_data").mkdir(parents=True)
    rc, out = run(capsys, "--datasets", "chestx_det10", "--data-root", str(tmp_path / "{dataset}"))
    assert rc == 1 and str(tmp_path / "chestx_det10" / "test.json") in out and "1 required file(s) missing" in out


def siim_root(root, n_missing=0, corrupt=0):
    """3 images listed in a root-local test split; one positive in two parts."""
    (root / "splits").mkdir(parents=True)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\nA, -1\nB, 1000 20 1004 20\nB, 50000 30\nC, -1\n")
    (root / "splits" / "test.txt").write_text("A 0\nB 1\nC 0\n")
    for i, name in enumerate("ABC"):
        path = root / "dicom-images-train" / f"1.{i}" / f"2.{i}" / f"{name}.dcm"
        if i < 3 - n_missing - corrupt:
            write_dicom(path, view="PA")
        elif i < 3 - n_missing:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"garbage")
    return root


def demo_env(monkeypatch, tmp_path, counts):
    demo = tmp_path / "demo"
    demo.mkdir()
    write_json(demo / "manifest.json", {"version": "1", "seed": 0, "datasets": counts})
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(demo))
    return demo


def test_demo_counts_come_from_the_manifest(capsys, tmp_path, monkeypatch):
    demo = demo_env(monkeypatch, tmp_path, {"siim_pneumothorax": {"counts": {"test": 3, "positive": 1,
                                                                             "multi_part_positive": 1}}})
    siim_root(demo / "siim_pneumothorax")
    rc, out = run(capsys, "--datasets", "demo_siim")
    assert rc == 0, out
    assert "demo_siim [test]" in out and "OK" in out and "RLE decoded, 1024x1024, 70 pixels" in out
    assert "root-local override" in out and "Findings suggesting pneumothorax." in out


def test_count_mismatch_exits_nonzero(capsys, tmp_path, monkeypatch):
    demo = demo_env(monkeypatch, tmp_path, {"siim_pneumothorax": {"counts": {"test": 4, "positive": 1}}})
    siim_root(demo / "siim_pneumothorax")
    rc, out = run(capsys, "--datasets", "demo_siim")
    assert rc == 1 and "split_images 3 (expected 4)" in out


def test_every_missing_and_unreadable_file_listed_with_counts(capsys, tmp_path, monkeypatch):
    demo = demo_env(monkeypatch, tmp_path, {"siim_pneumothorax": {"counts": {"test": 3}}})
    root = siim_root(demo / "siim_pneumothorax", n_missing=1, corrupt=1)
    rc, out = run(capsys, "--datasets", "demo_siim")
    assert rc == 1
    assert "1 sample(s) skipped, image file not found" in out and str(root / "dicom-images-train" / "C.dcm") in out
    assert "1 sample(s) skipped, unreadable DICOM" in out and "B.dcm" in out


def test_demo_without_manifest_is_not_generated_unless_asked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(tmp_path / "nodemo"))
    rc, out = run(capsys, "--datasets", "demo_rsna")
    assert rc == 1 and "demo data not generated" in out and "--generate" in out
    assert not (tmp_path / "nodemo").exists()


def test_json_output_and_options(capsys, tmp_path, monkeypatch):
    demo = demo_env(monkeypatch, tmp_path, {"siim_pneumothorax": {"counts": {"test": 3}}})
    siim_root(demo / "siim_pneumothorax")
    (demo / "siim_pneumothorax" / "train-rle.csv").write_text(
        "ImageId, EncodedPixels\nA, -1\nB, 1000 20\nB, 50000 30\nC, -1\n")
    (demo / "siim_pneumothorax" / "splits" / "test.txt").write_text("A 0\nB 1\nB 1\nC 0\n")  # AFLoc-style repeat
    rc, out = run(capsys, "--datasets", "demo_siim", "--option", "dedupe=false", "--json")
    rep = json.loads(out)[0]
    assert rc == 0 and rep["counts"]["samples"] == 4 and rep["counts"]["split_images"] == 3


def test_prompt_and_mask_checks_on_a_real_card(capsys, tmp_path):
    # COVID Rural has no verified counts: validate still loads, decodes a mask and renders prompts
    root = tmp_path / "covid_rural"
    write_png(root / "jpgs" / "COVID-19-AR-1_01-01-2020-XR.jpg", 20, 30)
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:9] = 1
    write_png(root / "pngs_masks" / "COVID-19-AR-1_01-01-2020-XR.png", mask=m)
    rc, out = run(capsys, "--datasets", "covid_rural", "--data-root", str(tmp_path / "{dataset}"))
    assert rc == 0, out
    assert "mask file decoded, 20x30, 18 pixels" in out and "Findings suggesting pneumonia." in out
    assert "documented (unverified) 221" in out  # a warning, not a failure


def test_manifest_counts_translation():
    data = {"datasets": {"chexlocalize": {"counts": {"val": 2, "val_with_positive": 1, "test": 6,
                                                     "test_with_positive": 3}},
                         "covid_rural": {"counts": {"test": 6, "positive": 6}},
                         "ms_cxr": {"counts": {"test": 6, "val": 1, "boxes": 9}},
                         "rsna_pneumonia": {"expected_counts": {"test": {"samples": 5}}}}}
    assert manifest_counts(data, "chexlocalize", "demo_chexlocalize") == {
        "val": {"split_images": 2, "table_images": 1}, "test": {"split_images": 6, "table_images": 3}}
    assert manifest_counts(data, "covid_rural", "demo_covid_rural") == {
        "all": {"split_images": 6, "positive_images": 6}}
    assert manifest_counts(data, "ms_cxr", "demo_ms_cxr")["all"] == {"split_boxes": 9, "split_images": 7}
    assert manifest_counts(data, "rsna_pneumonia", "demo_rsna") == {"test": {"samples": 5}}
    assert manifest_counts(data, "nih_bbox", "demo_nih_bbox") == {}


@pytest.mark.parametrize("dicom_view", ["AP"])
def test_real_card_counts_checked_on_a_real_layout(capsys, tmp_path, dicom_view):
    """A tiny RSNA root with a root-local split: card counts for 'test' do not apply -> mismatch reported."""
    root = tmp_path / "rsna_pneumonia"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np1,1,2,3,4,1\n")
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("p1\n")
    write_dicom(root / "stage_2_train_images" / "p1.dcm", view=dicom_view)
    rc, out = run(capsys, "--datasets", "rsna_pneumonia", "--data-root", str(tmp_path / "{dataset}"))
    assert rc == 1 and "samples 1 (expected 5337)" in out
