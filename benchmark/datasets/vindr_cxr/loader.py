"""VinDr-CXR: radiologist boxes of local findings on 18,000 chest radiographs (DICOM).

Two distributions are read as they come:
- PhysioNet 1.0.0: ``annotations/annotations_{train,test}.csv`` (``image_id, rad_id, x_min, y_min,
  x_max, y_max, class_name``) and ``{train,test}/<image_id>.dicom``. The test labels are the
  consensus of 5 radiologists; each training image was read by 3.
- Kaggle VinBigData: ``train.csv`` (``image_id, class_name, class_id, rad_id, x_min, ...``) and
  ``train/<image_id>.dicom``; this is the table torchxrayvision ships. It has no test labels.

One sample per (image, finding) with every reader's box of that finding (``meta['rad_ids']`` says
whose). ``No finding`` rows carry no box; images without a box are counted and, with
``negatives=True``, yield label-0 samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import DicomHeaders, Loader, load_card, read_csv, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

NO_FINDING = "no finding"
BOX_COLUMNS = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]  # plus rad_id where present


class VinDrCXR(Loader):
    """VinDr-CXR: multi-reader boxes of 14-22 local findings (PhysioNet or Kaggle VinBigData release)."""

    card = load_card("vindr_cxr")
    OPTIONS = {"negatives": False}

    def _table(self) -> Path:
        physionet = self.root / "annotations" / f"annotations_{self.split}.csv"
        if physionet.is_file():
            return physionet
        kaggle = self.root / "train.csv"
        if self.split == "train" and kaggle.is_file():
            return kaggle
        if self.split == "test" and kaggle.is_file():
            raise DataError(physionet, "the Kaggle VinBigData release (train.csv) has no test annotations; use "
                                       "split 'train' or the PhysioNet release (annotations/annotations_test.csv)")
        return physionet

    def required_files(self) -> list[str]:
        return [str(self._table().relative_to(self.root)), self.split]

    def load_samples(self) -> list[Sample]:
        if self.split not in ("train", "test"):
            raise DataError(self.root, f"vindr_cxr has splits 'train' and 'test', not {self.split!r}")
        path = self._table()
        if not path.is_file():
            self.require(str(path.relative_to(self.root)), "box table")
        images, n_rows = read_box_table(path, self)
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            listed = set(split_list.ids)
            images = {k: v for k, v in images.items() if k in listed}
        self.stats.update(table_rows=n_rows, split_images=len(images),
                          split_boxes=sum(len(b) for im in images.values() for b in im.values()),
                          split_images_with_boxes=sum(1 for im in images.values() if im),
                          split_images_without_boxes=sum(1 for im in images.values() if not im),
                          split_positive_pairs=sum(len(im) for im in images.values()))
        folder = self.root / self.split
        headers = DicomHeaders(folder, enabled=self.opt("header_cache"))
        all_cats = sorted({c for im in images.values() for c in im})
        out: list[Sample] = []
        try:
            for image_id, by_cat in progress(images.items(), f"vindr_cxr/{self.split}: reading DICOM headers",
                                             total=len(images)):
                if not by_cat and not self.opt("negatives"):
                    continue
                dcm = folder / f"{image_id}.dicom"
                if not self.image_ok(dcm):
                    continue
                head: dict[str, Any] = {}
                if self.opt("check_images"):
                    try:
                        head = headers.get(dcm)
                    except DataError as exc:
                        self.skip(dcm, f"unreadable DICOM ({exc.expected})")
                        continue
                cats = list(by_cat) + ([c for c in all_cats if c not in by_cat] if self.opt("negatives") else [])
                for canon in cats:
                    boxes = by_cat.get(canon, [])
                    source = boxes[0]["source"] if boxes else canon
                    out.append(Sample(
                        sample_id=f"vindr_cxr/{image_id}/{canon}", image_path=str(dcm), split=self.split,
                        category=canon, prompts=self.prompts.render_all(category=source, canonical=canon),
                        label=int(bool(boxes)), patient_id=None, image_id=image_id, view=head.get("view"),
                        image_size=(head["rows"], head["cols"]) if head else None,
                        boxes=[b["box"] for b in boxes],
                        meta={"rad_ids": [b["rad_id"] for b in boxes], "source_category": source,
                              "csv_rows": [b["row"] for b in boxes]}))
        finally:
            headers.save()
        return out


def read_box_table(path: Path, loader: Loader) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], int]:
    """``{image_id: {canonical finding: [{box [x,y,w,h], rad_id, row, source}]}}`` (``{}`` = no box) \
and the row count."""
    import pandas as pd

    df = read_csv(path, BOX_COLUMNS, dtype=str, keep_default_na=False)
    rad_col = next((c for c in df.columns if c.lower() == "rad_id"), None)
    rads = df[rad_col].tolist() if rad_col else [None] * len(df)
    nums = df[["x_min", "y_min", "x_max", "y_max"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    images: dict[str, dict[str, list[dict[str, Any]]]] = {}
    canon_of: dict[str, str] = {}
    for i, (image_id, cls, rad) in enumerate(zip(df["image_id"].tolist(), df["class_name"].tolist(), rads)):
        row = i + 2
        entry = images.setdefault(image_id, {})
        x1, y1, x2, y2 = nums[i]
        if str(cls).strip().lower() == NO_FINDING:
            if x1 == x1:
                raise DataError(path, f"row {row}: 'No finding' with a box")
            continue
        if x1 != x1 or y1 != y1 or x2 != x2 or y2 != y2:
            raise DataError(path, f"row {row}: finding {cls!r} without a box (x_min, y_min, x_max, y_max)")
        if x2 <= x1 or y2 <= y1:
            raise DataError(path, f"row {row}: box has x_max <= x_min or y_max <= y_min")
        if cls not in canon_of:
            canon_of[cls] = loader.canonical(cls, path, row)
        entry.setdefault(canon_of[cls], []).append(
            {"box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "rad_id": rad, "row": row, "source": cls})
    return images, len(df)
