"""CXR-LT 2024 (long-tailed multi-label classification on MIMIC-CXR-JPG): tasks 2 and 3.

AFLoc's ``classification.py --dataset CXR-LT-T2`` / ``CXR-LT-T3`` read the labelled test files of the
PhysioNet release ``cxr-lt-iccv-workshop-cvamd/2.0.0/cxr-lt-2024``: ``test_labeled_task2.csv`` (26
classes, the manually annotated gold-standard set) and ``test_labeled_task3.csv`` (5 classes unseen
in training), one row per image with its MIMIC-CXR-JPG path in ``fpath`` (``path`` is accepted too)
and one 0/1 column per class; ``dicom_id``, ``subject_id``, ``study_id`` and ``ViewPosition`` are
used when present. The images are MIMIC-CXR-JPG files at ``<image_root>/<fpath>``.

Option ``label_set``: ``t2`` (default) or ``t3``. One sample per (image, class), label 0/1
(multi-label, per-class AUROC), in the class order of AFLoc's ``CXR_LT_T2`` / ``CXR_LT_T3``.
Splits: ``test`` (default; ``test_labeled_task{2,3}.csv``) and ``development`` (aliases ``val``,
``validate``; ``development_labeled_task{2,3}.csv``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, read_csv
from benchmark.pathologies import canonical_name
from benchmark.progress import progress
from benchmark.sample import Sample

# AFLoc's class lists (classification/datasets.py CXR_LT_T2.categories, CXR_LT_T3.categories): the CSV columns.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "t2": ("Atelectasis", "Calcification of the Aorta", "Cardiomegaly", "Consolidation", "Edema", "Emphysema",
           "Enlarged Cardiomediastinum", "Fibrosis", "Fracture", "Hernia", "Infiltration", "Lung Lesion",
           "Lung Opacity", "Mass", "Normal", "Nodule", "Pleural Effusion", "Pleural Other", "Pleural Thickening",
           "Pneumomediastinum", "Pneumonia", "Pneumoperitoneum", "Pneumothorax", "Subcutaneous Emphysema",
           "Support Devices", "Tortuous Aorta"),
    "t3": ("Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis"),
}
LABEL_SET_ALIASES = {"t2": "t2", "task2": "t2", "2": "t2", "t3": "t3", "task3": "t3", "3": "t3"}
SPLIT_FILES = {"test": "test_labeled_task{n}.csv", "development": "development_labeled_task{n}.csv"}
SPLIT_ALIASES = {"val": "development", "validate": "development", "valid": "development", "dev": "development"}
RELEASE_DIR = "cxr-lt-2024"
PATH_COLUMNS = ("fpath", "path")
METADATA_COLUMNS = {"dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath",
                    "path", "split", "Unnamed: 0"}
_SUBJECT = re.compile(r"(?:^|/)p(\d{8})(?:/|$)")


def class_canonical(column: str, source: Any) -> str:
    """Canonical name of a CXR-LT class column (``Normal`` -> ``No Finding``); a column the shared
    table does not know is an error naming the file."""
    return canonical_name(column, source=source)


class CXRLT(Loader):
    """CXR-LT 2024 tasks 2 and 3: multi-label classification of MIMIC-CXR-JPG images."""

    card = load_card("cxr_lt")
    OPTIONS = {"label_set": "t2", "image_root": None}

    @property
    def label_set(self) -> str:
        key = str(self.opt("label_set")).strip().lower()
        if key not in LABEL_SET_ALIASES:
            raise DataError(None, f"cxr_lt option label_set={self.opt('label_set')!r}: expected t2 (AFLoc's "
                                  "CXR-LT-T2, 26 classes) or t3 (CXR-LT-T3, 5 classes)")
        return LABEL_SET_ALIASES[key]

    @property
    def split_name(self) -> str:
        return SPLIT_ALIASES.get(self.split, self.split)

    def csv_name(self) -> str:
        if self.split_name not in SPLIT_FILES:
            raise DataError(self.root, f"cxr_lt splits are test and development (aliases val, validate), "
                                       f"not {self.split!r}")
        return SPLIT_FILES[self.split_name].format(n=self.label_set[1])

    def image_root(self) -> Path:
        opt = self.opt("image_root")
        return Path(opt).expanduser() if opt else self.root

    def required_files(self) -> list[str]:
        name = self.csv_name()
        rel = name if (self.root / name).is_file() else f"{RELEASE_DIR}/{name}"
        return [rel] + (["files"] if not self.opt("image_root") else [])

    def load_samples(self) -> list[Sample]:
        classes = LABEL_SETS[self.label_set]
        name = self.csv_name()
        csv_path = self.root / name if (self.root / name).is_file() else self.require(f"{RELEASE_DIR}/{name}",
                                                                                       "CXR-LT label file")
        rows, self.ignored_columns = read_label_table(csv_path, classes)
        self.stats.update(split_rows=len(rows), split_images=len({r["path"] for r in rows}),
                          split_positive_labels=sum(len(r["positives"]) for r in rows))
        canonical = {c: class_canonical(c, csv_path) for c in classes}
        prompts = {c: {"simple": self.prompts.render("simple", category=c, canonical=canonical[c])} for c in classes}
        image_root = self.image_root()
        out: list[Sample] = []
        for r in progress(rows, f"cxr_lt/{self.label_set}/{self.split}: reading image headers"):
            path = image_root / r["path"]
            ok, size = self.usable_image(path)
            if not ok:
                continue
            image_id = r["dicom_id"] or Path(r["path"]).stem
            meta: dict[str, Any] = {"csv_row": r["row"], "study_id": r["study_id"], "label_set": self.label_set,
                                    "positives": [canonical[c] for c in classes if c in r["positives"]]}
            for c in classes:
                out.append(Sample(
                    sample_id=f"cxr_lt/{image_id}/{canonical[c]}", image_path=str(path), split=self.split,
                    category=canonical[c], prompts=prompts[c], label=int(c in r["positives"]),
                    patient_id=r["subject_id"], image_id=image_id, view=r["view"], image_size=size, meta=meta))
        return out

    def extra_checks(self) -> list[tuple[str, str]]:
        cols = getattr(self, "ignored_columns", [])
        if not cols:
            return []
        return [("warning", f"{len(cols)} column(s) of {self.csv_name()} are neither metadata nor classes of label "
                            f"set {self.label_set} and were not read: " + ", ".join(cols[:20]))]


def read_label_table(path: Path, classes: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CXR-LT label CSV (``{path, dicom_id, subject_id, study_id, view, positives, row}``) and the
    columns that are neither metadata nor classes of the label set (not read).

    The path column and every class column are required; each label must be 0 or 1 (a ``DataError``
    names the row and column otherwise)."""
    import pandas as pd

    df = read_csv(path, dtype=str, keep_default_na=False)
    path_col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    missing = ([] if path_col else ["fpath"]) + [c for c in classes if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected fpath (or path) and the {len(classes)} class "
                              f"columns {list(classes)}; found {list(df.columns)}")
    labels = df[list(classes)].apply(pd.to_numeric, errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.to_numpy().any():
        i, j = next(zip(*bad.to_numpy().nonzero()))
        raise DataError(path, f"row {int(i) + 2}: {classes[j]} must be 0 or 1, got {df[classes[j]].iloc[int(i)]!r}")
    values = labels.to_numpy(dtype=int)
    out: list[dict[str, Any]] = []
    ignored = [c for c in df.columns if c not in METADATA_COLUMNS and c not in classes]
    cols = {c: (df[c].tolist() if c in df.columns else [""] * len(df))
            for c in ("dicom_id", "subject_id", "study_id", "ViewPosition")}
    for i, rel in enumerate(df[path_col].tolist()):
        rel = rel.strip().replace("\\", "/")
        if not rel:
            raise DataError(path, f"row {i + 2}: empty {path_col}")
        subject = cols["subject_id"][i].strip()
        if not subject:
            m = _SUBJECT.search(rel)
            subject = m.group(1) if m else ""
        out.append({"path": rel, "dicom_id": cols["dicom_id"][i].strip(), "subject_id": subject or None,
                    "study_id": cols["study_id"][i].strip() or None,
                    "view": cols["ViewPosition"][i].strip().upper() or None, "row": i + 2,
                    "positives": frozenset(c for c, v in zip(classes, values[i]) if v == 1)})
    return out, ignored
