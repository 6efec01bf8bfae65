"""DHMC LUAD (Dartmouth lung adenocarcinoma slides, Wei et al. 2019): 5-pattern zero-shot classification.

The release (https://bmirds.github.io/LungCancer/) holds 143 H&E whole-slide images and
``MetaData_Release_1.0.csv``, one row per slide: ``File Name`` (e.g. ``DHMC_0001.tif``), ``Class``
(the predominant pattern: lepidic, acinar, papillary, micropapillary or solid) and scanner fields
(``Microns Per Pixel``, ``Magnification``, kept in ``meta`` when present). AFLoc's ``DHMCLUAD``
(``classification.py --dataset DHMCLUAD``) reads that CSV and one image per row from its own
reduced copies of the slides (``images_224/<File Name>``, read with ``cv2.imread``).

Images: option ``image_dir`` (relative to the root or absolute); by default ``images_224/`` when
that folder exists (AFLoc's layout), else the root (the release). The harness decodes whole image
files, so full-resolution slides must be reduced first, as AFLoc did.

One sample per (slide, class) for the 5 classes in AFLoc's order (solid, lepidic, acinar,
micropapillary, papillary): label 1 for the slide's class, 0 for the others (single-label
softmax, balanced accuracy). A ``Class`` outside the five is an error naming the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card, read_csv
from benchmark.pathologies import canonical_name
from benchmark.progress import progress
from benchmark.sample import Sample

META_CSV = "MetaData_Release_1.0.csv"
AFLOC_IMAGE_DIR = "images_224"
# AFLoc's DHMCLUAD.categories (the CSV's Class values) and the canonical names used here.
CLASSES = ("solid", "lepidic", "acinar", "micropapillary", "papillary")
CANONICAL = {"solid": "Solid Pattern", "lepidic": "Lepidic Pattern", "acinar": "Acinar Pattern",
             "micropapillary": "Micropapillary Pattern", "papillary": "Papillary Pattern"}
SCANNER_COLUMNS = ("Microns Per Pixel", "Magnification")


class DHMCLUAD(Loader):
    """DHMC LUAD: predominant histologic pattern of lung adenocarcinoma slides (AFLoc's DHMCLUAD)."""

    card = load_card("dhmc_luad")
    OPTIONS = {"image_dir": None}

    def image_dir(self) -> Path:
        opt = self.opt("image_dir")
        if opt:
            p = Path(opt).expanduser()
            return p if p.is_absolute() else self.root / p
        return self.root / AFLOC_IMAGE_DIR if (self.root / AFLOC_IMAGE_DIR).is_dir() else self.root

    def required_files(self) -> list[str]:
        return [META_CSV]

    def load_samples(self) -> list[Sample]:
        if self.split != "all":
            raise DataError(self.root, f"dhmc_luad has one split, 'all' (every slide of {META_CSV}, as AFLoc "
                                       f"evaluates it), not {self.split!r}")
        csv_path = self.require(META_CSV, "slide table")
        rows = read_metadata(csv_path)
        canonical = {c: self._canonical(c) for c in CLASSES}
        prompts = {c: {"simple": self.prompts.render("simple", category=c, canonical=canonical[c])} for c in CLASSES}
        folder = self.image_dir()
        self.stats.update(table_rows=len(rows), split_images=len(rows),
                          **{f"split_{c}": sum(1 for r in rows if r["class"] == c) for c in CLASSES})
        out: list[Sample] = []
        for r in progress(rows, "dhmc_luad: reading image headers"):
            path = folder / r["file"]
            ok, size = self.usable_image(path)
            if not ok:
                continue
            stem = Path(r["file"]).stem
            meta: dict[str, Any] = {"class": r["class"], "csv_row": r["row"], **r["scanner"]}
            for c in CLASSES:
                out.append(Sample(
                    sample_id=f"dhmc_luad/{stem}/{canonical[c]}", image_path=str(path), split=self.split,
                    category=canonical[c], prompts=prompts[c], label=int(c == r["class"]), patient_id=None,
                    image_id=stem, view=None, image_size=size, meta=meta))
        return out

    @staticmethod
    def _canonical(word: str) -> str:
        """The shared table's name of a class word (a scoped alias of ``benchmark.pathologies``)."""
        return canonical_name(word, scope="dhmc_luad")


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """Rows of ``MetaData_Release_1.0.csv``: ``{file, class, scanner, row}``; ``Class`` must be one of the five
    patterns (case and surrounding spaces ignored), ``File Name`` non-empty and not repeated."""
    df = read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("File Name", "Class") if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected 'File Name' and 'Class' "
                              f"({', '.join(CLASSES)}); found {list(df.columns)}")
    out, seen = [], {}
    scanner = [c for c in SCANNER_COLUMNS if c in df.columns]
    for i, rec in enumerate(df.to_dict("records"), start=2):
        name, cls = rec["File Name"].strip(), rec["Class"].strip().lower()
        if not name:
            raise DataError(path, f"row {i}: empty File Name")
        if cls not in CLASSES:
            raise DataError(path, f"row {i}: unknown Class {rec['Class']!r} for {name}; expected one of "
                                  f"{', '.join(CLASSES)}")
        if name in seen:
            raise DataError(path, f"row {i}: File Name {name} is listed twice (first at row {seen[name]})")
        seen[name] = i
        out.append({"file": name, "class": cls, "row": i, "scanner": {c: rec[c] for c in scanner}})
    return out
