"""MIMIC-CXR (training data): MIMIC-CXR-JPG images with the FINDINGS and IMPRESSION of their report.

Reads ``mimic-cxr-2.0.0-split.csv`` and ``mimic-cxr-2.0.0-metadata.csv`` (plain or ``.gz``) and the
report of each study (``files/p1X/p<subject>/s<study>.txt``, from the MIMIC-CXR reports archive;
option ``report_root``, default the root). Frontal images are kept by ``ViewPosition`` (``PA``,
``AP`` by default). With ``exclude_csv`` pointing at an MS-CXR csv, its images are left out of
the ``train`` split (the AFLoc paper removes MS-CXR from training); they are counted as excluded.

A sample has ``prompts["report"]`` = the extracted text, no category and no label. When the
CheXpert label table ``mimic-cxr-2.0.0-chexpert.csv`` (plain or ``.gz``) is present, the study's
labels are in ``meta["chexpert"]`` (column → 1.0, 0.0, -1.0 or None for blank), for objectives that
train on report labels (MedKLIP).
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.dataset import DataError
from benchmark.datasets.common import Loader, first_existing, load_card, parse_views, read_csv
from benchmark.progress import progress
from benchmark.sample import Sample

SPLIT_CSVS = ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz")
META_CSVS = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz")
CHEXPERT_CSVS = ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-chexpert.csv.gz")
SPLIT_ALIASES = {"val": "validate", "valid": "validate", "validation": "validate"}

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 &/()\-]*[A-Z)])[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Sections of a MIMIC-CXR report by upper-case header (``FINDINGS:``, ``IMPRESSION:`` ...), text
    whitespace-normalised. A combined ``FINDINGS AND IMPRESSION:`` header fills both."""
    out: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[m.end():end].split())
        name = m.group(1).strip().lower()
        names = ["findings", "impression"] if name in ("findings and impression", "impression and findings") else [name]
        for n in names:
            out[n] = (out[n] + " " + body).strip() if out.get(n) else body
    return out


def extract_report(text: str, sections: tuple[str, ...] = ("findings", "impression")) -> str:
    """The wanted sections joined in order (FINDINGS then IMPRESSION), or ``""`` if none is present."""
    found = report_sections(text)
    return " ".join(found[s] for s in sections if found.get(s))


def image_relpath(subject: str, study: str, dicom_id: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"


def report_relpath(subject: str, study: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}.txt"


class MIMICCXR(Loader):
    """MIMIC-CXR-JPG frontal images with report FINDINGS + IMPRESSION (training set of AFLoc)."""

    card = load_card("mimic_cxr")
    OPTIONS = {"views": ("PA", "AP"), "exclude_csv": None, "report_root": None,
               "sections": ("findings", "impression")}

    def required_files(self) -> list[str]:
        return [next((c for c in SPLIT_CSVS if (self.root / c).is_file()), SPLIT_CSVS[0]),
                next((c for c in META_CSVS if (self.root / c).is_file()), META_CSVS[0]), "files"]

    def load_samples(self) -> list[Sample]:
        split = SPLIT_ALIASES.get(self.split, self.split)
        split_csv = first_existing(self.root, SPLIT_CSVS, "MIMIC-CXR-JPG split table")
        meta_csv = first_existing(self.root, META_CSVS, "MIMIC-CXR-JPG metadata table")
        sp = read_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"], dtype=str)
        known = sorted(set(sp["split"]))
        if split not in known:
            raise DataError(split_csv, f"no row has split {split!r} (found {known})")
        sp = sp[sp["split"] == split]
        meta = read_csv(meta_csv, ["dicom_id", "ViewPosition"], dtype=str, keep_default_na=False)
        meta_by_id = {r["dicom_id"]: r for r in meta.to_dict("records")}
        views = parse_views(self.opt("views"))
        excluded_ids = self._excluded_ids() if split == "train" else set()
        report_root = Path(self.opt("report_root")).expanduser() if self.opt("report_root") else self.root
        sections = tuple(self.opt("sections"))
        reports: dict[str, tuple[str, str | None]] = {}
        chexpert = self._chexpert_labels()
        self.stats.update(split_rows=len(sp), split_images=sp["dicom_id"].nunique(), table_rows=len(meta))
        out: list[Sample] = []
        for rec in progress(sp.to_dict("records"), f"mimic_cxr/{split}: reading reports"):
            dicom_id, study, subject = rec["dicom_id"], rec["study_id"], rec["subject_id"]
            path = self.root / image_relpath(subject, study, dicom_id)
            m = meta_by_id.get(dicom_id)
            if m is None:
                raise DataError(meta_csv, f"dicom_id {dicom_id} of {split_csv.name} is not in the metadata table")
            view = (m.get("ViewPosition") or "").strip().upper() or None
            if views is not None and view not in views:
                self.exclude(path, f"view {view} not in views option {sorted(views)}")
                continue
            if dicom_id in excluded_ids:
                self.exclude(path, "MS-CXR image (exclude_csv) kept out of training")
                continue
            if not self.image_ok(path):
                continue
            if study not in reports:
                reports[study] = self._report(report_root / report_relpath(subject, study), sections)
            text, problem = reports[study]
            if problem is not None:
                self.skip(path, problem)
                continue
            if not text:
                self.exclude(path, f"report has no {'/'.join(s.upper() for s in sections)} section")
                continue
            size = None
            if m.get("Rows") and m.get("Columns"):
                size = (int(float(m["Rows"])), int(float(m["Columns"])))
            out.append(Sample(
                sample_id=f"mimic_cxr/{dicom_id}", image_path=str(path), split=self.split, category=None,
                prompts={"report": text}, label=None, patient_id=subject, image_id=dicom_id, view=view,
                image_size=size, meta={"study_id": study, **({"chexpert": chexpert.get(study)} if chexpert else {})}))
        self.stats["studies"] = len({s.meta["study_id"] for s in out})
        return out

    @staticmethod
    def _report(path: Path, sections: tuple[str, ...]) -> tuple[str, str | None]:
        """(extracted text, problem); the problem names the report file."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "", f"report file not found ({path})"
        except OSError as exc:
            return "", f"unreadable report ({path}: {exc})"
        return extract_report(text, sections), None

    def _chexpert_labels(self) -> dict[str, dict[str, float | None]]:
        """study_id → {CheXpert column: value} from the official label table (empty when absent)."""
        import math

        path = next((self.root / c for c in CHEXPERT_CSVS if (self.root / c).is_file()), None)
        if path is None:
            return {}
        df = read_csv(path, ["study_id"], dtype={"study_id": str, "subject_id": str})
        cols = [c for c in df.columns if c not in ("subject_id", "study_id")]
        out = {}
        for rec in df.to_dict("records"):
            try:
                out[str(rec["study_id"])] = {c: (None if rec[c] is None or (isinstance(rec[c], float) and
                                                                           math.isnan(rec[c])) else float(rec[c]))
                                             for c in cols}
            except (TypeError, ValueError) as exc:
                raise DataError(path, f"study {rec['study_id']}: CheXpert labels must be 1.0, 0.0, -1.0 or "
                                      f"blank ({exc})") from None
        self.stats["chexpert_studies"] = len(out)
        return out

    def _excluded_ids(self) -> set[str]:
        csv = self.opt("exclude_csv")
        if not csv:
            return set()
        path = Path(csv).expanduser()
        df = read_csv(path, ["dicom_id"], dtype=str)
        ids = set(df["dicom_id"])
        self.stats["exclude_csv_ids"] = len(ids)
        return ids


