"""Same seed → byte-identical files (whatever the number of workers); another seed differs;
``ensure`` generates only when needed, atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import benchmark.demo as demo

SUBSET = ["siim_pneumothorax", "chexlocalize", "mimic_cxr"]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _gen(path, seed, workers):
    demo.generate(path, seed=seed, n_train=3, n_test=2, datasets=SUBSET, progress=False, workers=workers)
    return tree_hash(path)


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    a = _gen(tmp_path / "a", 0, 1)
    b = _gen(tmp_path / "b", 0, 2)  # parallel rendering gives the same files
    c = _gen(tmp_path / "c", 1, 1)
    assert a == b
    assert a != c


def test_regenerating_replaces_stale_files(tmp_path):
    opts = dict(seed=0, n_train=1, n_test=1, datasets=["covid_rural"], progress=False)
    demo.generate(tmp_path, **opts)
    first = tree_hash(tmp_path)
    (tmp_path / "covid_rural" / "jpgs" / "stale.jpg").write_bytes(b"x")
    demo.generate(tmp_path, **opts)
    assert tree_hash(tmp_path) == first


def test_dicom_uids_and_dates_are_deterministic(tmp_path):
    import pydicom

    demo.generate(tmp_path / "x", seed=3, n_train=1, n_test=2, datasets=["rsna_pneumonia"], progress=False)
    files = sorted((tmp_path / "x" / "rsna_pneumonia" / "stage_2_train_images").glob("*.dcm"))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.StudyDate == "19010101" and ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
    assert ds.PatientID == files[0].stem


def test_bad_requests_are_refused(tmp_path):
    from benchmark.dataset import DataError

    with pytest.raises(DataError, match="unknown demo dataset"):
        demo.generate(tmp_path, datasets=["rsna"], progress=False)
    with pytest.raises(ValueError):
        demo.generate(tmp_path, n_test=0, progress=False)


def test_ensure_generates_once_and_on_version_change(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "seed0"
    opts = dict(n_train=1, n_test=1, datasets=["covid_rural"], progress=False)
    out = demo.ensure(root, seed=0, **opts)
    assert out == root and (root / "manifest.json").is_file()
    stamp = os.stat(root / "manifest.json").st_mtime_ns
    demo.ensure(root, seed=0, **opts)  # present and current: untouched
    assert os.stat(root / "manifest.json").st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temporary folders left
    monkeypatch.setattr(demo, "DEMO_VERSION", "older")
    m = json.loads((root / "manifest.json").read_text())
    assert m["version"] != "older"
    demo.ensure(root, seed=0, **opts)  # a different version regenerates
    assert json.loads((root / "manifest.json").read_text())["version"] == "older"


def test_concurrent_ensure_generates_once(tmp_path, monkeypatch):
    import importlib
    import threading

    gen = importlib.import_module("benchmark.demo.generator")
    calls = []
    real = gen.generate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate", counting)
    root = tmp_path / "seed0"
    opts = dict(n_train=1, n_test=1, datasets=["covid_rural"], progress=False, workers=1)
    threads = [threading.Thread(target=demo.ensure, args=(root,), kwargs=opts) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (root / "manifest.json").is_file()


def test_ensure_adds_only_the_missing_sets_with_the_same_bytes(tmp_path, monkeypatch):
    """A run generates only the sets it reads; a set added later is the same bytes as one generated
    with the others, and the manifest lists a set only once its folder is in place."""
    import importlib

    gen = importlib.import_module("benchmark.demo.generator")
    calls = []
    real = gen.generate

    def counting(*a, **k):
        calls.append(list(k["datasets"]))
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate", counting)
    opts = dict(progress=False, workers=1)
    root = tmp_path / "lazy" / "seed0"
    demo.ensure(root, seed=0, n_train=1, n_test=2, datasets=["covid_rural"], **opts)
    assert sorted(json.loads((root / "manifest.json").read_text())["datasets"]) == ["covid_rural"]
    demo.ensure(root, seed=0, datasets=["covid_rural", "nih_bbox"], **opts)  # sizes: the collection's
    demo.ensure(root, seed=0, datasets=["nih_bbox"], **opts)  # complete: nothing generated
    assert calls == [["covid_rural"], ["nih_bbox"]]
    m = json.loads((root / "manifest.json").read_text())
    assert sorted(m["datasets"]) == ["covid_rural", "nih_bbox"] and (m["n_train"], m["n_test"]) == (1, 2)
    together = tmp_path / "together"
    real(together, seed=0, n_train=1, n_test=2, datasets=["covid_rural", "nih_bbox"], progress=False)
    for name in ("covid_rural", "nih_bbox"):
        assert tree_hash(root / name) == tree_hash(together / name)
        assert (root / "provenance" / f"{name}.jsonl").read_bytes() == \
            (together / "provenance" / f"{name}.jsonl").read_bytes()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".") and p.is_dir()]
    demo.ensure(root, seed=0, n_test=3, datasets=["nih_bbox"], **opts)  # other sizes: a new collection
    assert sorted(json.loads((root / "manifest.json").read_text())["datasets"]) == ["nih_bbox"]
