"""ChestX-Det10 (Deepwise AI Lab): boxes of 10 findings on 3,543 NIH ChestX-ray14 images.

``train.json`` / ``test.json`` are lists of ``{"file_name", "syms": [...], "boxes": [[x1, y1, x2,
y2], ...]}`` (left, top, right, bottom); ``syms[i]`` names ``boxes[i]``. The official split is the
two files. One sample per (image, finding) with all of that finding's boxes, converted to
``[x, y, w, h]``. Images without any box carry no finding to localize; they are counted
(``stats['split_images_without_boxes']``) and, with ``negatives=True``, yield label-0 samples for
every finding (as do absent findings on annotated images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.cache import file_sha256
from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

CATEGORIES = ("Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema", "Fibrosis", "Fracture",
              "Mass", "Nodule", "Pneumothorax")


class ChestXDet10(Loader):
    """ChestX-Det10: radiologist boxes for 10 findings on NIH ChestX-ray14 images (official split)."""

    card = load_card("chestx_det10")
    OPTIONS = {"negatives": False}

    def required_files(self) -> list[str]:
        return [f"{self.split}.json", f"{self.split}_data"]

    def load_samples(self) -> list[Sample]:
        if self.split not in ("train", "test"):
            raise DataError(self.root, f"chestx_det10 has splits 'train' and 'test', not {self.split!r}")
        ann_path = self.require(f"{self.split}.json", "annotation file")
        img_dir = self.require(f"{self.split}_data", "image folder")
        records = read_annotations(ann_path)
        self.stats["annotation_sha256"] = file_sha256(ann_path)
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            listed = set(split_list.ids)
            records = [r for r in records if Path(r["file_name"]).stem in listed]
        self.stats.update(table_images=len(records), split_images=len(records),
                          split_boxes=sum(len(r["boxes"]) for r in records),
                          split_images_with_boxes=sum(1 for r in records if r["boxes"]),
                          split_images_without_boxes=sum(1 for r in records if not r["boxes"]))
        canon_of: dict[str, str] = {}
        for rec in records:  # every name is checked, whether or not its image is on disk
            for sym in rec["syms"]:
                if sym not in canon_of:
                    canon_of[sym] = self.canonical(sym, ann_path, f"entry {rec['index']} ({rec['file_name']})")
        pairs = {(r["file_name"], s) for r in records for s in r["syms"]}
        self.stats["split_positive_pairs"] = len(pairs)
        out: list[Sample] = []
        for rec in progress(records, f"chestx_det10/{self.split}: reading image headers"):
            path = img_dir / rec["file_name"]
            size = self.raster_size_or_skip(path)
            if size is None and self.opt("check_images"):
                continue
            stem = Path(rec["file_name"]).stem
            by_cat: dict[str, list[list[float]]] = {}
            for sym, box in zip(rec["syms"], rec["boxes"]):
                by_cat.setdefault(sym, []).append(box)
            cats = list(by_cat) + ([c for c in CATEGORIES if c not in by_cat] if self.opt("negatives") else [])
            for sym in cats:
                canon = canon_of.get(sym) or self.canonical(sym, ann_path, rec["file_name"])
                boxes = by_cat.get(sym, [])
                out.append(Sample(
                    sample_id=f"chestx_det10/{stem}/{canon}", image_path=str(path), split=self.split, category=canon,
                    prompts=self.prompts.render_all(category=sym, canonical=canon), label=int(bool(boxes)),
                    patient_id=None, image_id=stem, view=None, image_size=size,
                    boxes=[list(b) for b in boxes], meta={"source_category": sym, "index": rec["index"]}))
        return out

    def card_checks(self) -> list[tuple[str, str]]:
        want = ((getattr(self.card, "extra", None) or {}).get("annotation_sha256") or {}).get(self.split)
        got = self.stats.get("annotation_sha256")
        if want and got and got not in (want if isinstance(want, list) else [want]):
            return [("warning", f"{self.split}.json differs from the published file (sha256 {got[:12]}..., "
                                f"published {str(want)[:12]}...); counts are still checked")]
        return []


def read_annotations(path: Path) -> list[dict[str, Any]]:
    """The JSON list with boxes converted to ``[x, y, w, h]``; malformed entries name the file and entry."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DataError(path, "expected a JSON list of {file_name, syms, boxes}")
    out = []
    for i, rec in enumerate(data):
        where = f"entry {i}"
        if not isinstance(rec, dict) or not {"file_name", "syms", "boxes"} <= set(rec):
            raise DataError(path, f"{where}: expected keys file_name, syms, boxes")
        where = f"entry {i} ({rec['file_name']})"
        if len(rec["syms"]) != len(rec["boxes"]):
            raise DataError(path, f"{where}: {len(rec['syms'])} syms but {len(rec['boxes'])} boxes")
        boxes = []
        for b in rec["boxes"]:
            if len(b) != 4:
                raise DataError(path, f"{where}: box {b} is not [x1, y1, x2, y2]")
            x1, y1, x2, y2 = (float(v) for v in b)
            if x2 <= x1 or y2 <= y1:
                raise DataError(path, f"{where}: box {b} has x2 <= x1 or y2 <= y1")
            boxes.append([x1, y1, x2 - x1, y2 - y1])
        out.append({"file_name": str(rec["file_name"]), "syms": [str(s) for s in rec["syms"]], "boxes": boxes,
                    "index": i})
    return out


