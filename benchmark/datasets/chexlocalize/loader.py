"""CheXlocalize (Stanford AIMI): radiologist segmentations of 10 findings on CheXpert val/test.

Ground truth: ``CheXlocalize/gt_segmentations_{val,test}.json`` (``{cxr_id: {task: COCO RLE}}``,
``size`` = [h, w]). A CXR is one image under ``CheXpert/{val,test}/patient*/study*/view*.jpg``; its
id is the last three path parts joined with ``_`` (minus ``.jpg``). Every CXR yields one sample
per task (10 per image): label 1 with the RLE when the mask is non-empty, label 0 otherwise;
images absent from the JSON are negatives for all 10 tasks (AFLoc's and CheXlocalize's rule).

The human-benchmark segmentations (``hb_segmentations_test.json``) are exposed through
``human_benchmark_masks`` for the pseudo-model that scores them like a model.

Order: images sorted by cxr_id, tasks in CheXlocalize's ``sorted(LOCALIZATION_TASKS)`` order
(AFLoc walks the folder with ``os.walk``, whose order depends on the filesystem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, check_coco_rle, load_card, read_csv, read_split
from benchmark.geometry.rasterize import decode_rle
from benchmark.pathologies import canonical_name
from benchmark.progress import progress
from benchmark.sample import Sample

LOCALIZATION_TASKS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
                      "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices")
TASKS = tuple(sorted(LOCALIZATION_TASKS))
CHEXPERT_COLUMN = {"Airspace Opacity": "Lung Opacity"}  # the CheXpert csv calls it Lung Opacity
SCOPE = "chexlocalize"


def cxr_id_of(path: str | os.PathLike) -> str:
    """``.../patient64541/study1/view1_frontal.jpg`` → ``patient64541_study1_view1_frontal``."""
    parts = Path(str(path).replace("\\", "/")).parts[-3:]
    return "_".join(parts).removesuffix(".jpg")


def _image_dir(root: Path, split: str) -> Path:
    names = [f"CheXpert/{split}"] + (["CheXpert/valid"] if split == "val" else [])
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root / names[0]


class CheXlocalize(Loader):
    """CheXlocalize: pixel-level segmentations of 10 CheXpert findings (val and test)."""

    card = load_card("chexlocalize")
    scope = SCOPE
    OPTIONS = {"views": None}

    def required_files(self) -> list[str]:
        return [f"CheXlocalize/gt_segmentations_{self.split}.json",
                os.path.relpath(_image_dir(self.root, self.split), self.root)]

    def load_samples(self) -> list[Sample]:
        if self.split not in ("val", "test"):
            raise DataError(self.root, f"chexlocalize has splits 'val' and 'test', not {self.split!r}")
        gt_path = self.require(f"CheXlocalize/gt_segmentations_{self.split}.json", "ground-truth segmentations")
        gt = read_segmentations(gt_path)
        img_dir = _image_dir(self.root, self.split)
        if not img_dir.is_dir():
            self.require(os.path.relpath(img_dir, self.root), "CheXpert image folder")
        images: dict[str, Path] = {}
        for dirpath, _dirs, files in os.walk(img_dir):
            for fn in files:
                if fn.endswith(".jpg"):
                    p = Path(dirpath) / fn
                    images[cxr_id_of(p)] = p
        labels = self._labels_csv(img_dir)
        for cid, _row in labels.items():
            if cid not in images:
                self.skip(img_dir / Path(*cid.split("_", 2)).with_suffix(".jpg"),
                          f"image listed in {self.split}_labels.csv not found")
        for cid in gt:
            if cid not in images and cid not in labels:
                self.skip(img_dir / (cid + ".jpg"), f"cxr_id {cid} of {gt_path.name} has no image")
        ids = sorted(images)
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            listed = set(split_list.ids)
            for cid in sorted(listed - set(images)):
                self.skip(img_dir / (cid + ".jpg"), "image listed in the split list not found")
            ids = [c for c in ids if c in listed]
        views = {v.upper() for v in self.opt("views")} if self.opt("views") else None
        self.stats.update(table_images=len(gt), split_images=len(ids),
                          split_positive_pairs=sum(1 for c in ids for t, e in gt.get(c, {}).items() if e["area"] > 0))
        missing_tasks = 0
        out: list[Sample] = []
        for cid in progress(ids, f"chexlocalize/{self.split}: reading image headers"):
            path = images[cid]
            size = self.raster_size_or_skip(path)
            if size is None and self.opt("check_images"):
                continue
            row = labels.get(cid, {})
            view = row.get("view") or ("LATERAL" if "lateral" in path.name.lower() else "FRONTAL")
            if views is not None and view.upper() not in views:
                self.exclude(path, f"view {view} not in views option {sorted(views)}")
                continue
            entry = gt.get(cid)
            if entry is not None and len(entry) < len(TASKS):
                missing_tasks += 1
            for task in TASKS:
                e = entry.get(task) if entry else None
                if e is not None and size is not None and tuple(e["rle"]["size"]) != tuple(size):
                    raise DataError(gt_path, f"{cid}/{task}: RLE size {e['rle']['size']} differs from the image "
                                             f"{path} ({size[0]}x{size[1]})")
                positive = e is not None and e["area"] > 0
                out.append(Sample(
                    sample_id=f"chexlocalize/{cid}/{task}", image_path=str(path), split=self.split, category=task,
                    prompts=self.prompts.render_all(category=task, canonical=task), label=int(positive),
                    patient_id=cid.split("_", 1)[0], image_id=cid, view=view, image_size=size,
                    rles=[e["rle"]] if positive else [],
                    meta={"cxr_id": cid, "in_gt_json": entry is not None,
                          "chexpert_label": row.get(CHEXPERT_COLUMN.get(task, task))}))
        self.stats["gt_entries_missing_tasks"] = missing_tasks
        return out

    def _labels_csv(self, img_dir: Path) -> dict[str, dict[str, Any]]:
        """``CheXpert/{split}_labels.csv`` (optional): view and CheXpert labels per cxr_id."""
        path = self.root / "CheXpert" / f"{self.split}_labels.csv"
        if not path.is_file():
            return {}
        df = read_csv(path, ["Path"], dtype=str, keep_default_na=False)
        out: dict[str, dict[str, Any]] = {}
        for rec in df.to_dict("records"):
            cid = cxr_id_of(rec["Path"])
            fl = str(rec.get("Frontal/Lateral", "")).strip().upper()
            appa = str(rec.get("AP/PA", "")).strip().upper()
            view = appa if fl == "FRONTAL" and appa else (fl or None)
            out[cid] = {**rec, "view": view}
        return out

    def extra_checks(self) -> list[tuple[str, str]]:
        n = self.stats.get("gt_entries_missing_tasks", 0)
        return [("warning", f"{n} cxr_id(s) in the ground-truth JSON list fewer than 10 tasks "
                            "(missing tasks are negatives)")] if n else []


def read_segmentations(path: Path, *, scope: str = SCOPE) -> dict[str, dict[str, dict[str, Any]]]:
    """``{cxr_id: {task: {...}}}`` → ``{cxr_id: {canonical task: {"rle", "area"}}}``, every RLE validated."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read segmentation JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(path, "expected {cxr_id: {task: {'size': [h, w], 'counts': ...}}}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cid, tasks in data.items():
        if not isinstance(tasks, dict):
            raise DataError(path, f"{cid}: expected a mapping task -> RLE")
        entry = {}
        for task, rle in tasks.items():
            name = canonical_name(task, scope=scope, source=path, row=f"cxr_id {cid}")
            if name not in LOCALIZATION_TASKS:
                raise DataError(path, f"cxr_id {cid}: {task!r} is not one of the 10 CheXlocalize tasks")
            h, w, area = check_coco_rle(rle, source=path, where=f"cxr_id {cid}, task {task}")
            counts = rle["counts"]
            entry[name] = {"rle": {"size": [h, w], "counts": counts}, "area": area}
        out[cid] = entry
    return out


