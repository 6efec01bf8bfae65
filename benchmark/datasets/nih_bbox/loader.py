"""NIH ChestX-ray14 bounding boxes (``BBox_List_2017.csv``): 984 boxes of 8 findings on 880 images.

``BBox_List_2017.csv`` is read as distributed: its header ``Image Index,Finding Label,Bbox [x,y,w,h]``
spreads the four box numbers over unnamed columns, so the columns are taken by position.
``Data_Entry_2017.csv`` (or the ``_v2020`` release) gives the patient, the view and the image-level
labels. Images are looked up in ``images/`` and in the ``images_0NN/images/`` folders of the
NIH download. One sample per (image, finding); every box row is kept (no PA-only or
one-image-per-patient default: torchxrayvision's defaults keep 125 of the 880 images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, first_existing, load_card, parse_views, read_csv, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

BBOX_CSV = "BBox_List_2017.csv"
ENTRY_CSVS = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")


class NIHBBox(Loader):
    """NIH ChestX-ray14 boxes: 984 radiologist boxes of 8 findings (BBox_List_2017)."""

    card = load_card("nih_bbox")
    OPTIONS = {"views": None}

    def required_files(self) -> list[str]:
        entry = next((e for e in ENTRY_CSVS if (self.root / e).is_file()), ENTRY_CSVS[0])
        return [BBOX_CSV, entry]

    def load_samples(self) -> list[Sample]:
        split_list = read_split(self, self.split)
        if split_list is None and self.split not in ("test", "all"):
            raise DataError(self.root, f"nih_bbox has one evaluation split, 'test' (all boxes), not {self.split!r}")
        bbox_path = self.require(BBOX_CSV, "box table")
        rows = read_bbox_table(bbox_path)
        for r in rows:
            r["category"] = self.canonical(r["label"], bbox_path, r["row"])
        entry_path = first_existing(self.root, ENTRY_CSVS, "Data_Entry_2017 table")
        entries = read_data_entry(entry_path, {r["image"] for r in rows})
        self.stats.update(table_rows=len(rows), table_images=len({r["image"] for r in rows}))
        if split_list is not None:
            self.use_split_list(split_list)
            listed = {e.token for e in split_list.entries} | {e.id for e in split_list.entries}
            rows = [r for r in rows if r["image"] in listed or Path(r["image"]).stem in listed]
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            g = groups.setdefault((r["image"], r["category"]), {"boxes": [], "rows": [], "label": r["label"]})
            g["boxes"].append(r["box"])
            g["rows"].append(r["row"])
        self.stats.update(split_rows=len(rows), split_images=len({r["image"] for r in rows}), split_boxes=len(rows),
                          split_pairs=len(groups))
        locate = ImageLocator(self.root)
        views = parse_views(self.opt("views"))
        sizes: dict[str, tuple[int, int] | None] = {}
        out: list[Sample] = []
        for (image, category), g in progress(groups.items(), "nih_bbox: reading image headers", total=len(groups)):
            info = entries.get(image)
            if info is None:
                raise DataError(bbox_path, f"row {g['rows'][0]}: {image} is not in {entry_path.name}")
            path = locate(image)
            if image not in sizes:
                sizes[image] = self.raster_size_or_skip(path)
            size = sizes[image]
            if size is None and self.opt("check_images"):
                continue
            if views is not None and info["view"] not in views:
                self.exclude(path, f"view {info['view']} not in views option {sorted(views)}")
                continue
            image_labels = [self.canonical(x, entry_path, info["row"]) for x in info["labels"]]
            out.append(Sample(
                sample_id=f"nih_bbox/{Path(image).stem}/{category}", image_path=str(path), split=self.split,
                category=category, prompts=self.prompts.render_all(category=g["label"], canonical=category), label=1,
                patient_id=info["patient"], image_id=Path(image).stem, view=info["view"],
                image_size=size, boxes=[list(b) for b in g["boxes"]],
                meta={"source_category": g["label"], "csv_rows": g["rows"], "image_labels": image_labels,
                      "scanner_size": info["size"],  # size before NIH's 1024x1024 PNG export (boxes are in PNG pixels)
                      "in_image_labels": category in image_labels}))
        return out


class ImageLocator:
    """``images/<name>`` or ``images_0NN/images/<name>`` (the NIH archives unpack into the latter)."""

    def __init__(self, root: Path):
        self.root = root
        self._index: dict[str, Path] | None = None

    def __call__(self, name: str) -> Path:
        direct = self.root / "images" / name
        if direct.is_file():
            return direct
        if self._index is None:
            self._index = {}
            for d in sorted(self.root.glob("images_*")):
                sub = d / "images" if (d / "images").is_dir() else d
                for p in sub.glob("*.png"):
                    self._index.setdefault(p.name, p)
        return self._index.get(name, direct)


def read_bbox_table(path: Path) -> list[dict[str, Any]]:
    """Rows of ``BBox_List_2017.csv`` as ``{image, label, box [x, y, w, h], row}``."""
    import pandas as pd

    df = read_csv(path, header=None, skiprows=1, dtype=str, keep_default_na=False)
    if df.shape[1] < 6:
        raise DataError(path, "expected 'Image Index, Finding Label' and 4 box numbers per row; "
                              f"found {df.shape[1]} columns")
    out = []
    nums = df.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    for i, (image, label) in enumerate(zip(df[0].tolist(), df[1].tolist())):
        row = i + 2
        box = nums[i].tolist()
        if any(v != v for v in box) or box[2] <= 0 or box[3] <= 0:
            raise DataError(path, f"row {row}: box must be 4 numbers x, y, w, h with w, h > 0; "
                                  f"got {df.iloc[i, 2:6].tolist()}")
        if not image.strip() or not label.strip():
            raise DataError(path, f"row {row}: empty Image Index or Finding Label")
        out.append({"image": image.strip(), "label": label.strip(), "box": box, "row": row})
    return out


def read_data_entry(path: Path, wanted: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """``Data_Entry_2017*.csv`` → ``{Image Index: {patient, view, labels, size (h, w), row}}`` (``wanted`` only)."""
    df = read_csv(path, ["Image Index", "Finding Labels", "Patient ID", "View Position"], dtype=str,
                  keep_default_na=False)
    df.index = range(2, len(df) + 2)  # csv line numbers
    if wanted is not None:
        df = df[df["Image Index"].isin(wanted)]
    wcol = next((c for c in df.columns if c.startswith("OriginalImage[Width")), None)
    hcol = next((c for c in df.columns if c.startswith("Height]")), None)
    out = {}
    widths = df[wcol].tolist() if wcol else [None] * len(df)
    heights = df[hcol].tolist() if hcol else [None] * len(df)
    for line, img, labels, pid, view, w, h in zip(df.index, df["Image Index"], df["Finding Labels"], df["Patient ID"],
                                                  df["View Position"], widths, heights):
        size = (int(float(h)), int(float(w))) if w and h else None
        labs = [x for x in labels.split("|") if x and x != "No Finding"]
        out[img] = {"patient": pid.strip(), "view": view.strip().upper() or None, "labels": labs,
                    "size": size, "row": int(line)}
    return out


