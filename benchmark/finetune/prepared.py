"""Prepared fine-tuning data: every image of a dataset decoded, converted to grey and resized once
(with its mask), so that the many runs of a label-efficiency table (fractions × seeds × encoders)
read arrays instead of decoding thousands of DICOMs each.

``afloc-bench finetune prepare --dataset D --size S -o DIR`` writes ``images.npy`` and ``masks.npy``
(uint8 [N, S, S], the exact arrays ``data.load_arrays`` makes), ``ids.txt`` (one image id per row)
and ``prepared.json`` (dataset, card version, data root, size, counts and sha256 of every file);
``finetune seg|cls --prepared DIR`` reads its rows by image id (memory-mapped) and checks the
dataset and the size against the run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.cache import file_sha256
from benchmark.dataset import DataError
from benchmark.finetune.data import Item, load_arrays, load_items
from benchmark.finetune.fractions import ids_text
from benchmark.records import atomic_write_json, atomic_write_text, now_iso

FORMAT = "afloc-bench/finetune-prepared"
META = "prepared.json"
FILES = ("images.npy", "masks.npy", "ids.txt")


def prepare(dataset: str, data_root: str | None, out: str | os.PathLike, size: int) -> dict[str, Any]:
    """Decode and resize every image of ``dataset`` (split ``all``) into ``out``; returns the record."""
    from benchmark.dataset import build_dataset

    out = Path(out)
    if (out / META).exists():
        raise ValueError(f"{out}: holds prepared data ({META}); choose another -o")
    items = load_items(dataset, data_root, "all")
    ids = [it.image_id for it in items]
    from collections import Counter

    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataError(None, f"{dataset}: image id {dup[0]!r} names {ids.count(dup[0])} samples; prepared "
                              "fine-tuning data keeps one row per image")
    imgs, masks = load_arrays(items, size, f"prepare {dataset} at {size} px")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", imgs)
    np.save(out / "masks.npy", masks)
    atomic_write_text(out / "ids.txt", ids_text(ids))
    ds = build_dataset(dataset, data_root, split="all")
    record = {"format": FORMAT, "format_version": 1, "date": now_iso(), "dataset": dataset,
              "card_version": ds.card.version, "data_root": str(ds.root), "size": size, "images": len(ids),
              "positive_images": int(sum(it.positive for it in items)),
              "how": "canonical read, grey (cv2 RGB2GRAY), cv2.resize INTER_AREA to size x size; masks: the "
                     "samples' findings rasterised at the image size, resized INTER_AREA, >= 0.5",
              "files": {f: file_sha256(out / f) for f in FILES}}
    atomic_write_json(out / META, record)
    return record


class PreparedArrays:
    """Rows of a prepared folder by image id (``images``/``masks`` memory-mapped)."""

    def __init__(self, folder: str | os.PathLike, dataset: str, size: int, verify: bool = False):
        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise DataError(meta_path, "prepared fine-tuning data (written by afloc-bench finetune prepare)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise DataError(meta_path, f"format {FORMAT!r}, not {self.meta.get('format')!r}")
        if self.meta["dataset"] != dataset:
            raise ValueError(f"--prepared {self.folder} holds {self.meta['dataset']}, not {dataset}")
        if int(self.meta["size"]) != int(size):
            raise ValueError(f"--prepared {self.folder} is at {self.meta['size']} px; this config reads {size} px "
                             f"(prepare again with --size {size})")
        for f in FILES:
            if not (self.folder / f).is_file():
                raise DataError(self.folder / f, "a file of the prepared data (prepare again)")
            if verify and file_sha256(self.folder / f) != self.meta["files"][f]:
                raise DataError(self.folder / f, "does not match the sha256 in prepared.json (prepare again)")
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        self.rows = {i: n for n, i in enumerate((self.folder / "ids.txt").read_text().split())}
        if len(self.rows) != len(self.images) or self.images.shape != self.masks.shape:
            raise DataError(self.folder, f"{len(self.rows)} ids for {len(self.images)} images and "
                                         f"{len(self.masks)} masks (prepare again)")

    def record(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "files": self.meta["files"], "size": self.meta["size"]}

    def _rows(self, items: list[Item]) -> list[int]:
        missing = [it.image_id for it in items if it.image_id not in self.rows]
        if missing:
            raise DataError(self.folder, f"image {missing[0]!r} is not in the prepared data ({len(missing)} "
                                         "missing; prepare again from the same dataset)")
        return [self.rows[it.image_id] for it in items]

    def arrays(self, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(items)
        return np.ascontiguousarray(self.images[rows]), np.ascontiguousarray(self.masks[rows])

    def images_of(self, items: list[Item]) -> np.ndarray:
        return np.ascontiguousarray(self.images[self._rows(items)])
