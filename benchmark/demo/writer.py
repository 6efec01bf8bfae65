"""What every dataset's demo writer shares: the job plan, the seeded generators, CSV formatting.

Every set is planned in the parent process (which images, which findings, which real report or
real box, which identifiers), rendered image by image in worker processes (``render``: draw,
encode, compute the ground truth in the dataset's own form) and then its tables are written by
the parent in plan order (``write``). Randomness comes only from generators seeded with ``(seed,
set code, split, index)``, so output is independent of the number of workers. The writers live
beside their loaders (``benchmark/datasets/<name>/demo.py``) and are listed in the manifest
(``demo_writer``); the layouts follow ``datasets/demo/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.demo.findings import Finding
from benchmark.demo.material import reports as real_reports

SPLIT_CODE = {"train": 1, "validate": 2, "val": 2, "test": 3}


@dataclass
class Job:
    dataset: str
    split: str
    index: int
    hw: tuple[int, int]
    findings: list[Finding]
    view: str = "PA"
    female: bool | None = None
    ids: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    out: Path
    seed: int
    n_train: int
    n_test: int


def job_rng(seed: int, code: int, job: Job) -> np.random.Generator:
    return np.random.default_rng([seed, code, SPLIT_CODE.get(job.split, 9), job.index])


def image_size(rng, h_lo: int, h_hi: int, aspect: tuple[float, float]) -> tuple[int, int]:
    from benchmark.demo.detmath import uniform

    h = int(rng.integers(h_lo, h_hi + 1)) // 2 * 2
    w = int(round(h * uniform(rng, *aspect))) // 2 * 2
    return h, w


def sex_age(rng) -> tuple[str, int]:
    from benchmark.demo.detmath import normal

    return ("F" if rng.random() < 0.45 else "M"), int(min(max(normal(rng, 55, 17), 18), 95))


def csv_text(rows: list[list[Any]]) -> str:
    """CSV text with minimal quoting (as pandas writes it), LF line ends."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if not float(v).is_integer() else f"{v:.1f}"
    return v


def provenance(job: Job, ph, **extra) -> dict:
    return {
        "split": job.split, "index": job.index, "view": job.view, "lung_shape": ph.shape_name,
        "findings": [{"kind": t.finding.kind, "side": t.finding.side, "zone": t.finding.zone,
                      "severity": t.finding.severity, "device": t.finding.device,
                      "boxes": [[int(v) for v in b] for b in t.boxes()]} for t in ph.truths],
        "missing": list(ph.missing), **extra,
    }


def unique_ints(rng, n: int, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    seen = set()
    while len(out) < n:
        v = int(rng.integers(lo, hi))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


class DemoSet:
    name = ""
    code = 0
    title = ""

    def plan(self, ctx: Context) -> list[Job]:
        raise NotImplementedError

    def render(self, job: Job, rng: np.random.Generator, root: Path) -> dict:
        raise NotImplementedError

    def write(self, ctx: Context, jobs: list[Job], results: list[dict]) -> dict:
        raise NotImplementedError

    def plan_rng(self, ctx: Context) -> np.random.Generator:
        return np.random.default_rng([ctx.seed, self.code, 7777])


def not_normal_findings(rng) -> list[Finding]:
    """Findings of an abnormal image without lung opacity (RSNA 'No Lung Opacity / Not Normal')."""
    pool = [Finding("effusion", severity="small"), Finding("cardiomegaly"), Finding("device", device="cvc"),
            Finding("device", device="et_tube"), Finding("nodule"), Finding("hyperinflation"),
            Finding("elevated_diaphragm"), Finding("calcification"), Finding("device", device="pacemaker")]
    k = 1 + int(rng.random() < 0.3)
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[int(i)] for i in idx]


def report_by_uid(uid: str):
    global _UID_INDEX
    if _UID_INDEX is None:
        _UID_INDEX = {r.uid: r for r in real_reports()}
    return _UID_INDEX[uid]


_UID_INDEX: dict | None = None


def split_counts(jobs: list[Job]) -> dict:
    out: dict[str, int] = {}
    for j in jobs:
        out[j.split] = out.get(j.split, 0) + 1
    return out
