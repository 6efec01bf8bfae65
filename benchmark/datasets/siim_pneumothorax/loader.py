"""SIIM-ACR Pneumothorax Segmentation (Kaggle, stage 1): ``train-rle.csv`` + DICOM.

``train-rle.csv`` has the columns ``ImageId`` and `` EncodedPixels`` (leading space, as
distributed). The RLE is *relative* (gap from the end of the previous run, then length) over the
column-major pixel order; ``-1`` means no pneumothorax; an image with several pneumothorax parts
has one row per part. The loader unions the parts and stores one COCO RLE per image (COCO RLE is
column-major too, so the runs carry over unchanged).

Splits: ``test`` is the list AFLoc's zero-shot classification reads (2,353 lines, 2,135 images;
an image appears once per RLE row). ``dedupe=True`` (default) yields one sample per image;
``dedupe=False`` repeats a multi-part image once per line, exactly as AFLoc's reader does.
``all`` is every image of ``train-rle.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import (
    DicomHeaders,
    Loader,
    check_list_overlap,
    coco_rle,
    index_files,
    kaggle_rle_runs,
    load_card,
    parse_views,
    read_csv,
    read_split,
    runs_to_counts,
    runs_union,
)
from benchmark.progress import progress
from benchmark.sample import Sample

RLE_CSV = "train-rle.csv"
DICOM_DIR = "dicom-images-train"
RLE_COLUMN = " EncodedPixels"


class SIIMPneumothorax(Loader):
    """SIIM-ACR Pneumothorax: pneumothorax masks (RLE) on chest radiographs (Kaggle, DICOM)."""

    card = load_card("siim_pneumothorax")
    OPTIONS = {"dedupe": True, "views": None}

    def required_files(self) -> list[str]:
        return [RLE_CSV, DICOM_DIR]

    def load_samples(self) -> list[Sample]:
        csv_path = self.require(RLE_CSV, "RLE table")
        table = read_rle_table(csv_path)
        self.stats.update(table_rows=sum(len(r["rows"]) for r in table.values()), table_images=len(table),
                          table_positive_images=sum(1 for r in table.values() if r["label"]),
                          table_multi_part_images=sum(1 for r in table.values() if len(r["texts"]) > 1))
        split_list = read_split(self, self.split)
        self.use_split_list(split_list)
        if split_list is not None:
            check_list_overlap(split_list, table, csv_path)
            entries = []
            for e in split_list.entries:
                if e.id not in table:
                    raise DataError(split_list.path, f"line {e.line}: ImageId {e.id} is not in {RLE_CSV}")
                if e.label is not None and e.label != table[e.id]["label"]:
                    raise DataError(split_list.path, f"line {e.line}: label {e.label} of {e.id} disagrees with "
                                                     f"{RLE_CSV} (label {table[e.id]['label']})")
                entries.append((e.id, e.line))
        elif self.split == "all":
            entries = [(i, None) for i in table]
        else:
            raise DataError(self.root / "splits" / f"{self.split}.txt",
                            f"unknown split {self.split!r} (known: test, all, or a root-local list)")
        ids = list(dict.fromkeys(i for i, _ in entries))
        n_rows = len(entries) if split_list is not None else sum(len(table[i]["rows"]) for i in ids)
        self.stats.update(split_rows=n_rows, split_images=len(ids),
                          split_positive_images=sum(table[i]["label"] for i in ids),
                          split_multi_part_images=sum(1 for i in ids if len(table[i]["texts"]) > 1))
        return self._make_samples(entries, table, csv_path)

    def _make_samples(self, entries: list[tuple[str, int | None]], table: dict[str, dict[str, Any]],
                      csv_path: Path) -> list[Sample]:
        folder = self.require(DICOM_DIR, "DICOM folder")
        files = index_files(folder, (".dcm",))
        headers = DicomHeaders(folder, enabled=self.opt("header_cache"))
        views = parse_views(self.opt("views"))
        prompts = self.prompts.render_all(category="pneumothorax", canonical="Pneumothorax")
        built: dict[str, Sample | None] = {}
        repeats: dict[str, int] = {}
        out: list[Sample] = []
        try:
            for image_id, line in progress(entries, "siim_pneumothorax: reading DICOM headers"):
                if image_id not in built:
                    built[image_id] = self._sample(image_id, table[image_id], files, folder, headers, views,
                                                   prompts, csv_path)
                base = built[image_id]
                if base is None:
                    continue
                k = repeats.get(image_id, 0)
                repeats[image_id] = k + 1
                if k and self.opt("dedupe"):
                    continue
                if k == 0:
                    out.append(base)
                else:  # dedupe=False: AFLoc's repeated line, a distinct sample on the same image
                    out.append(Sample(**{**base.to_dict(), "sample_id": f"{base.sample_id}#{k}",
                                         "meta": {**base.meta, "repeat": k, "list_line": line}}))
        finally:
            headers.save()
        return out

    def _sample(self, image_id: str, rec: dict[str, Any], files: dict[str, Path], folder: Path,
                headers: DicomHeaders, views: set[str] | None, prompts: dict[str, str],
                csv_path: Path) -> Sample | None:
        path = files.get(image_id)
        if path is None:
            self.skip(folder / f"{image_id}.dcm", "image file not found (no <ImageId>.dcm under dicom-images-train)")
            return None
        head: dict[str, Any] = {}
        if self.opt("check_images"):
            try:
                head = headers.get(path)
            except DataError as exc:
                self.skip(path, f"unreadable DICOM ({exc.expected})")
                return None
        if views is not None and head and head.get("view") not in views:
            self.exclude(path, f"view {head.get('view')} not in views option {sorted(views)}")
            return None
        h, w = (head["rows"], head["cols"]) if head else (1024, 1024)
        run_lists = [kaggle_rle_runs(t, h * w, source=csv_path, row=r) for t, r in zip(rec["texts"], rec["rows"])]
        rles = []
        if rec["label"]:
            rles = [coco_rle(runs_to_counts(runs_union(run_lists), h * w), h, w)]
        return Sample(
            sample_id=f"siim_pneumothorax/{image_id}", image_path=str(path), split=self.split,
            category="Pneumothorax", prompts=dict(prompts), label=rec["label"], patient_id=None, image_id=image_id,
            view=head.get("view"), image_size=(h, w) if head else None, rles=rles,
            meta={"n_parts": len(rec["texts"]) if rec["label"] else 0, "csv_rows": rec["rows"]})


def read_rle_table(path: Path) -> dict[str, dict[str, Any]]:
    """``train-rle.csv`` → ``{ImageId: {label, texts [RLE per part], rows [csv line]}}`` in file order."""
    df = read_csv(path, dtype=str, keep_default_na=False)
    column = RLE_COLUMN if RLE_COLUMN in df.columns else ("EncodedPixels" if "EncodedPixels" in df.columns else None)
    if "ImageId" not in df.columns or column is None:
        raise DataError(path, "expected columns 'ImageId' and ' EncodedPixels' (leading space); "
                              f"found {list(df.columns)}")
    out: dict[str, dict[str, Any]] = {}
    for i, (image_id, text) in enumerate(zip(df["ImageId"].tolist(), df[column].tolist()), start=2):
        image_id = image_id.strip()
        text = str(text).strip()
        if not image_id:
            raise DataError(path, f"row {i}: empty ImageId")
        if not text:
            raise DataError(path, f"row {i}: empty EncodedPixels (expected '-1' or an RLE)")
        positive = text != "-1"
        rec = out.setdefault(image_id, {"label": int(positive), "texts": [], "rows": []})
        if rec["label"] != int(positive):
            raise DataError(path, f"row {i}: ImageId {image_id} has both '-1' and RLE rows")
        rec["rows"].append(i)
        if positive:
            rec["texts"].append(text)
    return out


