"""Cards, prompt sets and split files as data; RLE helpers; the DICOM header cache; split overrides."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets_fixtures import write_dicom

from benchmark import pathologies
from benchmark.dataset import DatasetCard, is_demo
from benchmark.datasets import common as C
from benchmark.datasets.rsna_pneumonia.loader import RSNAPneumonia
from benchmark.geometry.rasterize import decode_rle
from benchmark.registry import datasets

REAL = ["rsna_pneumonia", "ms_cxr", "chexlocalize", "covid_rural", "siim_pneumothorax", "chestx_det10", "nih_bbox",
        "sicapv2", "mimic_cxr", "vindr_cxr"]
DEMO = ["demo_rsna", "demo_ms_cxr", "demo_chexlocalize", "demo_covid_rural", "demo_siim", "demo_chestx_det10",
        "demo_nih_bbox", "demo_mimic"]


def test_every_dataset_and_demo_variant_is_registered_with_tags():
    names = set(datasets.names())
    assert set(REAL) <= names and set(DEMO) <= names
    assert set(datasets.resolve("chest")) >= {"rsna_pneumonia", "ms_cxr", "chexlocalize", "covid_rural",
                                              "siim_pneumothorax", "chestx_det10", "nih_bbox", "vindr_cxr"}
    assert set(datasets.resolve("pathology")) >= {"sicapv2", "wsss4luad", "dhmc_luad"}
    assert "rsna_pneumonia" in datasets.resolve("classification") and "ms_cxr" in datasets.resolve("grounding")
    assert "demo_mimic" not in datasets.resolve("demo") and "demo_rsna" in datasets.resolve("demo")
    assert all(is_demo(d) for d in DEMO) and not any(is_demo(d) for d in REAL)
    assert "mimic_cxr" not in datasets.resolve("chest")  # training data is not an evaluation set


@pytest.mark.parametrize("name", REAL)
def test_card_is_complete_data(name):
    card = datasets.get(name).card
    assert isinstance(card, DatasetCard) and card.name == name
    for field in ("title", "source_url", "licence", "access", "layout", "default_split", "resampling_unit"):
        assert getattr(card, field), (name, field)
    assert card.prompt_sets and card.views and card.tasks
    for cat in card.categories:
        assert pathologies.canonical_name(cat) == cat, (name, cat)
    extra = card.extra
    assert card.default_split in extra["splits"] and extra["changelog"]
    readme = (C.dataset_dir(name) / "README.md").read_text()
    assert card.source_url in readme and f"card version {card.version}" in readme
    for split, counts in card.expected_counts.items():
        for k, v in counts.items():
            assert f"{k} {v:,}" in readme, (name, split, k)


@pytest.mark.parametrize("name", REAL)
def test_shipped_split_files_match_their_sha256(name):
    card = datasets.get(name).card
    for split, spec in card.extra["splits"].items():
        if isinstance(spec, dict) and spec.get("file"):
            path = C.dataset_dir(name) / spec["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == spec["sha256"], (name, split)
            assert (path.parent / "PROVENANCE.md").is_file()


@pytest.mark.parametrize("name", [n for n in REAL if n != "mimic_cxr"])
def test_prompt_sets_render_for_every_category(name):
    card = datasets.get(name).card
    prompts = C.load_prompts(name)
    assert set(card.prompt_sets) <= set(prompts.set_names)
    for cat in card.categories or [None]:
        source = {"Pleural Effusion": "Effusion"}.get(cat, cat) if name == "chestx_det10" else cat
        if name == "sicapv2":
            source = {"Non-cancerous": "NC", "Gleason Pattern 3": "G3", "Gleason Pattern 4": "G4",
                      "Gleason Pattern 5": "G5"}[cat]
        for s in card.prompt_sets:
            text = prompts.render(s, category=source, canonical=cat, phrase="a phrase")
            assert text and "{" not in text


def test_afloc_prompt_strings_verbatim():
    assert C.load_prompts("rsna_pneumonia").render("simple") == "Findings suggesting pneumonia."
    assert C.load_prompts("covid_rural").render("simple") == "Findings suggesting pneumonia."
    assert C.load_prompts("chexlocalize").render("simple", category="Airspace Opacity") == \
        "Findings suggesting Airspace Opacity."
    assert C.load_prompts("ms_cxr").render("precise", category="Edema", phrase="mild edema") == "mild edema"
    sic = C.load_prompts("sicapv2")
    assert [sic.render("simple", category=c) for c in ("NC", "G3", "G4", "G5")] == [
        "an example of benign prostate tissue.", "an example of prostate cancer, gleason pattern 3.",
        "an example of gleason grade 4.", "an example of prostate cancer, gleason pattern 5."]


def test_read_id_list_formats(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("# comment\nstage_2_test_images/abc.dcm 1 \n\na/b/1.2.3.jpg 0\nplain-id\n")
    e = C.read_id_list(p)
    assert [(x.id, x.label, x.line) for x in e] == [("abc", 1, 2), ("1.2.3", 0, 4), ("plain-id", None, 5)]
    p.write_text("abc 7\n")
    with pytest.raises(Exception, match="line 1: label must be 0 or 1"):
        C.read_id_list(p)


def test_root_local_split_overrides_shipped_list(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np1,,,,,0\np2,10,20,30,40,1\np3,,,,,0\n")
    for p in ("p1", "p2", "p3"):
        write_dicom(tmp_path / "stage_2_train_images" / f"{p}.dcm", view="AP")
    with pytest.raises(Exception, match="none of its 5337 ids is in"):  # shipped MedKLIP list vs a foreign table
        RSNAPneumonia(tmp_path).samples()
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.txt").write_text("p2\np3\n")
    ds = RSNAPneumonia(tmp_path)
    assert [s.image_id for s in ds.samples()] == ["p2", "p3"]
    assert ds.split_source["overridden"] and ds.samples()[0].boxes == [[10.0, 20.0, 30.0, 40.0]]
    assert len(RSNAPneumonia(tmp_path, split="all").samples()) == 3


def test_rle_string_codec_matches_pycocotools():
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        m = (rng.random((h, w)) < [0.0, 0.05, 0.5, 1.0][t % 4]).astype(np.uint8)
        ref = mu.encode(np.asfortranarray(m))["counts"].decode()
        counts = C.decode_counts(ref)
        assert C.encode_counts(counts.tolist()) == ref
        assert C.check_coco_rle({"size": [h, w], "counts": ref}, source="x", where="y") == (h, w, int(m.sum()))
        assert np.array_equal(decode_rle({"size": [h, w], "counts": ref}), m)


def test_kaggle_relative_rle_to_coco():
    # column-major, gaps relative to the end of the previous run; two parts unioned
    h = w = 4
    a = C.kaggle_rle_runs("1 2 3 1", h * w, source="f", row=2)  # pixels 1,2 and 6
    b = C.kaggle_rle_runs("2 2", h * w, source="f", row=3)      # pixels 2,3
    assert a == [(1, 2), (6, 1)] and b == [(2, 2)]
    rle = C.coco_rle(C.runs_to_counts(C.runs_union([a, b]), h * w), h, w)
    flat = np.zeros(h * w, np.uint8)
    flat[[1, 2, 3, 6]] = 1
    assert np.array_equal(decode_rle(rle), flat.reshape(w, h).T)  # Kaggle: reshape(w, h).T
    assert C.kaggle_rle_runs(" -1", 16, source="f", row=1) == []


def test_dicom_header_cache(tmp_path, monkeypatch):
    f = write_dicom(tmp_path / "d" / "a.dcm", rows=64, cols=48, view="AP")
    calls = []
    real = C.read_dicom_header
    monkeypatch.setattr(C, "read_dicom_header", lambda p: calls.append(p) or real(p))
    h1 = C.DicomHeaders(tmp_path / "d")
    assert h1.get(f) == {"view": "AP", "rows": 64, "cols": 48, "photometric": "MONOCHROME2"}
    h1.save()
    h2 = C.DicomHeaders(tmp_path / "d")
    assert h2.get(f)["rows"] == 64 and len(calls) == 1  # second instance: from the on-disk cache
    write_dicom(f, rows=32, cols=32, view="PA")  # changed file (size differs): re-read
    assert h2.get(f)["view"] == "PA" and len(calls) == 2


def test_plugin_modules_do_not_import_torch():
    code = ("import sys; from benchmark.registry import datasets; datasets.names(); "
            "import benchmark.datasets.common, benchmark.pathologies; "
            "print('torch' in sys.modules, 'pydicom' in sys.modules, 'pycocotools' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["False", "False", "False"]
