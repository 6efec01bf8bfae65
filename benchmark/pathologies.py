"""One table of canonical pathology names, used by every loader.

Why a central table: each dataset spells findings its own way ("Effusion", "Pleural effusion",
"Pleural_Effusion"; "Infiltrate" vs "Infiltration"), and per-class results can only be compared
across datasets when the names agree. torchxrayvision does these renames by string replacement
inside each loader; here they are explicit data, and a name that is not in the table is an error
naming the file and row it came from, never a silent new category.

Deliberate distinctions:
- "Lung Lesion" (CheXpert/CheXlocalize) and "Lesion" (OpenI) stay distinct (torchxrayvision #69
  is still open on whether they mean the same thing).
- "Airspace Opacity" (CheXlocalize's task name) and "Lung Opacity" (CheXpert csv, MS-CXR, RSNA
  detailed classes, VinDr) stay distinct canonical names, because AFLoc's prompts use the dataset's
  own word. Inside the ``chexlocalize`` scope the CheXpert csv column "Lung Opacity" maps to
  "Airspace Opacity" (same observation, renamed by the CheXlocalize authors).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from benchmark.dataset import DataError

CHEST = "chest"
PATHOLOGY = "pathology"


@dataclass(frozen=True)
class Pathology:
    name: str
    domain: str  # chest | pathology | other
    aliases: tuple[str, ...] = ()
    note: str = ""


_TABLE: tuple[Pathology, ...] = (
    # chest X-ray findings
    Pathology("Atelectasis", CHEST, ("Atelectases",)),
    Pathology("Cardiomegaly", CHEST),
    Pathology("Consolidation", CHEST),
    Pathology("Edema", CHEST, ("Pulmonary Edema",)),
    Pathology("Pleural Effusion", CHEST, ("Effusion", "Pleural_Effusion", "Effusions"),
              "NIH/ChestX-Det10 'Effusion' and CheXpert 'Pleural Effusion' are the same finding"),
    Pathology("Pneumonia", CHEST),
    Pathology("Pneumothorax", CHEST),
    Pathology("Lung Opacity", CHEST, ("Opacity",), "CheXpert/MS-CXR/RSNA/VinDr wording"),
    Pathology("Airspace Opacity", CHEST, (), "CheXlocalize's name for CheXpert 'Lung Opacity'"),
    Pathology("Enlarged Cardiomediastinum", CHEST),
    Pathology("Lung Lesion", CHEST, (), "kept distinct from 'Lesion'"),
    Pathology("Lesion", CHEST, (), "OpenI wording; kept distinct from 'Lung Lesion'"),
    Pathology("Other Lesion", CHEST, (), "VinDr-CXR catch-all"),
    Pathology("Support Devices", CHEST),
    Pathology("Fracture", CHEST),
    Pathology("Rib Fracture", CHEST),
    Pathology("Clavicle Fracture", CHEST),
    Pathology("Infiltration", CHEST, ("Infiltrate", "Infiltrates")),
    Pathology("Mass", CHEST),
    Pathology("Nodule", CHEST),
    Pathology("Nodule/Mass", CHEST, ("Nodule or mass", "Nodule Mass"), "VinDr merges the two"),
    Pathology("Emphysema", CHEST),
    Pathology("Fibrosis", CHEST, ("Pulmonary Fibrosis",)),
    Pathology("Pleural Thickening", CHEST, ("Pleural_Thickening",)),
    Pathology("Pleural Other", CHEST),
    Pathology("Hernia", CHEST),
    Pathology("Calcification", CHEST),
    Pathology("Aortic Enlargement", CHEST),
    Pathology("Interstitial Lung Disease", CHEST, ("ILD",)),
    Pathology("Enlarged PA", CHEST, ("Enlarged Pulmonary Artery",)),
    Pathology("Lung Cavity", CHEST),
    Pathology("Lung Cyst", CHEST),
    Pathology("Mediastinal Shift", CHEST),
    Pathology("COVID-19", CHEST, ("COVID19", "COVID")),
    Pathology("No Finding", CHEST, ("Normal",)),
    # CXR-LT 2024 (MIMIC-CXR long-tail) classes not named above, as its label columns spell them
    Pathology("Calcification of the Aorta", CHEST, (), "CXR-LT; kept distinct from VinDr's 'Calcification'"),
    Pathology("Tortuous Aorta", CHEST),
    Pathology("Pneumomediastinum", CHEST),
    Pathology("Pneumoperitoneum", CHEST),
    Pathology("Subcutaneous Emphysema", CHEST, (), "kept distinct from (pulmonary) 'Emphysema'"),
    Pathology("Bulla", CHEST),
    Pathology("Cardiomyopathy", CHEST),
    Pathology("Hilum", CHEST, (), "CXR-LT's hilar-abnormality class"),
    Pathology("Osteopenia", CHEST),
    Pathology("Scoliosis", CHEST),
    # prostate histopathology (SICAPv2 Gleason patterns)
    Pathology("Non-cancerous", PATHOLOGY, ("NC", "Benign"), "SICAPv2 column NC"),
    Pathology("Gleason Pattern 3", PATHOLOGY, ("G3",), "SICAPv2 column G3"),
    Pathology("Gleason Pattern 4", PATHOLOGY, ("G4",), "SICAPv2 column G4"),
    Pathology("Gleason Pattern 5", PATHOLOGY, ("G5",), "SICAPv2 column G5"),
    Pathology("Gleason Pattern 4 Cribriform", PATHOLOGY, ("G4C",), "SICAPv2 column G4C"),
    # lung adenocarcinoma tissue (WSSS4LUAD; its file-name words are scoped aliases: "normal" alone is No Finding)
    Pathology("Normal Tissue", PATHOLOGY, (), "WSSS4LUAD 'normal'"),
    Pathology("Tumor-associated Stroma", PATHOLOGY, (), "WSSS4LUAD 'stroma'"),
    Pathology("Tumor Epithelial Tissue", PATHOLOGY, (), "WSSS4LUAD 'tumor'"),
    # lung adenocarcinoma growth patterns (DHMC LUAD)
    Pathology("Solid Pattern", PATHOLOGY, (), "DHMC LUAD 'solid'"),
    Pathology("Lepidic Pattern", PATHOLOGY, (), "DHMC LUAD 'lepidic'"),
    Pathology("Acinar Pattern", PATHOLOGY, (), "DHMC LUAD 'acinar'"),
    Pathology("Micropapillary Pattern", PATHOLOGY, (), "DHMC LUAD 'micropapillary'"),
    Pathology("Papillary Pattern", PATHOLOGY, (), "DHMC LUAD 'papillary'"),
)

CANONICAL: dict[str, Pathology] = {p.name: p for p in _TABLE}

# Aliases valid only inside one dataset's vocabulary (scope = loader/card name).
SCOPED_ALIASES: dict[str, dict[str, str]] = {
    "chexlocalize": {"Lung Opacity": "Airspace Opacity"},
    "wsss4luad": {"normal": "Normal Tissue", "stroma": "Tumor-associated Stroma", "tumor": "Tumor Epithelial Tissue"},
    "dhmc_luad": {"solid": "Solid Pattern", "lepidic": "Lepidic Pattern", "acinar": "Acinar Pattern",
                  "micropapillary": "Micropapillary Pattern", "papillary": "Papillary Pattern"},
}


def _key(name: str) -> str:
    """Spelling-insensitive key: case, underscores and runs of spaces do not matter."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip().casefold()


