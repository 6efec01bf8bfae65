"""One radiograph: anatomy + findings → image and output-resolution ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.demo import anatomy
from benchmark.demo import findings as fnd
from benchmark.demo.material import lung_shapes


@dataclass
class Truth:
    """Ground truth of one finding at the output size: one bool mask per lesion instance."""

    finding: fnd.Finding
    instances: list[np.ndarray] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray | None:
        return np.logical_or.reduce(self.instances) if self.instances else None

    def boxes(self) -> list[list[int]]:
        """``[x, y, w, h]`` (pixels, end-exclusive extent) of each instance."""
        return [mask_box(m) for m in self.instances]


@dataclass
class Phantom:
    image: np.ndarray  # float32 (H, W) in [0, 1], bright = dense
    truths: list[Truth]
    view: str
    female: bool
    lungs: np.ndarray  # bool (H, W), visible lung fields at the output size
    lung_sides: dict  # side -> bool (H, W)
    shape_name: str
    silhouette: np.ndarray | None = None  # cardiomediastinal silhouette (H, W), when asked for
    missing: list = field(default_factory=list)  # localized findings that could not be placed

    def truth(self, kind: str) -> list[np.ndarray]:
        """All instances of findings of ``kind``."""
        return [m for t in self.truths if t.finding.kind == kind for m in t.instances]


def mask_box(m: np.ndarray) -> list[int]:
    """``[x, y, w, h]`` of the pixels of ``m`` (w, h counted in pixels, so x + w is end-exclusive)."""
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    x0, y0 = int(cols[0]), int(rows[0])
    return [x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]


def make(rng: np.random.Generator, out_hw: tuple[int, int], findings: list[fnd.Finding], *,
         view: str = "PA", female: bool | None = None, with_lungs: bool = False, attempts: int = 4) -> Phantom:
    """Draw one phantom with ``findings``. A localized finding that cannot be placed on one
    anatomy (a real box far outside these lungs, a lesion clipped away) is retried on
    another; after ``attempts`` it is listed in ``Phantom.missing``."""
    ph = None
    for _ in range(max(1, attempts)):
        ph = _make_once(rng, out_hw, findings, view=view, female=female, with_lungs=with_lungs)
        if not ph.missing:
            return ph
    return ph  # type: ignore[return-value]


def _make_once(rng, out_hw, findings, *, view, female, with_lungs) -> Phantom:
    # independent streams: the anatomy (and its noise) does not depend on the findings
    ra, rf = (np.random.default_rng(int(s)) for s in rng.integers(0, 2 ** 63, size=2))
    shapes = lung_shapes()
    shape = shapes[int(ra.integers(len(shapes)))]
    if female is None:
        female = bool(ra.random() < 0.45)
    fs = fnd.resolve_sides(list(findings), rf)
    mods = fnd.modifiers(fs, rf)
    an = anatomy.build(ra, out_hw, shape, view=view, female=female, mods=mods)
    rendered = fnd.render(an, fs, rf)
    img = anatomy.finish(anatomy.compose(an), an)
    truths = [Truth(r.finding, [fnd.to_output(m, out_hw) for m in r.instances]) for r in rendered]
    truths = [Truth(t.finding, [m for m in t.instances if m.any()]) for t in truths]
    sides = {s: fnd.to_output(an.lung[s].astype(np.float32), out_hw) for s in fnd.SIDES} if with_lungs else {}
    lungs = (sides[fnd.RIGHT] | sides[fnd.LEFT]) if with_lungs else np.zeros(0, bool)
    sil = None
    if with_lungs:
        m = an.mediastinum.copy()
        m[: max(0, an.lung_box[1])] = False
        sil = fnd.to_output(m.astype(np.float32), out_hw)
    missing = [t.finding.kind for t in truths if t.finding.kind in fnd.LOCALIZED and not t.instances]
    return Phantom(image=img, truths=truths, view=view, female=female, lungs=lungs, lung_sides=sides,
                   shape_name=shape.name, silhouette=sil, missing=missing)
