"""The dataset-loader contract, dataset cards, data roots and data errors.

A loader reads a dataset's official files as distributed and yields ``Sample`` records.
It never resizes and never drops a sample silently: anything it cannot use is appended
to ``self.skipped`` with the file and the reason, and the runner reports the counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.adapter import Query
from benchmark.sample import Sample

DEMO_SCHEME = "demo://"
# The official AFLoc evaluation's dataset switches (``localization.py -ds``) that change how a
# dataset is scored; GENERIC is every other dataset (iou, cnr and dice bootstraps, like RSNA).
AFLOC_MODES = ("GENERIC", "MS_CXR", "MS_CXR_CLS", "RSNA_GROUNDING", "COVID_RURAL", "CHEXLOCALIZE", "SICAPV2_GROUNDING")
MODALITIES = ("chest_xray", "pathology")
DEFAULT_DATA_ROOT = "~/data/{dataset}"


class DataError(Exception):
    """Bad or missing data. The message names the file and what was expected."""

    def __init__(self, path: str | os.PathLike | None, expected: str):
        self.path = None if path is None else str(path)
        self.expected = expected
        super().__init__(f"{self.path}: {expected}" if self.path else expected)

    def __reduce__(self):  # travels between processes (run --jobs) as itself
        return type(self), (self.path, self.expected)


@dataclass
class DatasetCard:
    """What a user needs to know to get the dataset and what the harness expects of it."""

    name: str
    version: str = "1"
    title: str = ""
    source_url: str = ""
    licence: str = ""
    access: str = ""  # "open", "credentialed (PhysioNet)", "Kaggle competition rules", ...
    layout: str = ""  # expected files under the root, one per line
    expected_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> {what: n}
    categories: list[str] = field(default_factory=list)
    prompt_sets: list[str] = field(default_factory=lambda: ["simple"])
    views: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: ["grounding"])  # grounding, classification
    resampling_unit: str = "image"  # image or patient
    default_split: str = "test"
    # How the official evaluation treats this dataset (said here, never guessed from its name):
    afloc_mode: str = "GENERIC"  # the official AFLoc `localization.py -ds` switch its evaluation follows
    modality: str = "chest_xray"  # chest_xray or pathology
    prompt_family: str = "cxr"  # zero-shot ensembles: the chest X-ray table or a pathology family (prompts.py)
    official_spelling: dict[str, str] = field(default_factory=dict)  # canonical name -> the official code's word
    # zero-shot classification as the official code scores it: ``mode`` multilabel (each class against
    # its negative prompt, per-class AUROC) or softmax (one class per image: argmax over the classes'
    # logits, balanced accuracy); also ``metric``, ``official_dataset``, ``class_order``
    classification: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # loader-specific facts (published split ids, ...)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def classification_mode(self) -> str:
        """``multilabel`` (the default) or ``softmax`` (single-label: one class per image)."""
        return str(self.classification.get("mode", "multilabel"))


class Dataset:
    """Base class of every loader.

    Subclasses set ``card`` and implement ``load_samples``. Construction is cheap; files
    are read on the first call to ``samples()``.
    """

    card: DatasetCard = DatasetCard(name="")

    def __init__(self, root: str | os.PathLike, split: str | None = None, **options: Any):
        self.root = Path(os.path.expanduser(str(root)))
        self.split = split or self.card.default_split
        self.options = options
        self.skipped: list[dict[str, str]] = []
        self._samples: list[Sample] | None = None

    def load_samples(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        if self._samples is None:
            if not self.root.exists():
                raise DataError(self.root, self.missing_root_message())
            samples = self._checked(self.load_samples())
            for s in samples:  # what the protocols need to know of the dataset, from its card
                meta = s.meta if s.meta is not None else {}
                meta.setdefault("afloc_dataset", self.card.afloc_mode)
                meta.setdefault("modality", self.card.modality)
                s.meta = meta
            self._samples = samples
        return self._samples

    def _checked(self, samples: list[Sample]) -> list[Sample]:
        """Samples whose ground truth can be scored; each other one is a counted skip naming the sample
        and why: a repeated sample id, a box with a non-finite or non-positive size, a box listed twice,
        or a box that lies wholly outside its image."""
        import math

        out, seen = [], {}
        for s in samples:
            where = f"{s.image_path} (sample {s.sample_id})"
            if s.sample_id in seen:
                self.skip(where, f"duplicate sample id: the same id as an earlier sample ({seen[s.sample_id]}); "
                                 "the first is kept")
                continue
            bad = None
            for b in s.boxes:
                if len(b) != 4 or not all(math.isfinite(float(v)) for v in b):
                    bad = f"box {list(b)} has a non-finite coordinate"
                elif float(b[2]) <= 0 or float(b[3]) <= 0:
                    bad = f"box {list(b)} has no area (width and height must be positive)"
                elif s.image_size is not None:
                    h, w = s.image_size
                    if b[0] >= w or b[1] >= h or b[0] + b[2] <= 0 or b[1] + b[3] <= 0:
                        bad = f"box {list(b)} lies wholly outside the {h}x{w} image"
                if bad:
                    break
            if not bad and len({tuple(map(float, b)) for b in s.boxes}) != len(s.boxes):
                bad = "a box is listed twice (a repeated table row)"
            if bad:
                self.skip(where, bad)
                continue
            seen[s.sample_id] = s.image_path
            out.append(s)
        return out

    def prompt_findings(self) -> dict[str, str]:
        """Prompt set → the canonical finding its prompt asks about, where that is not the sample's
        category (``findings:`` of the dataset's prompt file)."""
        return {}

    def query(self, sample: Sample, prompt_set: str = "simple") -> Query:
        """The grounding query of ``sample``: its prompt of ``prompt_set`` and the finding asked about."""
        return Query(sample.prompt(prompt_set), self.prompt_findings().get(prompt_set, sample.category))

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        """Record a sample that cannot be used (never drop one silently)."""
        self.skipped.append({"path": str(path), "reason": reason})

    def missing_root_message(self) -> str:
        c = self.card
        msg = f"dataset root for {c.name!r} does not exist"
        if c.source_url:
            msg += f"; download it from {c.source_url}"
        if c.layout:
            msg += f" (`afloc-bench validate --datasets {c.name}` shows the expected layout)"
        return msg

    def validate(self) -> dict[str, Any]:
        """Default validation: the files load and counts match the card. Loaders may extend it."""
        samples = self.samples()
        report: dict[str, Any] = {"dataset": self.card.name, "split": self.split, "n_samples": len(samples),
                                  "n_skipped": len(self.skipped), "skipped": list(self.skipped), "problems": []}
        return report


def demo_root() -> Path:
    """Folder of the generated demo data (``AFLOC_BENCH_DEMO`` or the cache folder)."""
    env = os.environ.get("AFLOC_BENCH_DEMO")
    if env:
        return Path(env).expanduser()
    return cache_home() / "demo" / "seed0"


def cache_home() -> Path:
    env = os.environ.get("AFLOC_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "afloc-bench"


def resolve_root(name: str, template: str | None = None) -> Path:
    """Root folder of dataset ``name``: registered ``root`` option, else the template."""
    from benchmark.registry import datasets

    entry = datasets.entry(name)
    root = entry.get("root")
    if root and str(root).startswith(DEMO_SCHEME):
        return demo_root() / str(root)[len(DEMO_SCHEME):]
    if template is None:
        template = os.environ.get("AFLOC_BENCH_DATA_ROOT", DEFAULT_DATA_ROOT)
    if root and "{dataset}" not in template and template == DEFAULT_DATA_ROOT:
        return Path(os.path.expanduser(str(root)))
    try:  # entries that read another entry's files (cxr_lt_t3 reads cxr_lt) name it as ``data_name``
        return Path(os.path.expanduser(template.format(dataset=entry.get("data_name") or name)))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--data-root {template!r}: expected a folder, or a template whose only field is "
                         f"{{dataset}} (e.g. '/data/{{dataset}}'); {type(exc).__name__}: {exc}") from None


def build_dataset(name: str, data_root: str | None = None, **overrides: Any) -> Dataset:
    """Instantiate registered dataset ``name`` at its resolved root."""
    from benchmark.registry import datasets

    entry = datasets.entry(name)
    opts = {**entry.options, **overrides}
    ds = entry.load()(root=resolve_root(name, data_root), **opts)
    ds.registry_name = name  # type: ignore[attr-defined]
    return ds


def is_demo(name: str) -> bool:
    from benchmark.registry import datasets

    return str(datasets.entry(name).get("root", "")).startswith(DEMO_SCHEME)


def demo_set(name: str) -> str:
    """The generated set (folder of the demo collection) that registered dataset ``name`` reads."""
    from benchmark.registry import datasets

    root = str(datasets.entry(name).get("root", ""))
    if not root.startswith(DEMO_SCHEME):
        raise ValueError(f"dataset {name!r} is not a demo dataset (its root is {root!r})")
    return root[len(DEMO_SCHEME):]
