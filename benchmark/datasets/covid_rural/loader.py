"""COVID Rural (TCIA COVID-19-AR, opacity annotations by Tang et al. 2020).

Layout (``covid_rural_annot/`` of ``haimingt/opacity_segmentation_covid_chest_X_ray``): images
``jpgs/<stem>.jpg``, masks ``pngs_masks/<stem>.png`` (non-zero = opacity) and LabelMe polygons
``jpgs/jsons/<stem>.json``. As AFLoc, an image is used when it has a mask and the mask is not
empty; both exclusions are counted and reported, never silent.

Stems are matched with ``str.removesuffix``. AFLoc's ``rstrip(".jpg")``/``rstrip(".png")`` strip
*characters* (quirk 13): ``afloc_rstrip_corruptions`` lists the stems it would corrupt.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, mask_nonzero_count, read_split
from benchmark.progress import progress
from benchmark.sample import Sample

LUNG_LABELS = {"right_lung", "left_lung", "lung", "right lung", "left lung"}


def afloc_rstrip_corruptions(jpg_names: list[str], png_names: list[str]) -> list[dict[str, str]]:
    """File names whose stem AFLoc's ``rstrip`` would change (so its image/mask matching breaks)."""
    out = []
    for names, suffix in ((jpg_names, ".jpg"), (png_names, ".png")):
        for n in names:
            if n.endswith(suffix):
                right, afloc = n.removesuffix(suffix), n.rstrip(suffix)
                if right != afloc:
                    out.append({"file": n, "stem": right, "afloc_stem": afloc})
    return out


class CovidRural(Loader):
    """COVID Rural: COVID-19 opacity masks and polygons on chest radiographs (rural Arkansas)."""

    card = load_card("covid_rural")
    OPTIONS = {"require_nonempty_mask": True}

    def required_files(self) -> list[str]:
        return ["jpgs", "pngs_masks"]

    def load_samples(self) -> list[Sample]:
        jpg_dir = self.require("jpgs", "image folder")
        mask_dir = self.require("pngs_masks", "mask folder")
        json_dir = jpg_dir / "jsons"
        jpgs = sorted(p.name for p in jpg_dir.iterdir() if p.is_file() and p.name.endswith(".jpg"))
        pngs = sorted(p.name for p in mask_dir.iterdir() if p.is_file() and p.name.endswith(".png"))
        self.stats["afloc_rstrip_corrupted"] = afloc_rstrip_corruptions(jpgs, pngs)
        stems = [n.removesuffix(".jpg") for n in jpgs]
        mask_stems = {n.removesuffix(".png") for n in pngs}
        for s in sorted(mask_stems - set(stems)):
            self.skip(jpg_dir / f"{s}.jpg", "image of a mask in pngs_masks not found")
        split_list = read_split(self, self.split)
        if split_list is not None:
            self.use_split_list(split_list)
            listed = set(split_list.ids)
            for s in sorted(listed - set(stems)):
                self.skip(jpg_dir / f"{s}.jpg", "image listed in the split list not found")
            stems = [s for s in stems if s in listed]
        elif self.split != "all":
            raise DataError(self.root / "splits" / f"{self.split}.txt",
                            f"covid_rural has no published split; use 'all' or put splits/{self.split}.txt in the root")
        self.stats.update(table_images=len(jpgs), table_masks=len(pngs), split_images=len(stems))
        self.stats["labelme_problems"] = []
        out: list[Sample] = []
        prompts = self.prompts.render_all(category="pneumonia", canonical="COVID-19")
        for stem in progress(stems, "covid_rural: reading masks"):
            img = jpg_dir / f"{stem}.jpg"
            mask = mask_dir / f"{stem}.png"
            if stem not in mask_stems:
                self.exclude(img, "no mask in pngs_masks (AFLoc uses annotated images only)")
                continue
            size = self.raster_size_or_skip(img)
            if size is None and self.opt("check_images"):
                continue
            try:
                mask_size, n_on = mask_nonzero_count(mask)
            except DataError as exc:
                self.skip(mask, f"unreadable mask ({exc.expected})")
                continue
            if size is not None and tuple(mask_size) != tuple(size):
                self.skip(mask, f"mask size {mask_size[0]}x{mask_size[1]} differs from the image's {size[0]}x{size[1]}")
                continue
            if n_on == 0 and self.opt("require_nonempty_mask"):
                self.exclude(mask, "empty mask (AFLoc skips it)")
                continue
            polygons, labels = self._labelme(json_dir / f"{stem}.json")
            out.append(Sample(
                sample_id=f"covid_rural/{stem}", image_path=str(img), split=self.split, category="COVID-19",
                prompts=dict(prompts), label=1 if n_on else 0, patient_id=stem.split("_", 1)[0], image_id=stem,
                view=None, image_size=size or tuple(mask_size), mask_paths=[str(mask)] if n_on else [],
                polygons=polygons, meta={"mask_pixels": n_on, "labelme_labels": labels}))
        return out

    def _labelme(self, path: Path) -> tuple[list[list[list[float]]], list[str]]:
        """Opacity polygons of a LabelMe file (lung outlines left out); problems are recorded."""
        if not path.is_file():
            return [], []
        try:
            data = json.loads(path.read_text())
            shapes = data["shapes"]
            polys, labels = [], []
            for sh in shapes:
                label = str(sh.get("label", ""))
                labels.append(label)
                if label.strip().lower() in LUNG_LABELS:
                    continue
                if sh.get("shape_type", "polygon") != "polygon":
                    continue
                pts = [[float(x), float(y)] for x, y in sh["points"]]
                if len(pts) >= 3:
                    polys.append(pts)
            return polys, labels
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.stats["labelme_problems"].append(f"{path}: {type(exc).__name__}: {exc}")
            return [], []

    def extra_checks(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        bad = self.stats.get("afloc_rstrip_corrupted") or []
        if bad:
            out.append(("warning", f"{len(bad)} file(s) whose stem AFLoc's rstrip would corrupt (quirk 13): "
                                   + ", ".join(f"{b['file']} -> {b['afloc_stem']!r}" for b in bad)))
        for msg in self.stats.get("labelme_problems") or []:
            out.append(("warning", f"LabelMe polygons unreadable (mask still used): {msg}"))
        return out


