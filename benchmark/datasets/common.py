"""Helpers shared by the loaders: cards and prompt sets as data, split lists, RLE, DICOM headers.

Nothing here imports torch. pandas, pydicom and pycocotools are imported inside functions so that
listing datasets stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.cache import file_sha256
from benchmark.dataset import AFLOC_MODES, MODALITIES, DataError, Dataset, DatasetCard, cache_home
from benchmark.pathologies import canonical_name
from benchmark.records import atomic_write_json
from benchmark.sample import Sample

log = logging.getLogger("benchmark.datasets")

# ---------------------------------------------------------------------------------------------
# The data side: datasets/<name>/{card.yaml, prompts.yaml, splits/, README.md}
# ---------------------------------------------------------------------------------------------


def datasets_dir() -> Path:
    """The cards, split lists and prompt sets (the repository's ``datasets/`` folder, shipped in the
    package). ``AFLOC_BENCH_DATASETS_DIR`` points elsewhere (a card under development)."""
    env = os.environ.get("AFLOC_BENCH_DATASETS_DIR")
    if env:
        return Path(env).expanduser()
    from benchmark.resources import datasets_dir as shipped

    return shipped()


def dataset_dir(name: str) -> Path:
    return datasets_dir() / name


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise DataError(path, "file not found (the repository's datasets/ folder ships it)")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise DataError(path, "expected a YAML mapping")
    return data


_CARD_FIELDS = {f.name for f in fields(DatasetCard)}
CLASSIFICATION_MODES = ("multilabel", "softmax")


def load_card(name: str) -> DatasetCard:
    """``datasets/<name>/card.yaml`` as a ``DatasetCard``.

    Keys that ``DatasetCard`` has no field for (split files and their sha256, label map,
    documented-but-unverified counts, changelog) are kept in ``card.extra``.
    """
    path = dataset_dir(name) / "card.yaml"
    data = _read_yaml(path)
    if data.get("name") != name:
        raise DataError(path, f"card name {data.get('name')!r} differs from its folder {name!r}")
    known = {k: v for k, v in data.items() if k in _CARD_FIELDS}
    known["version"] = str(known.get("version", "1"))
    for key in ("layout", "notes"):
        if key in known and known[key] is not None:
            known[key] = str(known[key]).rstrip("\n")
    card = DatasetCard(**known)
    if card.afloc_mode not in AFLOC_MODES:
        raise DataError(path, f"afloc_mode {card.afloc_mode!r}: expected one of {', '.join(AFLOC_MODES)}")
    if card.modality not in MODALITIES:
        raise DataError(path, f"modality {card.modality!r}: expected one of {', '.join(MODALITIES)}")
    if card.classification_mode not in CLASSIFICATION_MODES:
        raise DataError(path, f"classification.mode {card.classification_mode!r}: expected one of "
                              f"{', '.join(CLASSIFICATION_MODES)}")
    card.extra = {k: v for k, v in data.items() if k not in _CARD_FIELDS}  # type: ignore[attr-defined]
    return card


def card_extra(card: DatasetCard) -> dict[str, Any]:
    return getattr(card, "extra", {}) or {}


class PromptSet:
    """The versioned prompt templates of one dataset (``datasets/<name>/prompts.yaml``).

    Templates are ``str.format`` strings over the fields a loader passes: ``category`` (the
    dataset's own wording, as AFLoc's prompts use it), ``canonical`` (canonical name) and
    ``phrase`` (a report phrase, for ``precise``). ``per_category`` overrides a template for one
    source category (SICAPv2 uses a different sentence per Gleason pattern).
    """

    def __init__(self, name: str, data: dict[str, Any], path: Path | None = None):
        self.name = name
        self.path = path
        self.version = str(data.get("version", "1"))
        self.templates: dict[str, str] = dict(data.get("sets") or {})
        self.per_category: dict[str, dict[str, str]] = {k: dict(v) for k, v in (data.get("per_category") or {}).items()}
        self.classification: dict[str, Any] = dict(data.get("classification") or {})
        # the finding a set's prompt asks about when it is not the sample's category (canonical names)
        self.findings: dict[str, str] = {str(k): str(v) for k, v in (data.get("findings") or {}).items()}
        if "simple" not in self.templates and "simple" not in self.per_category:
            raise DataError(path, "prompt file must define a 'simple' prompt set")

    @property
    def set_names(self) -> list[str]:
        return list(dict.fromkeys([*self.templates, *self.per_category]))

    def render(self, set_name: str, **values: Any) -> str:
        cat = values.get("category")
        template = self.per_category.get(set_name, {}).get(str(cat)) if cat is not None else None
        if template is None:
            template = self.templates.get(set_name)
        if template is None:
            raise DataError(self.path, f"prompt set {set_name!r} has no template for category {cat!r}")
        needed = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        missing = needed - {k for k, v in values.items() if v is not None}
        if missing:
            raise DataError(self.path, f"prompt {set_name!r} needs {sorted(missing)} which the loader did not give")
        return template.format(**values)

    def render_all(self, sets: Iterable[str] | None = None, **values: Any) -> dict[str, str]:
        return {s: self.render(s, **values) for s in (sets if sets is not None else self.set_names)}

    def sha256(self) -> str:
        return file_sha256(self.path) if self.path else ""


def load_prompts(name: str) -> PromptSet:
    path = dataset_dir(name) / "prompts.yaml"
    return PromptSet(name, _read_yaml(path), path)


# ---------------------------------------------------------------------------------------------
# Split id lists
# ---------------------------------------------------------------------------------------------


@dataclass
class SplitEntry:
    """One line of a split list: ``id`` normalised (file stem), the raw token, optional label."""

    id: str
    token: str
    label: int | None
    line: int


@dataclass
class SplitList:
    entries: list[SplitEntry]
    path: Path
    overridden: bool  # True when read from <root>/splits/<split>.txt
    spec: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]


ID_SUFFIXES = (".dcm", ".dicom", ".jpg", ".jpeg", ".png")


def normalise_id(token: str) -> str:
    """Last path component without an image suffix (``a/b/<uid>.jpg`` → ``<uid>``)."""
    stem = token.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for suf in ID_SUFFIXES:
        if stem.lower().endswith(suf):
            return stem[: -len(suf)]
    return stem


def read_id_list(path: Path) -> list[SplitEntry]:
    """``<id or relative path> [label]`` per line; blank lines and ``#`` comments ignored."""
    out: list[SplitEntry] = []
    with open(path, encoding="utf-8") as f:
        for i, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            label: int | None = None
            if len(parts) >= 2:
                try:
                    label = int(float(parts[1]))
                except ValueError:
                    raise DataError(path, f"line {i}: expected '<id> [0|1]', got {text!r}") from None
                if label not in (0, 1):
                    raise DataError(path, f"line {i}: label must be 0 or 1, got {parts[1]!r}")
            out.append(SplitEntry(normalise_id(parts[0]), parts[0], label, i))
    return out


