"""SICAPv2 (prostate histopathology, Gleason patterns): patches, masks and partition spreadsheets.

``partition/Test/Test.xlsx`` (columns ``image_name, NC, G3, G4, G5, G4C``) lists the test patches;
the class is the argmax over ``[NC, G3, G4, G5]`` (AFLoc's rule; ties and all-zero rows resolve to
the first, as ``numpy.argmax`` does). Images are ``images/<image_name>`` and masks
``masks/<image_name>`` at the native 512×512 (AFLoc reads its own 224 resize of the images; the
harness reads the originals and lets geometry resize). Each patch gives one sample per class (label 1
for its class, 0 for the other three), so single-label softmax classification sees every class
scored per patch; only the true class's sample carries the mask, and only when the mask is
non-empty, so grounding sees AFLoc's set (one query per patch, its class's prompt).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, mask_nonzero_count, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

CLASSES = ("NC", "G3", "G4", "G5")
PARTITIONS = {"test": "partition/Test/Test.xlsx", "train": "partition/Test/Train.xlsx"}
PARTITIONS.update({f"val{k}_{part.lower()}": f"partition/Validation/Val{k}/{part}.xlsx"
                   for k in range(1, 5) for part in ("Train", "Test")})


class SICAPv2(Loader):
    """SICAPv2: prostate biopsy patches with Gleason-pattern labels and masks."""

    card = load_card("sicapv2")

    def required_files(self) -> list[str]:
        return ["images", "masks", PARTITIONS.get(self.split, PARTITIONS["test"])]

    def load_samples(self) -> list[Sample]:
        if self.split not in PARTITIONS:
            raise DataError(self.root, f"sicapv2 splits are {sorted(PARTITIONS)}, not {self.split!r}")
        xlsx = self.require(PARTITIONS[self.split], "partition spreadsheet")
        rows = read_partition(xlsx)
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            listed = set(split_list.ids)
            rows = [r for r in rows if Path(r["image_name"]).stem in listed]
        img_dir, mask_dir = self.require("images", "image folder"), self.require("masks", "mask folder")
        class_prompts = {c: self.prompts.render("simple", category=c) for c in CLASSES}
        categories = {c: self.canonical(c, xlsx) for c in CLASSES}
        self.stats.update(split_rows=len(rows), split_images=len(rows))
        for c in CLASSES:
            self.stats[f"split_{c}"] = sum(1 for r in rows if r["class"] == c)
        out: list[Sample] = []
        for r in progress(rows, f"sicapv2/{self.split}: reading masks"):
            name = r["image_name"]
            img, mask = img_dir / name, mask_dir / name
            ok, size = self.usable_image(img)  # a missing image is a counted skip, never a kept sample
            if not ok:
                continue
            try:
                mask_size, n_on = mask_nonzero_count(mask)
            except DataError as exc:
                self.skip(mask, exc.expected)
                continue
            if size is not None and tuple(mask_size) != tuple(size):
                self.skip(mask, f"mask size {mask_size[0]}x{mask_size[1]} differs from the image's {size[0]}x{size[1]}")
                continue
            meta = {"class": r["class"], "grades": r["grades"], "mask_pixels": n_on, "xlsx_row": r["row"],
                    "class_prompts": class_prompts}
            stem = Path(name).stem
            for c in CLASSES:  # one sample per (patch, class): softmax classification sees every class
                true = c == r["class"]
                out.append(Sample(
                    sample_id=f"sicapv2/{stem}/{c}", image_path=str(img), split=self.split,
                    category=categories[c], prompts={"simple": class_prompts[c]}, label=int(true),
                    patient_id=r["patient"], image_id=stem, view=None, image_size=size or tuple(mask_size),
                    mask_paths=[str(mask)] if true and n_on else [], meta=meta))
        self.stats["empty_masks"] = sum(1 for s in out if s.label and not s.mask_paths)
        return out


def read_partition(path: Path) -> list[dict]:
    """Rows of a partition spreadsheet with the AFLoc class (argmax of NC, G3, G4, G5)."""
    import numpy as np
    import pandas as pd

    try:
        df = pd.read_excel(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read spreadsheet ({type(exc).__name__}: {exc})") from exc
    need = ["image_name", *CLASSES]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(df.columns)}")
    out = []
    for i, rec in enumerate(df.to_dict("records"), start=2):
        try:
            grades = {c: int(rec[c]) for c in (*CLASSES, "G4C") if c in rec and rec[c] == rec[c]}
            vec = [grades[c] for c in CLASSES]
        except (KeyError, ValueError, TypeError):
            raise DataError(path, f"row {i}: NC, G3, G4, G5 must be integers") from None
        name = str(rec["image_name"]).strip()
        if not name:
            raise DataError(path, f"row {i}: empty image_name")
        out.append({"image_name": name, "class": CLASSES[int(np.argmax(vec))], "grades": grades, "row": i,
                    "patient": name.split("_", 1)[0]})
    return out
