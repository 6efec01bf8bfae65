"""WSSS4LUAD (lung adenocarcinoma tissue patches, Grand Challenge 2021): 3-class zero-shot classification.

The training set (``1.training/``, 10,091 patches) carries its patch-level labels in the file
names: ``<name>-[a, b, c].png`` with ``a, b, c`` 0/1 for tumor epithelial tissue, tumor-associated
stroma and normal tissue. AFLoc's ``Wsss4luad3`` (``classification.py --dataset Wsss4luad3``) reads
this folder and keeps the patches with exactly one label (``[0, 0, 1]`` normal, ``[0, 1, 0]``
stroma, ``[1, 0, 0]`` tumor); patches with two or three labels are left out (counted as excluded).

One sample per (patch, class) for the 3 classes in AFLoc's order (normal, stroma, tumor): label 1
for the patch's class, 0 for the other two, so that a protocol sees every class scored per image
(single-label softmax, balanced accuracy). Patches are ordered by class, then by file name (AFLoc
lists the folder with ``os.listdir``, whose order depends on the file system).

The validation and test sets (``2.validation/``, ``3.testing/``: ``img/`` and palette ``mask/``
PNGs) are not read by this loader: AFLoc does not evaluate them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, load_card
from benchmark.pathologies import canonical_name
from benchmark.progress import progress
from benchmark.sample import Sample

TRAIN_DIRS = ("1.training", "training")
# AFLoc's Wsss4luad3.categories and the file-name vector each class has ([tumor, stroma, normal]).
CLASSES = ("normal", "stroma", "tumor")
VECTOR = {(0, 0, 1): "normal", (0, 1, 0): "stroma", (1, 0, 0): "tumor"}
CANONICAL = {"normal": "Normal Tissue", "stroma": "Tumor-associated Stroma", "tumor": "Tumor Epithelial Tissue"}
_LABEL = re.compile(r"\[([^\[\]]*)\]\s*$")


def parse_label(stem: str) -> tuple[int, ...] | str:
    """The ``[tumor, stroma, normal]`` vector at the end of a training file stem, or the reason it has none."""
    m = _LABEL.search(stem)
    if m is None:
        return "file name carries no [tumor, stroma, normal] label (expected '<name>-[a, b, c].png')"
    parts = [p.strip() for p in m.group(1).split(",")]
    if len(parts) != 3 or any(p not in ("0", "1") for p in parts):
        return f"unknown label [{m.group(1)}]: expected three 0/1 values [tumor, stroma, normal]"
    return tuple(int(p) for p in parts)


class WSSS4LUAD(Loader):
    """WSSS4LUAD training patches: tumor / stroma / normal tissue, single-label patches (AFLoc's Wsss4luad3)."""

    card = load_card("wsss4luad")

    def required_files(self) -> list[str]:
        return [next((d for d in TRAIN_DIRS if (self.root / d).is_dir()), TRAIN_DIRS[0])]

    def load_samples(self) -> list[Sample]:
        if self.split != "train":
            raise DataError(self.root, f"wsss4luad has one split, 'train' (the labelled training patches AFLoc "
                                       f"evaluates), not {self.split!r}")
        folder = next((self.root / d for d in TRAIN_DIRS if (self.root / d).is_dir()), None)
        if folder is None:
            folder = self.require(TRAIN_DIRS[0], "training patch folder")  # raises, naming the expected layout
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
        by_class: dict[str, list[Path]] = {c: [] for c in CLASSES}
        multi = 0
        for p in files:
            vec = parse_label(p.stem)
            if isinstance(vec, str):
                self.skip(p, vec)
                continue
            cls = VECTOR.get(vec)
            if cls is None:
                multi += 1
                self.exclude(p, f"label {list(vec)} is not single-class (AFLoc keeps [0, 0, 1], [0, 1, 0], [1, 0, 0])")
                continue
            by_class[cls].append(p)
        canonical = {c: self._canonical(c) for c in CLASSES}
        prompts = {c: {"simple": self.prompts.render("simple", category=c, canonical=canonical[c])} for c in CLASSES}
        self.stats.update(table_images=len(files), split_images=sum(len(v) for v in by_class.values()),
                          multi_label_images=multi, **{f"split_{c}": len(by_class[c]) for c in CLASSES})
        out: list[Sample] = []
        for cls in CLASSES:
            for p in progress(by_class[cls], f"wsss4luad/{cls}: reading image headers"):
                ok, size = self.usable_image(p)
                if not ok:
                    continue
                meta: dict[str, Any] = {"class": cls, "label_vector": list(parse_label(p.stem))}
                for c in CLASSES:
                    out.append(Sample(
                        sample_id=f"wsss4luad/{p.stem}/{canonical[c]}", image_path=str(p), split=self.split,
                        category=canonical[c], prompts=prompts[c], label=int(c == cls), patient_id=None,
                        image_id=p.stem, view=None, image_size=size, meta=meta))
        return out

    @staticmethod
    def _canonical(word: str) -> str:
        """The shared table's name of a class word (a scoped alias of ``benchmark.pathologies``)."""
        return canonical_name(word, scope="wsss4luad")