def read_id_csv(path: Path, id_column: str, label_column: str | None = None) -> list[SplitEntry]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read CSV ({exc})") from exc
    require_columns(df, [id_column] + ([label_column] if label_column else []), path)
    labels = df[label_column].tolist() if label_column else [None] * len(df)
    out = []
    for i, (token, lab) in enumerate(zip(df[id_column].tolist(), labels), start=2):
        label = None
        if label_column:
            try:
                label = int(float(lab))
            except ValueError:
                raise DataError(path, f"row {i}: {label_column} is not 0/1 ({lab!r})") from None
        out.append(SplitEntry(normalise_id(str(token)), str(token), label, i))
    return out


def read_split(ds: Loader, split: str) -> SplitList | None:
    """The id list of ``split``: ``<root>/splits/<split>.txt`` if present, else the shipped list.

    Returns None when the card declares no list for the split (the split is then defined by the
    dataset's own files, e.g. ChestX-Det10's ``test.json``).
    """
    spec = dict(card_extra(ds.card).get("splits", {}).get(split) or {})
    local = ds.root / "splits" / f"{split}.txt"
    if local.is_file():
        return SplitList(read_id_list(local), local, True, spec)
    if not spec.get("file"):
        return None
    path = dataset_dir(ds.card.name) / spec["file"]
    if not path.is_file():
        raise DataError(path, f"shipped split list of {ds.card.name}/{split} is missing from the repository")
    if spec.get("format", "list") == "csv":
        entries = read_id_csv(path, spec.get("id_column", "id"), spec.get("label_column"))
    else:
        entries = read_id_list(path)
    return SplitList(entries, path, False, spec)


def check_list_overlap(split_list: SplitList, known: Iterable[str], table: Path) -> None:
    """A shipped list that shares no id with the root's table means the wrong files (or a demo root)."""
    known = set(known)
    if split_list.entries and not any(e.id in known for e in split_list.entries):
        raise DataError(split_list.path, f"none of its {len(split_list.entries)} ids is in {table}; is the root the "
                                         "right dataset? A root-local splits/<split>.txt overrides the shipped list")


