"""Quilt-1M (histopathology image-text pairs, Ikezogwo et al., NeurIPS 2023): AFLoc's pathology training data.

Reads ``quilt_1M_lookup.csv`` as the Zenodo release ships it (columns ``caption``, ``image_path``,
``subset``, ``split``, ``pathology``, ``roi_text``, ``noisy_text``, ``corrected_text``,
``med_umls_ids``, ``magnification``, ``height``, ``width`` and an unnamed index column) and the
images under ``quilt_1m/`` (the folder the ``images_part_*.zip`` archives unpack into; option
``image_dir``). ``split`` is ``train`` or ``val``; ``subset`` is one of ``openpath``, ``pubmed``,
``quilt``, ``laion`` (option ``subsets``, all four by default).

A sample is one CSV row (an image may have several captions, each its own row): ``prompts["report"]``
holds the caption (option ``text_column``, default ``caption``), no category and no label, the
training contract ``mimic_cxr`` follows. Rows of other subsets are excluded and counted; rows with
an empty text are excluded and counted; a missing image is a skip naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, read_csv
from benchmark.progress import progress
from benchmark.sample import Sample

LOOKUP_CSV = "quilt_1M_lookup.csv"
IMAGE_DIRS = ("quilt_1m", "images")
SUBSETS = ("openpath", "pubmed", "quilt", "laion")
SPLITS = ("train", "val")
SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val"}
TEXT_COLUMNS = ("caption", "corrected_text", "noisy_text", "roi_text")
INDEX_COLUMN = "Unnamed: 0"


class Quilt1M(Loader):
    """Quilt-1M image-caption pairs (training set of AFLoc's histopathology model)."""

    card = load_card("quilt1m")
    OPTIONS = {"image_dir": None, "subsets": SUBSETS, "text_column": "caption"}

    @property
    def split_name(self) -> str:
        return SPLIT_ALIASES.get(self.split, self.split)

    def image_dir(self) -> Path:
        opt = self.opt("image_dir")
        if opt:
            p = Path(opt).expanduser()
            return p if p.is_absolute() else self.root / p
        return next((self.root / d for d in IMAGE_DIRS if (self.root / d).is_dir()), self.root / IMAGE_DIRS[0])

    def required_files(self) -> list[str]:
        return [LOOKUP_CSV] + ([] if self.opt("image_dir") else [self.image_dir().name])

    def load_samples(self) -> list[Sample]:
        split = self.split_name
        if split not in SPLITS:
            raise DataError(self.root, f"quilt1m splits are train and val (alias validate), not {self.split!r}")
        text_col = str(self.opt("text_column"))
        if text_col not in TEXT_COLUMNS:
            raise DataError(None, f"quilt1m option text_column={text_col!r}: expected one of {', '.join(TEXT_COLUMNS)}")
        subsets = self.opt("subsets")
        subsets = {subsets} if isinstance(subsets, str) else set(subsets)
        unknown = sorted(subsets - set(SUBSETS))
        if unknown:
            raise DataError(None, f"quilt1m option subsets: unknown {unknown}; expected some of {', '.join(SUBSETS)}")
        csv_path = self.require(LOOKUP_CSV, "lookup table")
        rows = read_lookup(csv_path, text_col)
        folder = self.image_dir()
        in_split = [r for r in rows if r["split"] == split]
        self.stats.update(table_rows=len(rows), split_rows=len(in_split),
                          split_images=len({r["image_path"] for r in in_split}))
        out: list[Sample] = []
        seen_images: dict[str, bool] = {}
        for r in progress(in_split, f"quilt1m/{split}: checking images"):
            path = folder / r["image_path"]
            if r["subset"] not in subsets:
                self.exclude(path, f"subset {r['subset']} not in subsets option {sorted(subsets)}")
                continue
            if not r["text"]:
                self.exclude(path, f"empty {text_col} (CSV row {r['row']})")
                continue
            ok = seen_images.get(r["image_path"])
            if ok is None:
                ok = seen_images[r["image_path"]] = self.image_ok(path)
            if not ok:
                continue
            out.append(Sample(
                sample_id=f"quilt1m/{r['id']}", image_path=str(path), split=self.split, category=None,
                prompts={"report": r["text"]}, label=None, patient_id=None, image_id=Path(r["image_path"]).stem,
                view=None, image_size=None,
                meta={"subset": r["subset"], "pathology": r["pathology"], "magnification": r["magnification"],
                      "csv_size": r["size"], "csv_row": r["row"]}))
        return out


def read_lookup(path: Path, text_col: str = "caption") -> list[dict[str, Any]]:
    """Rows of ``quilt_1M_lookup.csv``: ``{id, image_path, text, subset, split, pathology, magnification, size, row}``
    (``size``: ``(height, width)`` from the table's columns, or None).

    ``image_path``, ``split``, ``subset`` and the text column are required; ``split`` must be train or val
    and ``subset`` one of the four Quilt-1M sources (a ``DataError`` names the row otherwise). ``id`` is the
    unnamed index column when the file has one (stable across releases of the table), else the CSV line."""
    import pandas as pd

    head = read_csv(path, nrows=0)
    need = ["image_path", text_col, "split", "subset"]
    missing = [c for c in need if c not in head.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected image_path, caption, subset, split (the "
                              f"Quilt-1M lookup table); found {list(head.columns)}")
    wanted = list(dict.fromkeys([*need, *(c for c in (INDEX_COLUMN, "pathology", "magnification", "height", "width")
                                          if c in head.columns)]))
    df = read_csv(path, usecols=wanted, dtype=str, keep_default_na=False)
    ids = df[INDEX_COLUMN].tolist() if INDEX_COLUMN in df.columns else [str(i) for i in range(2, len(df) + 2)]
    col = {c: (df[c].tolist() if c in df.columns else [""] * len(df))
           for c in ("pathology", "magnification", "height", "width")}
    heights = pd.to_numeric(pd.Series(col["height"]), errors="coerce").tolist()
    widths = pd.to_numeric(pd.Series(col["width"]), errors="coerce").tolist()
    out = []
    for i, (img, text, split, subset) in enumerate(zip(df["image_path"], df[text_col], df["split"], df["subset"])):
        line = i + 2
        split, subset, img = split.strip(), subset.strip(), img.strip()
        if split not in SPLITS:
            raise DataError(path, f"row {line}: split {split!r}; expected train or val")
        if subset not in SUBSETS:
            raise DataError(path, f"row {line}: unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
        if not img:
            raise DataError(path, f"row {line}: empty image_path")
        h, w = heights[i], widths[i]
        size = (int(h), int(w)) if not (math.isnan(h) or math.isnan(w)) and h > 0 and w > 0 else None
        out.append({"id": str(ids[i]).strip() or str(line), "image_path": img, "text": " ".join(text.split()),
                    "subset": subset, "split": split, "pathology": col["pathology"][i] or None,
                    "magnification": col["magnification"][i] or None, "size": size, "row": line})
    return out
