"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 14-label zero-shot classification.

Files as the NIH release (and its Kaggle mirror) distributes them:

- ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``): ``Image Index``, ``Finding Labels``
  (``|``-separated, ``No Finding`` for none), ``Follow-up #``, ``Patient ID``, ``Patient Age``,
  ``Patient Gender``, ``View Position``, ``OriginalImage[Width``, ``Height]``, ... (the header's
  bracketed pairs split into two columns each);
- ``test_list.txt`` and ``train_val_list.txt``: one image file name per line (the official split);
- the PNGs in ``images/`` or in the ``images_0NN/images/`` folders of the archives (looked up as the
  ``nih_bbox`` loader does).

One sample per (image, class) for the 14 classes, in the official AFLoc order: ``label`` 1 when
the class is among the image's labels, else 0 (multi-label, per-class AUROC). ``patient_id`` is
``Patient ID``; ``view`` is ``View Position``.

Splits: ``test`` (default; ``test_list.txt``), ``train_val`` (``train_val_list.txt``), ``all``
(every row of the table) and ``mrm_test``, the 22,433-image list MRM publishes in the line format
AFLoc's NIH reader reads (``<file name> <14 x 0/1>``); its labels come from the list
(``labels_from: list``, as AFLoc reads them) or from the table (``labels_from: data_entry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, card_extra, first_existing, load_card, parse_views, read_split
from benchmark.datasets.nih_bbox.loader import ImageLocator, read_data_entry
from benchmark.progress import progress
from benchmark.sample import Sample

ENTRY_CSVS = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
OFFICIAL_LISTS = {"test": "test_list.txt", "train_val": "train_val_list.txt"}
SPLIT_ALIASES = {"trainval": "train_val", "train_val_list": "train_val"}
# The 14 labels as Data_Entry spells them, in the order of AFLoc's NIHChestXray.categories (and of
# the columns of the MRM list); AFLoc's own words are the card's official_spelling.
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"


class NIHChestXray14(Loader):
    """NIH ChestX-ray14: 14 image-level labels for zero-shot multi-label classification."""

    card = load_card("nih_chestxray14")
    OPTIONS = {"views": None, "labels_from": "list"}

    @property
    def split_name(self) -> str:
        return SPLIT_ALIASES.get(self.split, self.split)

    def required_files(self) -> list[str]:
        need = [next((e for e in ENTRY_CSVS if (self.root / e).is_file()), ENTRY_CSVS[0])]
        if self.split_name in OFFICIAL_LISTS and not (self.root / "splits" / f"{self.split}.txt").is_file():
            need.append(OFFICIAL_LISTS[self.split_name])
        if not any(self.root.glob("images_*")):  # the archives' images_0NN/images/ folders, else images/
            need.append("images")
        return need

    # -- loading ----------------------------------------------------------------------------
    def load_samples(self) -> list[Sample]:
        if self.opt("labels_from") not in ("list", "data_entry"):
            raise DataError(None, f"nih_chestxray14 option labels_from={self.opt('labels_from')!r}: expected "
                                  "'list' (the split list's 14 columns, as AFLoc reads them) or 'data_entry'")
        entry_path = first_existing(self.root, ENTRY_CSVS, "Data_Entry_2017 table")
        rows, list_labels, list_path = self._split_rows()
        entries = read_data_entry(entry_path, None if rows is None else set(rows))
        if rows is None:
            rows = list(entries)
            self.stats["table_rows"] = len(entries)
        canonical = {c: self.canonical(c, entry_path) for c in CLASSES}
        self._word_of = {v: k for k, v in canonical.items()}
        spelled = self.card.official_spelling or {}
        prompts = {c: {"simple": self.prompts.render("simple", category=spelled.get(canonical[c], c),
                                                     canonical=canonical[c])} for c in CLASSES}
        use_list = list_labels is not None and self.opt("labels_from") == "list"
        labels: dict[str, frozenset[str]] = {}
        table_of: dict[str, frozenset[str]] = {}
        self.label_disagreements: list[str] = []
        for k, name in enumerate(rows, start=1):
            info = entries.get(name)
            if info is None:
                raise DataError(list_path or entry_path, f"entry {k}: image {name!r} is not in {entry_path.name}")
            table_labels = table_of[name] = self._table_labels(info, entry_path)
            if list_labels is not None and list_labels[name] != table_labels:
                self.label_disagreements.append(name)
            labels[name] = list_labels[name] if use_list else table_labels
        self.stats.update(split_images=len(rows), split_positive_labels=sum(len(v) for v in labels.values()))
        if list_labels is not None:
            self.stats["list_label_disagreements"] = len(self.label_disagreements)
        locate = ImageLocator(self.root)
        views = parse_views(self.opt("views"))
        out: list[Sample] = []
        for name in progress(rows, f"nih_chestxray14/{self.split}: reading image headers"):
            info = entries[name]
            path = locate(name)
            ok, size = self.usable_image(path)
            if not ok:
                continue
            if views is not None and info["view"] not in views:
                self.exclude(path, f"view {info['view']} not in views option {sorted(views)}")
                continue
            stem = Path(name).stem
            table_labels = table_of[name]
            # one meta dict per image, shared by its 14 samples
            meta: dict[str, Any] = {"finding_labels": [canonical[c] for c in CLASSES if c in table_labels],
                                    "data_entry_row": info["row"], "scanner_size": info["size"]}
            for c in CLASSES:
                out.append(Sample(
                    sample_id=f"nih_chestxray14/{stem}/{canonical[c]}", image_path=str(path), split=self.split,
                    category=canonical[c], prompts=prompts[c], label=int(c in labels[name]),
                    patient_id=info["patient"], image_id=stem, view=info["view"], image_size=size, meta=meta))
        return out

    def _split_rows(self) -> tuple[list[str] | None, dict[str, frozenset[str]] | None, Path | None]:
        """(image names of the split or None for all, per-image labels of a labelled list, the list's path)."""
        split = self.split_name
        split_list = read_split(self, self.split)
        if split_list is not None and split_list.overridden:  # <root>/splits/<split>.txt: names, table labels
            self.use_split_list(split_list)
            names = _unique([_file_name(e.token) for e in split_list.entries], split_list.path)
            self.stats["split_rows"] = len(split_list.entries)
            return names, None, split_list.path
        if split == "mrm_test":
            if split_list is None:
                raise DataError(self.root / "splits" / "mrm_test.txt", "no shipped list for split mrm_test")
            self.use_split_list(split_list)
            labelled = read_labelled_list(split_list.path)
            self.stats["split_rows"] = len(labelled)
            names = _unique([n for n, _ in labelled], split_list.path)
            return names, dict(labelled), split_list.path
        if split in OFFICIAL_LISTS:
            path = self.require(OFFICIAL_LISTS[split], "official split list")
            raw = read_name_list(path)
            self.stats["split_rows"] = len(raw)
            return _unique(raw, path), None, path
        if split == "all":
            return None, None, None
        known = dict.fromkeys([*OFFICIAL_LISTS, "all", *card_extra(self.card).get("splits", {})])
        raise DataError(self.root / "splits" / f"{self.split}.txt",
                        f"unknown split {self.split!r} (known: {', '.join(known)}, or a root-local list)")

    def _table_labels(self, info: dict[str, Any], entry_path: Path) -> frozenset[str]:
        """The image's ``Finding Labels`` as the 14 Data_Entry words; any other label is a ``DataError``."""
        out = set()
        for raw in info["labels"]:
            word = self._word_of.get(self.canonical(raw, entry_path, info["row"]))
            if word is None:
                raise DataError(entry_path, f"row {info['row']}: Finding Labels {raw!r} is not one of the 14 "
                                            f"ChestX-ray14 labels ({', '.join(CLASSES)}) or {NO_FINDING!r}")
            out.add(word)
        return frozenset(out)

    def extra_checks(self) -> list[tuple[str, str]]:
        n = self.stats.get("list_label_disagreements", 0)
        if not n:
            return []
        names = self.label_disagreements[:10]
        return [("warning", f"{n} image(s) of the {self.split} list have labels that differ from the Data_Entry "
                            f"table's (labels_from={self.opt('labels_from')}): " + ", ".join(names)
                 + (" ..." if n > len(names) else ""))]


def _list_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the list ({type(exc).__name__}: {exc})") from None


def read_name_list(path: Path) -> list[str]:
    """``test_list.txt`` / ``train_val_list.txt``: one image file name per line (blank lines ignored)."""
    text = _list_text(path)
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if len(name.split()) != 1 or not name.lower().endswith(".png"):
            raise DataError(path, f"line {i}: expected one image file name (e.g. 00000003_000.png), got {line!r}")
        out.append(name)
    return out


def read_labelled_list(path: Path) -> list[tuple[str, frozenset[str]]]:
    """MRM's / AFLoc's list format: ``<file name> <14 x 0/1>`` per line, columns in ``CLASSES`` order."""
    text = _list_text(path)
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1 + len(CLASSES) or any(v not in ("0", "1") for v in parts[1:]):
            raise DataError(path, f"line {i}: expected '<image file name>' and {len(CLASSES)} labels 0/1 "
                                  f"({', '.join(CLASSES)}); got {line.strip()[:80]!r}")
        out.append((parts[0], frozenset(c for c, v in zip(CLASSES, parts[1:]) if v == "1")))
    return out


def _file_name(token: str) -> str:
    """``images_001/images/00000003_000.png`` or ``00000003_000`` -> ``00000003_000.png``."""
    name = token.replace("\\", "/").rsplit("/", 1)[-1]
    return name if name.lower().endswith(".png") else f"{name}.png"


def _unique(names: list[str], path: Path) -> list[str]:
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in seen:
            raise DataError(path, f"entry {i}: {n} is listed twice (first at entry {seen[n]})")
        seen[n] = i
    return names