# ---------------------------------------------------------------------------------------------
# Tables and files
# ---------------------------------------------------------------------------------------------


def require_columns(df: Any, columns: Sequence[str], path: str | os.PathLike) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(df.columns)}")


def read_csv(path: Path, columns: Sequence[str] = (), **kwargs: Any):
    """pandas.read_csv with errors turned into ``DataError`` naming the file."""
    import pandas as pd

    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read CSV ({type(exc).__name__}: {exc})") from exc
    require_columns(df, columns, path)
    return df


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``candidates`` (relative to ``root``) that exists, else a ``DataError`` listing them."""
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    raise DataError(root / candidates[0], f"{what} not found (looked for {', '.join(candidates)} under {root})")


def index_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` for every file under ``folder`` (recursively) with one of ``suffixes``."""
    out: dict[str, Path] = {}
    sufs = tuple(s.lower() for s in suffixes)
    for dirpath, _dirs, files in os.walk(folder):
        for fn in files:
            if fn.lower().endswith(sufs):
                stem = fn.rsplit(".", 1)[0]
                out.setdefault(stem, Path(dirpath) / fn)
    return out


def parse_views(views: Any) -> set[str] | None:
    """``None``/``"*"``/``"all"`` → no filter; otherwise a set of upper-case view names."""
    if views is None or views == "*" or views == "all":
        return None
    if isinstance(views, str):
        views = [v for v in views.replace(";", ",").split(",") if v.strip()]
    return {str(v).strip().upper() for v in views}


# ---------------------------------------------------------------------------------------------
# DICOM headers (views and sizes), cached
# ---------------------------------------------------------------------------------------------

HEADER_TAGS = ("ViewPosition", "Rows", "Columns", "PhotometricInterpretation")


class DicomHeaders:
    """View position and size of DICOM files, read without pixels and cached on disk.

    Why: RSNA has 26,684 DICOMs; reading only the few header tags needed is ~1 ms per file, and
    the cache (``<cache>/dicom_headers/<hash of folder>.json``, keyed by path, size and mtime)
    makes a second pass a dictionary lookup. A file whose size or mtime changed is re-read.
    """

    def __init__(self, folder: Path, enabled: bool = True):
        self.folder = Path(folder).resolve()
        self.enabled = enabled
        key = hashlib.sha1(str(self.folder).encode()).hexdigest()[:16]
        self.path = cache_home() / "dicom_headers" / f"{key}.json"
        self._data: dict[str, list[Any]] = {}
        self._dirty = False
        if enabled and self.path.is_file():
            try:
                self._data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._data = {}

    def get(self, path: Path) -> dict[str, Any]:
        """Header fields of ``path``; raises ``DataError`` naming the file if it cannot be parsed."""
        st = path.stat()
        rel = os.path.relpath(path, self.folder)
        hit = self._data.get(rel)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        fields_ = read_dicom_header(path)
        if self.enabled:
            self._data[rel] = [st.st_size, st.st_mtime_ns, fields_]
            self._dirty = True
        return fields_

    def save(self) -> None:
        if self.enabled and self._dirty:
            try:
                atomic_write_json(self.path, self._data)
            except OSError as exc:  # a read-only cache must not stop loading
                log.warning("cannot write DICOM header cache %s: %s", self.path, exc)
            self._dirty = False


def read_dicom_header(path: Path) -> dict[str, Any]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a data error
        raise DataError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc
    view = str(getattr(ds, "ViewPosition", "") or "").strip().upper() or None
    return {"view": view, "rows": rows, "cols": cols,
            "photometric": str(getattr(ds, "PhotometricInterpretation", "") or "")}


