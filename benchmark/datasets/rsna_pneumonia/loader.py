"""RSNA Pneumonia Detection Challenge (2018): boxes from ``stage_2_train_labels.csv`` + DICOM.

Splits:
- ``test`` (grounding and classification): the 5,337 patientIds of MedKLIP's published RSNA test
  file, the same format AFLoc's unpublished ``grounding_test.csv`` has; labels and boxes come from
  the official table (they agree with MedKLIP's copy on every row).
- ``cls_test`` (classification): MRM's published 3,000-image list from ``stage_2_test_images``
  (the format of AFLoc's RSNA classification list), labels from the list.
- ``all``: every patientId of ``stage_2_train_labels.csv``.

Views come from the DICOM header (``ViewPosition``); AP and PA are both kept unless the ``views``
option says otherwise (torchxrayvision's PA-only default drops 78 % of the positives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import (
    DicomHeaders,
    Loader,
    check_list_overlap,
    load_card,
    parse_views,
    read_csv,
    read_split,
)
from benchmark.progress import progress
from benchmark.sample import Sample

LABELS_CSV = "stage_2_train_labels.csv"
DETAIL_CSV = "stage_2_detailed_class_info.csv"
TRAIN_DIR = "stage_2_train_images"
TEST_DIR = "stage_2_test_images"


class RSNAPneumonia(Loader):
    """RSNA Pneumonia: pneumonia boxes on frontal chest radiographs (Kaggle, DICOM)."""

    card = load_card("rsna_pneumonia")
    OPTIONS = {"views": ("AP", "PA")}

    def required_files(self) -> list[str]:
        if self.split == "cls_test":
            return [TEST_DIR]
        return [LABELS_CSV, TRAIN_DIR]

    def load_samples(self) -> list[Sample]:
        table = read_table(self.require(LABELS_CSV, "box table"))
        split_list = read_split(self, self.split)
        self.use_split_list(split_list)
        if self.split == "cls_test":
            if split_list is None:
                raise DataError(self.root / "splits" / "cls_test.txt", "no classification list for split cls_test")
            return self._classification_samples(split_list)
        if split_list is not None:
            check_list_overlap(split_list, table, self.root / LABELS_CSV)
            ids = []
            for e in split_list.entries:
                if e.id not in table:
                    raise DataError(split_list.path, f"line {e.line}: patientId {e.id!r} is not in {LABELS_CSV}")
                if e.label is not None and split_list.spec.get("label_column") and e.label != table[e.id]["label"]:
                    raise DataError(split_list.path, f"line {e.line}: label {e.label} of {e.id} differs from "
                                                     f"Target {table[e.id]['label']} in {LABELS_CSV}")
                ids.append(e.id)
        elif self.split == "all":
            ids = list(table)
        else:
            raise DataError(self.root / "splits" / f"{self.split}.txt",
                            f"unknown split {self.split!r} (known: test, cls_test, all, or a root-local list)")
        self.stats.update(split_rows=sum(len(table[i]["rows"]) for i in ids), split_images=len(ids),
                          split_positive_images=sum(table[i]["label"] for i in ids),
                          split_boxes=sum(len(table[i]["boxes"]) for i in ids), table_rows=table_rows(table),
                          table_images=len(table))
        details = read_details(self.root / DETAIL_CSV)
        return self._make_samples(ids, table, details, self.root / TRAIN_DIR)

    def _make_samples(self, ids: list[str], table: dict[str, dict[str, Any]], details: dict[str, str],
                 folder: Path) -> list[Sample]:
        views = parse_views(self.opt("views"))
        headers = DicomHeaders(folder, enabled=self.opt("header_cache"))
        prompts = self.prompts.render_all(category="pneumonia", canonical="Pneumonia")
        out = []
        try:
            for pid in progress(ids, "rsna_pneumonia: reading DICOM headers"):
                rec = table[pid]
                path = folder / f"{pid}.dcm"
                head = self._usable_header(headers, path, views)
                if head is None:
                    continue
                out.append(self._sample(pid, path, head, prompts, rec["label"], rec["boxes"],
                                        {"csv_rows": rec["rows"], "detailed_class": details.get(pid)}))
        finally:
            headers.save()
        return out

    def _usable_header(self, headers: DicomHeaders, path: Path, views: Any) -> dict[str, Any] | None:
        """The DICOM header, or None when the image is unusable or its view is excluded (recorded)."""
        head = self._header(headers, path)
        if head is None:
            return None
        if views is not None and head and head.get("view") not in views:
            self.exclude(path, f"view {head.get('view')} not in views option {sorted(views)}")
            return None
        return head

    def _sample(self, pid: str, path: Path, head: dict[str, Any], prompts: dict[str, str], label: int,
                boxes: Any, meta: dict[str, Any]) -> Sample:
        return Sample(sample_id=f"rsna_pneumonia/{pid}", image_path=str(path), split=self.split,
                      category="Pneumonia", prompts=dict(prompts), label=label, patient_id=pid, image_id=pid,
                      view=head.get("view"), image_size=(head["rows"], head["cols"]) if head.get("rows") else None,
                      boxes=[list(b) for b in boxes], meta=meta)

    def _header(self, headers: DicomHeaders, path: Path) -> dict[str, Any] | None:
        if not self.image_ok(path):
            return None
        if not self.opt("check_images"):
            return {}
        try:
            return headers.get(path)
        except DataError as exc:
            self.skip(path, f"unreadable DICOM ({exc.expected})")
            return None

    def _classification_samples(self, split_list) -> list[Sample]:
        views = parse_views(self.opt("views"))
        headers = DicomHeaders(self.root / TEST_DIR, enabled=self.opt("header_cache"))
        prompts = self.prompts.render_all(category="pneumonia", canonical="Pneumonia")
        out = []
        seen: set[str] = set()
        try:
            for e in progress(split_list.entries, "rsna_pneumonia: reading DICOM headers"):
                if e.label is None:
                    raise DataError(split_list.path, f"line {e.line}: cls_test lines need a 0/1 label")
                if e.id in seen:
                    raise DataError(split_list.path, f"line {e.line}: {e.id} listed twice")
                seen.add(e.id)
                rel = e.token if "/" in e.token else f"{TEST_DIR}/{e.id}.dcm"
                path = self.root / rel
                head = self._usable_header(headers, path, views)
                if head is None:
                    continue
                out.append(self._sample(e.id, path, head, prompts, e.label, (), {"list_line": e.line}))
        finally:
            headers.save()
        self.stats.update(split_rows=len(split_list.entries), split_images=len(seen),
                          split_positive_images=sum(1 for e in split_list.entries if e.label == 1))
        return out


def read_table(path: Path) -> dict[str, dict[str, Any]]:
    """``stage_2_train_labels.csv`` → ``{patientId: {label, boxes [[x,y,w,h]...], rows [csv line]}}``."""
    import numpy as np
    import pandas as pd

    df = read_csv(path, ["patientId", "x", "y", "width", "height", "Target"], dtype={"patientId": str})
    out: dict[str, dict[str, Any]] = {}
    boxes = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    targets = pd.to_numeric(df["Target"], errors="coerce").to_numpy(dtype=float)
    has_box = ~np.isnan(boxes).any(axis=1)
    any_box = ~np.isnan(boxes).all(axis=1)
    for i, pid in enumerate(df["patientId"].tolist()):
        line = i + 2
        target = targets[i]
        if target not in (0.0, 1.0):
            raise DataError(path, f"row {line}: Target must be 0 or 1, got {df['Target'].iloc[i]!r}")
        target = int(target)
        if target == 1 and not has_box[i]:
            raise DataError(path, f"row {line}: Target 1 needs x, y, width, height numbers ({pid})")
        if target == 0 and any_box[i]:
            raise DataError(path, f"row {line}: Target 0 must have empty box fields ({pid})")
        if has_box[i] and (boxes[i, 2] <= 0 or boxes[i, 3] <= 0):
            raise DataError(path, f"row {line}: box width/height must be positive, got {boxes[i].tolist()}")
        rec = out.get(pid)
        if rec is None:
            rec = out[pid] = {"label": target, "boxes": [], "rows": []}
        elif rec["label"] != target:
            raise DataError(path, f"row {line}: patientId {pid} has both Target 0 and 1 rows")
        rec["rows"].append(line)
        if has_box[i]:
            rec["boxes"].append([float(v) for v in boxes[i]])
    return out


def table_rows(table: dict[str, dict[str, Any]]) -> int:
    return sum(len(r["rows"]) for r in table.values())


def read_details(path: Path) -> dict[str, str]:
    """``stage_2_detailed_class_info.csv`` (optional) → ``{patientId: class}`` (first row wins)."""
    if not path.is_file():
        return {}
    df = read_csv(path, ["patientId", "class"], dtype=str)
    out: dict[str, str] = {}
    for pid, cls in zip(df["patientId"], df["class"]):
        out.setdefault(pid, cls)
    return out