def human_benchmark_masks(root: str | os.PathLike, split: str = "test") -> dict[tuple[str, str], dict[str, Any]]:
    """Human-benchmark segmentations as ``{(cxr_id, task): COCO RLE}`` (all entries, empty ones too).

    Reads ``<root>/CheXlocalize/hb_segmentations_{split}.json`` (only ``test`` is distributed).
    """
    path = Path(root).expanduser() / "CheXlocalize" / f"hb_segmentations_{split}.json"
    if not path.is_file():
        raise DataError(path, "human-benchmark segmentations not found (CheXlocalize ships hb_segmentations_test.json)")
    return {(cid, task): e["rle"] for cid, tasks in read_segmentations(path).items() for task, e in tasks.items()}


def human_benchmark_mask(root: str | os.PathLike, cxr_id: str, task: str, split: str = "test",
                         _cache: dict[Any, Any] = {}) -> np.ndarray:  # noqa: B006 - per-process memo
    """The decoded (h × w uint8) human-benchmark mask of one (cxr_id, task); zeros if absent."""
    key = (str(Path(root).expanduser().resolve()), split)
    if key not in _cache:
        _cache[key] = human_benchmark_masks(root, split)
    masks = _cache[key]
    task = canonical_name(task, scope=SCOPE)
    if (cxr_id, task) in masks:
        return decode_rle(masks[(cxr_id, task)])
    sizes = {tuple(r["size"]) for (c, _), r in masks.items() if c == cxr_id}
    if not sizes:
        raise KeyError(f"no human-benchmark entry for {cxr_id}")
    return np.zeros(next(iter(sizes)), dtype=np.uint8)