_INDEX: dict[str, str] = {}
for _p in _TABLE:
    for _alias in (_p.name, *_p.aliases):
        _k = _key(_alias)
        if _k in _INDEX and _INDEX[_k] != _p.name:  # pragma: no cover - table consistency
            raise RuntimeError(f"pathology alias {_alias!r} maps to both {_INDEX[_k]!r} and {_p.name!r}")
        _INDEX[_k] = _p.name
_SCOPED_INDEX = {scope: {_key(a): c for a, c in table.items()} for scope, table in SCOPED_ALIASES.items()}


class UnknownCategoryError(DataError):
    """A category name that is not in the canonical table; names the file and row."""


def canonical_name(name: str, *, scope: str | None = None, source: str | os.PathLike | None = None,
                   row: int | str | None = None) -> str:
    """Canonical spelling of ``name``; raises ``UnknownCategoryError`` naming ``source``/``row``."""
    key = _key(name)
    if scope and key in _SCOPED_INDEX.get(scope, {}):
        return _SCOPED_INDEX[scope][key]
    if key in _INDEX:
        return _INDEX[key]
    where = "" if row is None else (f"row {row}: " if isinstance(row, int) or str(row).isdigit() else f"{row}: ")
    close = difflib.get_close_matches(str(name), sorted(CANONICAL), n=3, cutoff=0.6)
    hint = ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
    raise UnknownCategoryError(source, f"{where}unknown category {name!r}{hint} "
                                       "(add it to benchmark/pathologies.py if it is a new finding)")


def is_known(name: str, scope: str | None = None) -> bool:
    key = _key(name)
    return key in _INDEX or key in _SCOPED_INDEX.get(scope or "", {})


def same_pathology(a: str, b: str, scope: str | None = None) -> bool:
    """True when two source names denote the same canonical finding."""
    return canonical_name(a, scope=scope) == canonical_name(b, scope=scope)


def relabel(names: Iterable[str], scope: str | None = None) -> list[str]:
    """A new list of canonical names (never mutates the input; unlike torchxrayvision's helper)."""
    return [canonical_name(n, scope=scope) for n in names]


def names(domain: str | None = None) -> list[str]:
    """Canonical names, optionally of one domain (``chest`` or ``pathology``)."""
    return [p.name for p in _TABLE if domain is None or p.domain == domain]
