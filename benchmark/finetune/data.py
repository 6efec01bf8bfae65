"""Fine-tuning data: samples, patient units, splits, resized arrays (segmentation: with masks;
classification: the samples' 0/1 labels)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset import DataError
from benchmark.finetune.fractions import balanced_negatives, carve, label_fraction

log = logging.getLogger("afloc_bench.finetune")


@dataclass
class Item:
    image_id: str
    patient: str
    path: str
    positive: bool
    sample: Any


def load_items(dataset: str, data_root: str | None, split: str) -> list[Item]:
    """The dataset's samples of ``split`` as items (patient unit filled in later)."""
    from benchmark.dataset import build_dataset, is_demo

    if is_demo(dataset):
        from benchmark.demo import ensure_demo_data

        ensure_demo_data([dataset])
    ds = build_dataset(dataset, data_root, split=split)
    return [Item(str(s.image_id or s.sample_id), "", s.image_path, bool(s.rles or s.boxes or s.polygons), s)
            for s in ds.samples()]


def dicom_patient(path: str) -> str | None:
    if not str(path).lower().endswith(".dcm"):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as exc:  # noqa: BLE001 - any parse failure is a data error
        raise DataError(path, f"a readable DICOM header ({type(exc).__name__}: {exc})") from exc
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    return pid or None


def assign_patients(items: list[Item], key: str) -> dict[str, int]:
    """Fill ``Item.patient``: the sample's patient id, else the DICOM PatientID (``key: dicom``), else the image."""
    counts = {"from_sample": 0, "from_dicom": 0, "from_image_id": 0}
    for it in items:
        pid = getattr(it.sample, "patient_id", None)
        if pid:
            counts["from_sample"] += 1
        elif key == "dicom" and (pid := dicom_patient(it.path)):
            counts["from_dicom"] += 1
        else:
            pid = it.image_id
            counts["from_image_id"] += 1
        it.patient = f"p:{pid}"
    return counts


def use_labels(items: list[Item], dataset: str) -> None:
    """Classification: ``Item.positive`` is the sample's 0/1 label (not its drawn findings)."""
    unlabeled = [it.image_id for it in items if it.sample.label not in (0, 1)]
    if unlabeled:
        raise DataError(None, f"{dataset}: {len(unlabeled)} image(s) without a 0/1 label (e.g. {unlabeled[0]}); "
                              "classification fine-tuning needs a label on every image")
    for it in items:
        it.positive = bool(it.sample.label)


def make_splits(dataset: str, data_root: str | None, cfg, seed: int, fraction: float,
                labels: bool = False) -> dict[str, Any]:
    """Train (the label fraction), validation and test items, and the record of how they were chosen.
    ``labels``: positives are the samples' labels (classification), not images with findings."""
    everything = load_items(dataset, data_root, "all")
    if labels:
        use_labels(everything, dataset)
    patient_counts = assign_patients(everything, cfg.patient_key)
    by_patient: dict[str, list[Item]] = {}
    for it in everything:
        by_patient.setdefault(it.patient, []).append(it)
    patients = sorted(by_patient)
    how: dict[str, Any] = {"patient_key": cfg.patient_key, "patient_source": patient_counts,
                           "split_seed": cfg.split_seed}
    if cfg.test_split:
        test_ids = {it.image_id for it in load_items(dataset, data_root, cfg.test_split)}
        test_pat = sorted({p for p in patients if any(i.image_id in test_ids for i in by_patient[p])})
        pool = [p for p in patients if p not in set(test_pat)]
        how["test"] = f"the card's split {cfg.test_split!r} (whole patients)"
        if not pool:
            raise DataError(None, f"training images besides the test split {cfg.test_split!r} of {dataset} "
                                  "(the split covers every image; use a config with test_split: null)")
    else:
        pool, test_pat = carve(patients, cfg.test_share, cfg.split_seed, "test")
        how["test"] = f"carved: {cfg.test_share} of the patients (split_seed {cfg.split_seed})"
    train_pool, val_pat = carve(pool, cfg.val_share, cfg.split_seed, "validation")
    how["validation"] = f"carved: {cfg.val_share} of the non-test patients (split_seed {cfg.split_seed})"
    if cfg.train_negatives == "balanced":
        pos = [p for p in train_pool if any(i.positive for i in by_patient[p])]
        neg = [p for p in train_pool if p not in set(pos)]
        train_pool = balanced_negatives(pos, neg, cfg.split_seed)
        how["train_pool"] = "positive patients + as many negative patients (MGCA), split_seed"
    else:
        how["train_pool"] = "every non-test, non-validation patient"
    train_pat = label_fraction(train_pool, fraction, seed)
    how["fraction"] = (f"first max(1, round({fraction} x {len(train_pool)})) patients of one permutation "
                       f"seeded by seed {seed} (nested across fractions)")

    def items(pats):
        return [i for p in sorted(pats) for i in by_patient[p]]

    return {"train": items(train_pat), "validation": items(val_pat), "test": items(test_pat),
            "patients": {"train": sorted(train_pat), "train_pool": sorted(train_pool), "validation": sorted(val_pat),
                         "test": sorted(test_pat)}, "how": how}


def _grey(path: str) -> np.ndarray:
    import cv2

    from benchmark.io.images import read_image

    img = read_image(Path(path), "canonical")
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


def load_arrays(items: list[Item], size: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks resized to ``size`` × ``size``: uint8 [N, S, S] each (mask 0/1)."""
    import cv2

    from benchmark.geometry.rasterize import sample_mask
    from benchmark.progress import Progress

    imgs = np.zeros((len(items), size, size), np.uint8)
    masks = np.zeros((len(items), size, size), np.uint8)
    with Progress(len(items), desc, unit="img") as bar:
        for n, it in enumerate(items):
            img = _grey(it.path)
            imgs[n] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            m = sample_mask(it.sample, img.shape[:2]).astype(np.float32)
            masks[n] = cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) >= 0.5
            bar.update(1)
    return imgs, masks


def load_images(items: list[Item], size: int, desc: str) -> np.ndarray:
    """Images resized to ``size`` × ``size`` (uint8 [N, S, S]) and nothing else: classification."""
    import cv2

    from benchmark.progress import Progress

    imgs = np.zeros((len(items), size, size), np.uint8)
    with Progress(len(items), desc, unit="img") as bar:
        for n, it in enumerate(items):
            imgs[n] = cv2.resize(_grey(it.path), (size, size), interpolation=cv2.INTER_AREA)
            bar.update(1)
    return imgs