def raster_size(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG/JPG from its header; ``DataError`` naming the file otherwise."""
    from benchmark.io.images import image_size

    return image_size(path)


def mask_nonzero_count(path: Path) -> tuple[tuple[int, int], int]:
    """``((h, w), number of non-zero pixels)`` of a mask image (any channel non-zero; alpha ignored)."""
    import cv2

    if not path.is_file():
        raise DataError(path, "mask file not found")
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DataError(path, "cannot decode mask image (expected PNG)")
    if m.ndim == 3:
        m = m[..., :3].any(axis=2)
    return (int(m.shape[0]), int(m.shape[1])), int(np.count_nonzero(m))


# ---------------------------------------------------------------------------------------------
# Run-length encodings
# ---------------------------------------------------------------------------------------------


def kaggle_rle_runs(text: str, n_pixels: int, *, source: str | os.PathLike, row: int) -> list[tuple[int, int]]:
    """SIIM's relative RLE (``gap length gap length ...``, gaps counted from the end of the previous
    run, column-major) → absolute ``(start, length)`` runs. ``-1`` (no finding) gives ``[]``."""
    text = str(text).strip()
    if text in ("-1", ""):
        return []
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise DataError(source, f"row {row}: EncodedPixels is not a list of integers: {text[:60]!r}") from None
    if len(values) % 2:
        raise DataError(source, f"row {row}: EncodedPixels has an odd number of values ({len(values)}); "
                                "expected gap/length pairs")
    runs = []
    pos = 0
    for gap, length in zip(values[0::2], values[1::2]):
        if gap < 0 or length <= 0:
            raise DataError(source, f"row {row}: EncodedPixels has a negative gap or a non-positive length "
                                    f"({gap} {length})")
        start = pos + gap
        pos = start + length
        runs.append((start, length))
    if pos > n_pixels:
        raise DataError(source, f"row {row}: EncodedPixels runs past the image end ({pos} > {n_pixels} pixels)")
    return runs


def runs_union(run_lists: Iterable[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """Union of several run lists (overlapping or touching runs merged)."""
    spans = sorted((s, s + n) for runs in run_lists for s, n in runs)
    out: list[list[int]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e - s) for s, e in out]


def runs_to_counts(runs: list[tuple[int, int]], n_pixels: int) -> list[int]:
    """Absolute sorted disjoint runs → COCO uncompressed counts (zeros first)."""
    counts: list[int] = []
    pos = 0
    for s, n in runs:
        counts.extend((s - pos, n))
        pos = s + n
    if pos < n_pixels:
        counts.append(n_pixels - pos)
    return counts or [n_pixels]


def encode_counts(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string (pycocotools ``rleToString``)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def decode_counts(s: str | bytes) -> np.ndarray:
    """Counts of a compressed COCO RLE string, vectorised (pycocotools ``rleFrString``)."""
    b = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), dtype=np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (b < 0).any() or (b > 63).any():
        raise ValueError("character outside the RLE alphabet")
    last = (b & 0x20) == 0
    if not last[-1]:
        raise ValueError("string ends inside a value")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(b.size) - starts[group]
    if k.max() > 11:
        raise ValueError("value too long")
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    neg = (b[ends] & 0x10) != 0
    x = x - np.where(neg, np.left_shift(1, 5 * (k[ends] + 1)), 0)
    cnts = x.copy()
    # pycocotools stores counts[i] - counts[i-2] for i > 2: undo with running sums per parity
    cnts[1::2] = np.cumsum(x[1::2])
    cnts[2::2] = np.cumsum(x[2::2])
    return cnts


def check_coco_rle(rle: Any, *, source: str | os.PathLike, where: str) -> tuple[int, int, int]:
    """Validate a COCO RLE dict; returns ``(h, w, area)``. Malformed → ``DataError`` naming the file."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DataError(source, f"{where}: expected an RLE {{'size': [h, w], 'counts': ...}}, got {type(rle).__name__}")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise DataError(source, f"{where}: RLE size must be [height, width], got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = rle["counts"]
    try:
        cnts = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else decode_counts(counts)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise DataError(source, f"{where}: RLE counts cannot be decoded ({exc})") from None
    if (cnts < 0).any():
        raise DataError(source, f"{where}: RLE has negative run lengths")
    total = int(cnts.sum())
    if total != h * w:
        raise DataError(source, f"{where}: RLE runs cover {total} pixels, expected {h}x{w}={h * w}")
    return h, w, int(cnts[1::2].sum())


def coco_rle(counts: Sequence[int], h: int, w: int) -> dict[str, Any]:
    """JSON-friendly compressed COCO RLE dict."""
    return {"size": [int(h), int(w)], "counts": encode_counts(counts)}


# ---------------------------------------------------------------------------------------------
# The loader base
# ---------------------------------------------------------------------------------------------

# strict: raise on the first missing/unreadable file instead of recording a skip.
# header_cache: cache DICOM header fields on disk (DicomHeaders).
# check_images: read each image's header (size; DICOM view). False = existence only, for quick counts:
#   image_size and DICOM views are then unknown and a DICOM view filter cannot apply.
COMMON_OPTIONS = {"strict": False, "header_cache": True, "check_images": True}


