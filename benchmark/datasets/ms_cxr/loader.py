"""MS-CXR (PhysioNet): phrase-grounding boxes on MIMIC-CXR-JPG images.

Reads ``MS_CXR_Local_Alignment_v{1.0.0,1.1.0}.json`` (COCO, what AFLoc reads) or, when no JSON
is there, the ``.csv`` of the same release. Boxes are merged the AFLoc way: all boxes of one
image whose lowercased phrase is the same form one sample (``merge="phrase"``); the ``simple``
prompt is ``Findings suggesting {category}.`` and the ``precise`` prompt is the lowercased phrase.
``merge="category"`` reproduces AFLoc's ``MS_CXR_CLS`` set instead (one sample per image and
category, simple prompt only).

Splits: ``all`` (every annotation, as AFLoc evaluates) and ``train``/``val``/``test`` from the
v1.1.0 ``split`` column (informational; other projects split differently).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, read_csv, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

VERSIONS = ("1.1.0", "1.0.0")
STEM = "MS_CXR_Local_Alignment_v{version}"
CSV_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


class MSCXR(Loader):
    """MS-CXR: radiologist phrase-box pairs for 8 findings on MIMIC-CXR images."""

    card = load_card("ms_cxr")
    OPTIONS = {"version": None, "source": None, "merge": "phrase", "image_root": None}

    def _version(self) -> str:
        v = self.opt("version")
        if v is not None:
            v = str(v).lstrip("v")
            if v not in VERSIONS:
                raise ValueError(f"ms_cxr: version must be one of {VERSIONS}, got {v!r}")
            return v
        for v in VERSIONS:
            if any((self.root / (STEM.format(version=v) + ext)).is_file() for ext in (".json", ".csv")):
                return v
        raise DataError(self.root / (STEM.format(version=VERSIONS[0]) + ".json"),
                        "no MS-CXR annotation file (MS_CXR_Local_Alignment_v1.1.0 or v1.0.0, .json or .csv) "
                        "in the root")

    def _source(self, version: str) -> Path:
        src = self.opt("source")
        stem = STEM.format(version=version)  # no Path.with_suffix: "v1.1.0" ends in a dot-suffix itself
        if src is None:
            src = "json" if (self.root / f"{stem}.json").is_file() else "csv"
        if src not in ("json", "csv"):
            raise ValueError(f"ms_cxr: source must be 'json' or 'csv', got {src!r}")
        return self.require(f"{stem}.{src}", "MS-CXR annotation file")

    def required_files(self) -> list[str]:
        try:
            version = self._version()
        except DataError:
            return [STEM.format(version=VERSIONS[0]) + ".json"]
        return [self._source(version).name]

    def load_samples(self) -> list[Sample]:
        if self.opt("merge") not in ("phrase", "category"):
            raise ValueError(f"ms_cxr: merge must be 'phrase' or 'category', got {self.opt('merge')!r}")
        version = self._version()
        path = self._source(version)
        anns = read_json_annotations(path) if path.suffix == ".json" else read_csv_annotations(path)
        self.stats.update(table_rows=len(anns), table_images=len({a["dicom_id"] for a in anns}))
        wanted = self._split_filter(version, anns)
        if wanted is not None:
            anns = [a for a in anns if a["dicom_id"] in wanted]
        self.stats.update(split_rows=len(anns), split_images=len({a["dicom_id"] for a in anns}),
                          split_boxes=len(anns), version=version, source=path.name)
        return self._merge(anns, path)

    def _split_filter(self, version: str, anns: list[dict[str, Any]]) -> set[str] | None:
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            return set(split_list.ids)
        if self.split == "all":
            return None
        csv = self.root / (STEM.format(version="1.1.0") + ".csv")
        if not csv.is_file():
            raise DataError(csv, f"split {self.split!r} needs the v1.1.0 CSV (its 'split' column); "
                                 "use split 'all' with v1.0.0")
        df = read_csv(csv, ["dicom_id", "split"], dtype=str)
        by_image: dict[str, str] = {}
        for i, (d, s) in enumerate(zip(df["dicom_id"], df["split"]), start=2):
            if by_image.setdefault(d, s) != s:
                raise DataError(csv, f"row {i}: dicom_id {d} is in splits {by_image[d]!r} and {s!r}")
        if self.split not in set(by_image.values()):
            raise DataError(csv, f"no row has split {self.split!r} (found {sorted(set(by_image.values()))})")
        return {d for d, s in by_image.items() if s == self.split}

    def _merge(self, anns: list[dict[str, Any]], source: Path) -> list[Sample]:
        by_cat = self.opt("merge") == "category"
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for a in anns:  # insertion order = AFLoc's (image order of first annotation, then phrase)
            key = (a["dicom_id"], a["category"] if by_cat else a["label_text"].lower())
            g = groups.get(key)
            if g is None:
                g = groups[key] = {**a, "boxes": [], "phrases": [], "rows": []}
            g["boxes"].append(a["bbox"])
            g["rows"].append(a["row"])
            if a["label_text"] not in g["phrases"]:
                g["phrases"].append(a["label_text"])
            g["category"] = a["category"]  # AFLoc keeps the category of the last box of a phrase
            if (a["width"], a["height"]) != (g["width"], g["height"]):
                raise DataError(source, f"{a['row']}: image {a['dicom_id']} has two sizes "
                                        f"({g['width']}x{g['height']} and {a['width']}x{a['height']})")
        image_root = Path(self.opt("image_root")).expanduser() if self.opt("image_root") else self.root
        out: list[Sample] = []
        checked: dict[str, bool] = {}
        for (dicom_id, key), g in progress(groups.items(), "ms_cxr: checking images", total=len(groups)):
            path = resolve_image(image_root, g["path"])
            if dicom_id not in checked:
                checked[dicom_id] = self._image_usable(path, (g["height"], g["width"]))
            if not checked[dicom_id]:
                continue
            category = self.canonical(g["category"], source, g["rows"][0])
            values = {"category": g["category"], "canonical": category}
            if by_cat:
                prompts = {"simple": self.prompts.render("simple", **values)}
                sid = f"ms_cxr/{dicom_id}/{category}"
            else:
                prompts = self.prompts.render_all(phrase=key, **values)
                sid = f"ms_cxr/{dicom_id}/{hashlib.sha1(key.encode()).hexdigest()[:10]}"
            out.append(Sample(
                sample_id=sid, image_path=str(path), split=self.split, category=category, prompts=prompts,
                label=1, patient_id=patient_from_path(g["path"]), image_id=dicom_id, view=None,
                image_size=(g["height"], g["width"]), boxes=[list(b) for b in g["boxes"]],
                meta={"phrases": g["phrases"], "source_rows": g["rows"], "source_category": g["category"]}))
        return out

    def _image_usable(self, path: Path, size: tuple[int, int]) -> bool:
        if not self.image_ok(path):
            return False
        if not self.opt("check_images"):
            return True
        got = self.raster_size_or_skip(path)
        if got is None:
            return False
        if tuple(got) != tuple(size):
            self.skip(path, f"image size {got[0]}x{got[1]} differs from the annotation's {size[0]}x{size[1]}")
            return False
        return True


def resolve_image(image_root: Path, rel: str) -> Path:
    """``files/p1X/...`` under ``image_root``; AFLoc strips ``files/``, so accept either layout."""
    rel = rel.lstrip("/")
    p = image_root / rel
    if not p.exists() and rel.startswith("files/"):
        alt = image_root / rel[len("files/"):]
        if alt.exists():
            return alt
    return p


def patient_from_path(rel: str) -> str | None:
    for part in Path(rel).parts:
        if len(part) > 2 and part[0] == "p" and part[1:].isdigit() and len(part) > 3:
            return part[1:]
    return None


def read_json_annotations(path: Path) -> list[dict[str, Any]]:
    """COCO json → one dict per box (dicom_id, path, bbox [x,y,w,h], width, height, label_text, category)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read COCO JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(path, f"COCO JSON without {key!r}")
    cats = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    out = []
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation {i} (id {ann.get('id')})"
        missing = [k for k in ("image_id", "bbox", "width", "height", "label_text", "category_id") if k not in ann]
        if missing:
            raise DataError(path, f"{where}: missing {missing}")
        img = images.get(ann["image_id"])
        if img is None or "path" not in img:
            raise DataError(path, f"{where}: image {ann['image_id']} not in 'images' or without 'path'")
        if ann["category_id"] not in cats:
            raise DataError(path, f"{where}: category_id {ann['category_id']} not in 'categories'")
        bbox = [float(v) for v in ann["bbox"]]
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            raise DataError(path, f"{where}: bbox must be [x, y, w, h] with positive w, h; got {ann['bbox']}")
        out.append({"dicom_id": Path(img["path"]).stem, "path": img["path"], "bbox": bbox,
                    "width": int(ann["width"]), "height": int(ann["height"]), "label_text": str(ann["label_text"]),
                    "category": cats[ann["category_id"]], "row": where})
    return out


def read_csv_annotations(path: Path) -> list[dict[str, Any]]:
    df = read_csv(path, CSV_COLUMNS, dtype={"dicom_id": str, "path": str, "label_text": str})
    out = []
    for i, r in enumerate(df.itertuples(index=False), start=2):
        r = r._asdict()
        try:
            bbox = [float(r[k]) for k in ("x", "y", "w", "h")]
            width, height = int(r["image_width"]), int(r["image_height"])
        except (TypeError, ValueError):
            raise DataError(path, f"row {i}: x, y, w, h, image_width, image_height must be numbers") from None
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise DataError(path, f"row {i}: box width/height must be positive, got {bbox}")
        out.append({"dicom_id": str(r["dicom_id"]), "path": str(r["path"]), "bbox": bbox, "width": width,
                    "height": height, "label_text": str(r["label_text"]), "category": str(r["category_name"]),
                    "row": f"row {i}"})
    return out