class Loader(Dataset):
    """Base of the in-tree loaders: options with defaults, skips, exclusions, counts, validation.

    - ``skip(path, reason)``: a sample that cannot be used because a file is missing or unreadable
      (``strict=True`` raises instead).
    - ``exclude(path, reason)``: a sample left out by a documented rule of the card (a view filter,
      AFLoc's "empty mask" rule). Counted in ``stats['excluded']``, reported by ``validate``.
    """

    OPTIONS: dict[str, Any] = {}
    scope: str | None = None  # pathology-name scope (benchmark.pathologies.SCOPED_ALIASES)

    def __init__(self, root: str | os.PathLike, split: str | None = None, **options: Any):
        allowed = {**COMMON_OPTIONS, **self.OPTIONS}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"{self.card.name}: unknown option(s) {unknown}; known: {sorted(allowed)}")
        super().__init__(root, split, **{**allowed, **options})
        self.stats: dict[str, Any] = {}
        self.excluded: list[dict[str, str]] = []
        self.split_source: dict[str, Any] | None = None
        self._prompts: PromptSet | None = None

    # -- options and bookkeeping ------------------------------------------------------------
    def opt(self, name: str) -> Any:
        return self.options[name]

    @property
    def prompts(self) -> PromptSet:
        if self._prompts is None:
            self._prompts = load_prompts(self.card.name)
        return self._prompts

    def prompt_findings(self) -> dict[str, str]:
        return self.prompts.findings

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        if self.opt("strict"):
            raise DataError(path, reason)
        super().skip(path, reason)

    def exclude(self, path: str | os.PathLike, reason: str) -> None:
        self.excluded.append({"path": str(path), "reason": reason})

    def canonical(self, name: str, source: str | os.PathLike, row: int | str | None = None) -> str:
        return canonical_name(name, scope=self.scope, source=source, row=row)

    def require(self, relpath: str, what: str = "file") -> Path:
        p = self.root / relpath
        if not p.exists():
            raise DataError(p, f"{what} not found; expected layout of {self.card.name}:\n"
                               + "\n".join("  " + ln for ln in self.card.layout.splitlines()))
        return p

    def required_files(self) -> list[str]:
        """Official files (relative to the root) the current split needs; ``validate`` checks them."""
        return []

    def use_split_list(self, split_list: SplitList | None) -> None:
        if split_list is None:
            return
        self.split_source = {"path": str(split_list.path), "overridden": split_list.overridden,
                             "sha256": file_sha256(split_list.path), "n_lines": len(split_list.entries),
                             "expected_sha256": split_list.spec.get("sha256")}

    def image_ok(self, path: Path) -> bool:
        """Record a skip when the image is missing (existence only; cheap)."""
        if not path.is_file():
            self.skip(path, "image file not found")
            return False
        return True

    def usable_image(self, path: Path) -> tuple[bool, tuple[int, int] | None]:
        """``(usable, size)``: not usable (a counted skip) when the file is missing or, with
        ``check_images``, unreadable; the size when ``check_images`` read the header, else None."""
        if not self.opt("check_images"):
            return self.image_ok(path), None
        size = self.raster_size_or_skip(path)
        return size is not None, size

    def raster_size_or_skip(self, path: Path) -> tuple[int, int] | None:
        if not self.image_ok(path):
            return None
        if not self.opt("check_images"):
            return None
        try:
            return raster_size(path)
        except DataError as exc:
            self.skip(path, f"unreadable image ({exc.expected})")
            return None

    # -- summaries -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Counts of the loaded samples plus the table-level counts of the split (``stats``)."""
        c = sample_counts(self.samples())
        for k, v in self.stats.items():
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                c.setdefault(k, int(v))
        c["skipped"] = len(self.skipped)
        c["excluded"] = len(self.excluded)
        return c

    def validate(self, expected: dict[str, int] | None = None,  # type: ignore[override]
                 card_checks: bool = True) -> dict[str, Any]:
        """Files, counts (``expected`` or the card's), one mask, prompts; see ``_validation``."""
        from benchmark.datasets.validation import validate_loader

        return validate_loader(self, expected, card_checks)


def sample_counts(samples: Sequence[Sample]) -> dict[str, int]:
    images = {s.image_id for s in samples}
    pos = [s for s in samples if s.label == 1]
    return {
        "samples": len(samples),
        "images": len(images),
        "positive_samples": len(pos),
        "negative_samples": sum(1 for s in samples if s.label == 0),
        "positive_images": len({s.image_id for s in pos}),
        "localized_samples": sum(1 for s in samples if s.has_localization),
        "boxes": sum(len(s.boxes) for s in samples),
        "patients": len({s.patient_id for s in samples if s.patient_id is not None}),
    }
