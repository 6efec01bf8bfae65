"""Findings: what a report (or a dataset's table) says, and how each is drawn on a phantom.

A ``Finding`` names a kind, a patient side, a zone and a severity, and optionally a real
box of the canonical frame (``material.boxes``) or a real SIIM mask index. ``modifiers``
turns the findings that change anatomy (heart size, inspiration) into ``anatomy.Modifiers``
before the phantom is built; ``render`` then adds each finding's density or lucency and
returns its ground-truth masks (one per lesion instance) at work resolution.

Contrast is deliberately strong (a small model trained on a few hundred pairs must see it),
shapes are not: opacities are patchy and ill-defined, effusions are basal with a meniscus,
a pneumothorax is a peripheral lucency without lung markings behind a pleural line.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from benchmark.demo import detmath as dm
from benchmark.demo import draw
from benchmark.demo.anatomy import LEFT, RIGHT, Anatomy, Modifiers, blur, grid, smooth_field

SIDES = (RIGHT, LEFT)
# every kind the renderer knows
KINDS = ("opacity", "consolidation", "pneumonia", "infiltrate", "effusion", "pneumothorax", "cardiomegaly",
         "enlarged_cm", "atelectasis", "edema", "nodule", "mass", "calcification", "fibrosis", "emphysema",
         "fracture", "device", "covid", "hyperinflation", "hypoinflation", "elevated_diaphragm")
# kinds whose ground truth is a lesion region (the others only change the anatomy)
LOCALIZED = set(KINDS) - {"hyperinflation", "hypoinflation", "elevated_diaphragm"}
SEVERITY_SCALE = {"small": 0.7, "moderate": 1.0, "large": 1.35}


@dataclass
class Finding:
    kind: str
    side: str | None = None  # "right", "left", "bilateral" (patient sides); None = any
    zone: str | None = None  # upper, mid, lower, base, apex, hilar, retrocardiac, peripheral, diffuse, middle, lingula
    severity: str = "moderate"  # small, moderate, large
    box: tuple[float, float, float, float] | None = None  # canonical [x0, y0, x1, y1] of a real box
    siim: int | None = None  # index of a real SIIM pneumothorax mask
    device: str | None = None  # et_tube, ng_tube, cvc, pacemaker, sternotomy, ecg
    text: str = ""  # the report phrase it comes from, if any

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")


@dataclass
class Rendered:
    """Ground truth of one finding: ``instances`` are work-resolution float masks (0..1), one per lesion."""

    finding: Finding
    instances: list[np.ndarray] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray | None:
        if not self.instances:
            return None
        return np.maximum.reduce(self.instances)


def modifiers(findings: list[Finding], rng: np.random.Generator) -> Modifiers:
    """Anatomical changes implied by the findings (drawn before the phantom)."""
    m = Modifiers(lung_height={RIGHT: 1.0, LEFT: 1.0})
    U = functools.partial(dm.uniform, rng)
    for f in findings:
        sev = SEVERITY_SCALE.get(f.severity, 1.0)
        if f.kind == "cardiomegaly":
            m.heart_scale = max(m.heart_scale, 1.0 + U(0.22, 0.32) * sev)
        elif f.kind == "enlarged_cm":
            m.mediastinum_scale = max(m.mediastinum_scale, 1.0 + U(0.6, 0.9) * sev)
            m.heart_scale = max(m.heart_scale, 1.0 + U(0.05, 0.12))
        elif f.kind in ("emphysema", "hyperinflation"):
            for s in SIDES:
                m.lung_height[s] = max(m.lung_height[s], 1.0 + U(0.06, 0.10))
            m.lucency = max(m.lucency, 1.0 + U(0.12, 0.2))
            m.marking_gain = min(m.marking_gain, 0.7)
        elif f.kind == "hypoinflation":
            for s in SIDES:
                m.lung_height[s] = min(m.lung_height[s], U(0.84, 0.90))
            m.marking_gain = max(m.marking_gain, 1.15)
        elif f.kind == "elevated_diaphragm":
            for s in _sides(f, rng):
                m.lung_height[s] = min(m.lung_height[s], U(0.82, 0.90))
        elif f.kind == "atelectasis" and f.severity == "large":
            for s in _sides(f, rng):
                m.lung_height[s] = min(m.lung_height[s], U(0.90, 0.95))  # volume loss
        elif f.kind == "edema":
            m.marking_gain = max(m.marking_gain, 1.4)
    return m


def resolve_sides(findings: list[Finding], rng: np.random.Generator) -> list[Finding]:
    """Fix every unspecified side once, so that drawing and ground truth agree."""
    out = []
    for f in findings:
        if f.side is None and f.box is not None and f.kind not in ("cardiomegaly", "enlarged_cm", "device"):
            f = replace(f, side=RIGHT if (f.box[0] + f.box[2]) / 2 < 0.5 else LEFT)
        if f.side is None and f.kind not in ("cardiomegaly", "enlarged_cm", "device", "edema", "covid",
                                             "hyperinflation", "hypoinflation", "emphysema"):
            f = replace(f, side=SIDES[int(rng.integers(2))])
        out.append(f)
    return out


def render(an: Anatomy, findings: list[Finding], rng: np.random.Generator) -> list[Rendered]:
    """Draw every finding onto ``an`` (its density, lucency and marking layers); return the ground truth.

    Findings draw from their own generator ``rng``, so the anatomy and its noise are the same
    with and without them (the basis of the tests comparing a finding with its absence)."""
    an.frng = rng  # type: ignore[attr-defined]
    out = []
    for f in findings:
        fn = _RENDERERS.get(f.kind)
        r = Rendered(f)
        if fn is not None:
            r.instances = [m for m in fn(an, f) if m is not None and float(m.max()) > 0.5]
        out.append(r)
    return out


# --------------------------------------------------------------------------- geometry helpers
def _sides(f: Finding, rng: np.random.Generator) -> tuple[str, ...]:
    if f.side == "bilateral":
        return SIDES
    if f.side in SIDES:
        return (f.side,)
    return (SIDES[int(rng.integers(2))],)


def _grid(an: Anatomy):
    return grid(*an.hw)


def zone_mask(an: Anatomy, side: str, zone: str | None) -> np.ndarray:
    """The part of the visible ``side`` lung in ``zone`` (upper, mid, lower, base, apex, hilar ...)."""
    lung = an.lung[side]
    if not lung.any():
        return lung
    x0, y0, x1, y1 = an.side_box(side)
    yy, xx = _grid(an)
    ry = (yy - y0) / max(1, y1 - y0)
    # lateral fraction: 0 at the medial edge, 1 at the chest wall
    rx = (xx - x0) / max(1, x1 - x0)
    lat = 1 - rx if side == RIGHT else rx
    z = zone or "any"
    sel = {
        "upper": ry < 0.42, "apex": ry < 0.22, "mid": (ry > 0.30) & (ry < 0.68),
        "lower": ry > 0.55, "base": ry > 0.70, "hilar": (ry > 0.25) & (ry < 0.65) & (lat < 0.55),
        "retrocardiac": (ry > 0.55) & (lat < 0.5), "peripheral": lat > 0.55,
        "middle": (ry > 0.45) & (ry < 0.85) & (lat < 0.7), "lingula": (ry > 0.45) & (ry < 0.85) & (lat < 0.75),
    }.get(z)
    if z == "retrocardiac" and side == LEFT:
        full = an.lung_full[LEFT]  # type: ignore[attr-defined]
        m = full & sel
        return m if m.any() else lung
    if sel is None:
        return lung
    m = lung & sel
    return m if m.sum() > 20 else lung


def _pick(mask: np.ndarray, rng: np.random.Generator, erode: int = 0) -> tuple[float, float]:
    m = mask
    if erode > 0:
        e = cv2.erode(mask.astype(np.uint8), np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)).astype(bool)
        if e.sum() > 10:
            m = e
    ys, xs = np.nonzero(m)
    i = int(rng.integers(len(xs)))
    return float(xs[i]), float(ys[i])


def _lung_width(an: Anatomy) -> float:
    x0, y0, x1, y1 = an.lung_box
    return float(x1 - x0)


def _box_region(an: Anatomy, f: Finding, rng: np.random.Generator, *, rel_w: float, rel_h: float,
                erode_frac: float = 0.0) -> tuple[str, float, float, float, float]:
    """``(side, cx, cy, half_w, half_h)`` of a lesion: from the real canonical box when given,
    else a random centre in the finding's zone and a size relative to the lung-pair width."""
    lw = _lung_width(an)
    if f.box is not None:
        b = an.from_canonical(f.box)
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        side = RIGHT if cx < an.midline else LEFT
        hw_, hh = max(2.0, (b[2] - b[0]) / 2), max(2.0, (b[3] - b[1]) / 2)
        lung = an.lung[side]
        if lung.any():
            ix, iy = int(min(max(cx, 0), an.hw[1] - 1)), int(min(max(cy, 0), an.hw[0] - 1))
            if not lung[iy, ix]:  # a real box centred outside this phantom's lung: nearest lung point
                ys, xs = np.nonzero(lung)
                dx, dy = xs - cx, ys - cy
                k = int(np.argmin(dx * dx + dy * dy))
                cx, cy = float(xs[k]), float(ys[k])
        return side, cx, cy, hw_, hh
    side = _sides(f, rng)[0]
    real = table_box(f.kind, side, f.zone, f.severity, rng)
    if real is not None:  # a real box of this kind, side and zone
        return _box_region(an, replace(f, box=real, side=side), rng, rel_w=rel_w, rel_h=rel_h, erode_frac=erode_frac)
    region = zone_mask(an, side, f.zone)
    cx, cy = _pick(region, rng, erode=int(erode_frac * lw))
    sev = SEVERITY_SCALE.get(f.severity, 1.0)
    return side, cx, cy, 0.5 * rel_w * lw * sev, 0.5 * rel_h * lw * sev


# the real table whose boxes give positions and sizes of a finding kind (canonical frame)
TABLE_FOR_KIND = {"opacity": "rsna:Lung Opacity", "consolidation": "rsna:Lung Opacity",
                  "pneumonia": "rsna:Lung Opacity", "infiltrate": "nih:Infiltrate", "atelectasis": "nih:Atelectasis",
                  "nodule": "nih:Nodule", "mass": "nih:Mass", "fibrosis": "vindr:Pulmonary fibrosis"}
TABLE_SEVERITY = {"small": 0.75, "moderate": 1.0, "large": 1.25}


def table_box(kind: str, side: str, zone: str | None, severity: str,
              rng: np.random.Generator) -> tuple[float, float, float, float] | None:
    """A real box of ``kind`` whose centre lies in ``side`` and ``zone`` of the canonical lungs,
    scaled about its centre by the severity; ``None`` when the table has too few such boxes."""
    from benchmark.demo.material import boxes, canonical_lung_frame

    key = TABLE_FOR_KIND.get(kind)
    if key is None:
        return None
    b = boxes()[key]
    c = canonical_lung_frame()
    u = ((b[:, 0] + b[:, 2]) / 2 - c[0]) / (c[2] - c[0])
    v = ((b[:, 1] + b[:, 3]) / 2 - c[1]) / (c[3] - c[1])
    ok = u < 0.5 if side == RIGHT else u >= 0.5
    lat = np.clip((0.5 - u) / 0.5 if side == RIGHT else (u - 0.5) / 0.5, 0, 1)
    zones = {"upper": v < 0.42, "apex": v < 0.25, "mid": (v > 0.30) & (v < 0.68), "lower": v > 0.55,
             "base": v > 0.68, "hilar": (v > 0.25) & (v < 0.65) & (lat < 0.55),
             "retrocardiac": (v > 0.55) & (lat < 0.5),
             "peripheral": lat > 0.55, "middle": (v > 0.45) & (v < 0.85) & (lat < 0.7),
             "lingula": (v > 0.45) & (v < 0.85) & (lat < 0.75)}
    if zone in zones:
        ok = ok & zones[zone]
    idx = np.nonzero(ok & (v > -0.05) & (v < 1.05))[0]
    if len(idx) < 5:
        return None
    x0, y0, x1, y1 = b[int(idx[int(rng.integers(len(idx)))])]
    s = TABLE_SEVERITY.get(severity, 1.0)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * s, (y1 - y0) / 2 * s
    return (float(cx - hw), float(cy - hh), float(cx + hw), float(cy + hh))


def _window(hw: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice]:
    """Rows and columns of the image within ``rx``, ``ry`` of a centre (possibly empty)."""
    h, w = hw
    y0, y1 = min(h, max(0, int(cy - ry) - 1)), min(h, max(0, int(cy + ry) + 2))
    x0, x1 = min(w, max(0, int(cx - rx) - 1)), min(w, max(0, int(cx + rx) + 2))
    return slice(y0, y1), slice(x0, x1)


def _content(m: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of the non-zero pixels of ``m``."""
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _textured(an: Anatomy, m: np.ndarray, rng, sigma: float, lo: float, amp: float) -> np.ndarray:
    """``m * (lo + amp * field)`` with a smooth random field drawn only where ``m`` is non-zero."""
    ys, xs = _content(m)
    out = np.zeros_like(m)
    if ys.stop > ys.start:
        tex = lo + amp * smooth_field(rng, (ys.stop - ys.start, xs.stop - xs.start), sigma)
        out[ys, xs] = m[ys, xs] * tex
    return out


def _patch(an: Anatomy, cx, cy, ax, ay, rng, roughness=0.45, angle=0.0) -> np.ndarray:
    """An irregular, ill-defined blob: an ellipse perturbed by a smooth random field (float 0..1).
    Only the window the blob can reach (radius ``1 + 0.5 roughness * 4.5`` in units of its axes,
    the field being a unit-std Gaussian one) is computed."""
    out = np.zeros(an.hw, np.float32)
    ax, ay = max(float(ax), 1.0), max(float(ay), 1.0)
    reach = (1.0 + 0.5 * roughness * 4.5) * max(ax, ay) + 2
    ys, xs = _window(an.hw, cx, cy, reach, reach)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return out
    yy = np.arange(ys.start, ys.stop, dtype=np.float64)[:, None] - cy
    xx = np.arange(xs.start, xs.stop, dtype=np.float64)[None, :] - cx
    c, s = dm.cos_s(angle), dm.sin_s(angle)
    u = (xx * c + yy * s) / ax
    v = (-xx * s + yy * c) / ay
    r = np.sqrt(u * u + v * v).astype(np.float32)
    field_ = smooth_field(rng, r.shape, max(2.0, 0.35 * min(ax, ay)))
    core = 1.0 - r + np.float32(roughness * 0.5) * field_
    out[ys, xs] = np.clip(core * 3.0, 0, 1)
    return out


def _clip_lungs(an: Anatomy, m: np.ndarray, side: str | None = None, full: bool = False) -> np.ndarray:
    return m * an.lungs_blur(1.0, side if side in SIDES else None, full)


def _gt(m: np.ndarray, thr: float = 0.5) -> np.ndarray:
    return (m >= thr).astype(np.float32)


# --------------------------------------------------------------------------- renderers
def _airspace(an: Anatomy, f: Finding, *, strength: float, rel: tuple[float, float], roughness: float,
              count: int = 1):
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    sides = _sides(f, rng) if f.box is None else (None,)
    for side in sides:
        for _ in range(count):
            g = replace(f, side=side) if side else f
            sd, cx, cy, ax, ay = _box_region(an, g, rng, rel_w=rel[0] * dm.uniform(rng, 0.8, 1.2),
                                             rel_h=rel[1] * dm.uniform(rng, 0.8, 1.2))
            blob = _patch(an, cx, cy, ax, ay, rng, roughness=roughness, angle=dm.uniform(rng, -0.4, 0.4))
            blob = _clip_lungs(an, blob, sd)
            gt = _gt(blob)
            if gt.sum() < 4:
                continue
            dens = _textured(an, blur(blob, 0.012 * an.hw[1]), rng, 0.01 * an.hw[1], 0.75, 0.25)
            dens *= np.float32(strength * dm.uniform(rng, 0.85, 1.15))
            an.density += dens
            out.append(gt)
    return out


def _opacity(an, f):
    return _airspace(an, f, strength=0.30, rel=(0.22, 0.26), roughness=0.6)


def _consolidation(an, f):
    return _airspace(an, f, strength=0.36, rel=(0.22, 0.26), roughness=0.45)


def _pneumonia(an, f):
    return _airspace(an, f, strength=0.33, rel=(0.24, 0.30), roughness=0.55)


def _infiltrate(an, f):
    return _airspace(an, f, strength=0.24, rel=(0.22, 0.28), roughness=0.8)


def _covid(an: Anatomy, f: Finding):
    """Bilateral, peripheral, lower-zone ground glass (several hazy patches per lung)."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    sides = SIDES if f.side in (None, "bilateral") else (f.side,)
    lw = _lung_width(an)
    sev = SEVERITY_SCALE.get(f.severity, 1.0)
    for side in sides:
        region = zone_mask(an, side, "peripheral") & zone_mask(an, side, "lower" if rng.random() < 0.7 else "mid")
        if region.sum() < 20:
            region = zone_mask(an, side, "peripheral")
        acc = np.zeros(an.hw, np.float32)
        for _ in range(int(rng.integers(2, 4))):
            cx, cy = _pick(region, rng)
            acc = np.maximum(acc, _patch(an, cx, cy, 0.09 * lw * sev * dm.uniform(rng, 0.8, 1.3),
                                         0.13 * lw * sev * dm.uniform(rng, 0.8, 1.3), rng, roughness=0.7))
        acc = _clip_lungs(an, acc, side)
        gt = _gt(acc)
        if gt.sum() < 4:
            continue
        an.density += _textured(an, blur(acc, 0.015 * an.hw[1]), rng, 0.01 * an.hw[1], 0.8, 0.2) * 0.27
        out.append(gt)
    return out


def _effusion(an: Anatomy, f: Finding):
    """Basal fluid with a meniscus rising laterally; blunts the costophrenic angle."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    yy, xx = _grid(an)
    frac = {"small": (0.12, 0.2), "moderate": (0.22, 0.36), "large": (0.40, 0.6)}.get(f.severity, (0.2, 0.3))
    for side in _sides(f, rng):
        full = an.lung[side]  # visible lung: fluid behind the heart would only brighten the heart
        if not full.any():
            continue
        ys, xs = np.nonzero(full)
        top, bottom = int(ys.min()), int(ys.max())
        x0, x1 = int(xs.min()), int(xs.max())
        height = bottom - top
        if f.box is not None:  # the real box's top gives the fluid level
            b = an.from_canonical(f.box)
            fl = min(max((bottom - b[1]) / max(height, 1), 0.12), 0.45)
        else:
            fl = dm.uniform(rng, *frac)
        lat = (x0 - xx) / max(1, x1 - x0) + 1 if side == RIGHT else (xx - x0) / max(1, x1 - x0)
        lat = np.clip(lat, 0, 1)
        level = bottom - fl * height - dm.uniform(rng, 0.12, 0.20) * height * (lat * np.sqrt(lat))  # meniscus
        fluid = (full & (yy > level)).astype(np.float32)
        ramp = np.clip((yy - level) / (0.05 * height), 0, 1)
        grade = 0.75 + 0.25 * np.clip((yy - level) / (0.5 * height), 0, 1)  # denser where deeper
        dens = blur(fluid * ramp * grade, 1.5) * dm.uniform(rng, 0.30, 0.38)
        an.density += dens
        an.marking_keep *= 1 - 0.8 * blur(fluid, 2.0)
        gt = _gt(fluid)
        if gt.sum() >= 4:
            out.append(gt)
    return out


def _pneumothorax(an: Anatomy, f: Finding):
    """Peripheral lucency without lung markings, bounded by a thin visceral pleural line."""
    from benchmark.demo.material import siim_mask

    rng = an.frng  # type: ignore[attr-defined]
    out = []
    h, w = an.hw
    for side in _sides(f, rng):
        full = an.lung[side]  # visible lung: air collects against the chest wall, not behind the heart
        if not full.any():
            continue
        region = None
        if f.siim is not None:
            m = siim_mask(f.siim)  # canonical frame 256²
            b = an.from_canonical((0.0, 0.0, 1.0, 1.0))
            warped = dm.place(m, (h, w), (b[2] - b[0]) / 256.0, b[0], (b[3] - b[1]) / 256.0, b[1])
            cand = (warped > 0.5) & (an.lung[RIGHT] | an.lung[LEFT])
            if cand.sum() > 0.01 * full.sum():
                region = cand
                side = RIGHT if np.nonzero(cand)[1].mean() < an.midline else LEFT
                full = an.lung[side]
                region &= full
        if region is None:
            sev = SEVERITY_SCALE.get(f.severity, 1.0)
            x0, y0, x1, y1 = an.side_box(side)
            yy, xx = _grid(an)
            ry = (yy - y0) / max(1, y1 - y0)
            rx = (xx - x0) / max(1, x1 - x0)
            lat = 1 - rx if side == RIGHT else rx
            # distance from the parietal pleura: the apical and lateral lung edge only
            edge = full & ~cv2.erode(full.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            pleura = edge & ((lat > 0.55) | (ry < 0.18))
            if not pleura.any():
                continue
            dist = dm.distance(~pleura)
            depth = (0.10 * sev * (x1 - x0)) * (1 + 0.25 * smooth_field(rng, an.hw, 0.1 * w))
            # deepest at the apex, thinning towards the base (upright patient)
            taper = np.clip(1.15 - ry * (1.1 if f.zone != "base" else -0.2), 0.15, 1)
            region = full & (dist < depth * taper)
        if region.sum() < 10:
            continue
        rf = blur(region.astype(np.float32), 0.8)
        an.marking_keep *= 1 - rf
        an.lucency += rf * dm.uniform(rng, 0.08, 0.11)
        # pleural line: the edge of the collapsed lung, inside the thorax
        k = np.ones((3, 3), np.uint8)
        edge = cv2.dilate(region.astype(np.uint8), k, iterations=2).astype(bool) & ~region & full
        an.density += blur(edge.astype(np.float32), 0.6) * dm.uniform(rng, 0.10, 0.14)
        # the collapsed lung is a little denser
        rim = cv2.dilate(region.astype(np.uint8), k, iterations=8).astype(bool) & ~region & full
        an.density += blur(rim.astype(np.float32), 3.0) * 0.03
        out.append(region.astype(np.float32))
    return out


def _cardiomegaly(an: Anatomy, f: Finding):
    return [an.heart.astype(np.float32)]


def _enlarged_cm(an: Anatomy, f: Finding):
    m = an.mediastinum.copy()
    x0, y0, x1, y1 = an.lung_box
    m[: max(0, y0 - int(0.02 * (y1 - y0)))] = False  # the silhouette starts at the lung apices
    return [m.astype(np.float32)]


def _atelectasis(an: Anatomy, f: Finding):
    """Plate-like bands (linear) or a wedge towards the hilum (lobar, large)."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    lw = _lung_width(an)
    h, w = an.hw
    sides = _sides(f, rng) if f.box is None else (None,)
    for side in sides:
        g = replace(f, side=side, zone=f.zone or "base") if side else f
        sd, cx, cy, ax, ay = _box_region(an, g, rng, rel_w=0.22, rel_h=0.08, erode_frac=0.02)
        acc = np.zeros(an.hw, np.float32)
        if f.severity == "large":
            hx, hy = an.hila[sd]
            tip = (hx, hy)
            base_dir = np.array([cx - hx, cy - hy])
            n = math.sqrt((cx - hx) * (cx - hx) + (cy - hy) * (cy - hy)) + 1e-6
            perp = np.array([-base_dir[1], base_dir[0]]) / n
            a1 = np.array([cx, cy]) + perp * 0.10 * lw + base_dir / n * 0.08 * lw
            a2 = np.array([cx, cy]) - perp * 0.10 * lw + base_dir / n * 0.08 * lw
            poly = np.array([tip, a1, a2], np.float32)
            cv2.fillConvexPoly(acc, np.round(poly * 4).astype(np.int32), 1.0, cv2.LINE_AA, 2)
            strength = 0.30
        else:
            nlines = int(rng.integers(1, 4))
            t1, arch = _unit_sine(12)
            t = t1 - 0.5
            for k in range(nlines):
                ang = dm.normal(rng, 0, 0.18)
                L = max(ax, 0.08 * lw) * dm.uniform(rng, 1.4, 2.0)
                oy = (k - (nlines - 1) / 2) * 0.03 * lw
                px = cx + t * L * dm.cos_s(ang)
                py = cy + oy + t * L * dm.sin_s(ang) + 0.03 * lw * arch * dm.uniform(rng, -1, 1)
                p = np.round(np.c_[px, py] * 4).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(acc, [p], False, 1.0, max(2, int(dm.uniform(rng, 0.012, 0.022) * lw)), cv2.LINE_AA, 2)
            strength = 0.30
        acc = _clip_lungs(an, blur(acc, 0.8), sd)
        gt = _gt(acc, 0.4)
        if gt.sum() < 4:
            continue
        an.density += blur(acc, 1.5) * strength
        out.append(gt)
    return out


def _edema(an: Anatomy, f: Finding):
    """Bilateral perihilar (bat-wing) haze, with Kerley B lines at the lateral bases."""
    rng = an.frng  # type: ignore[attr-defined]
    yy, xx = _grid(an)
    x0, y0, x1, y1 = an.lung_box
    lw, lh = x1 - x0, y1 - y0
    sev = SEVERITY_SCALE.get(f.severity, 1.0)
    acc = np.zeros(an.hw, np.float32)
    for _side, (hx, hy) in an.hila.items():
        sx, sy = 0.20 * lw * sev, 0.24 * lh * sev
        ux = (xx - np.float32(hx)) * np.float32(1.0 / sx)
        uy = (yy - np.float32(hy + 0.05 * lh)) * np.float32(1.0 / sy)
        d2 = ux * ux + uy * uy
        acc = np.maximum(acc, dm.curve(d2, _exp_table(), 0.0, 16.0))
    acc *= 0.85 + 0.3 * smooth_field(rng, an.hw, 0.03 * an.hw[1])
    acc = _clip_lungs(an, np.clip(acc, 0, 1.2), None, full=True)
    an.density += blur(acc, 2.0) * 0.26
    kerley = np.zeros(an.hw, np.float32)
    for side in SIDES:
        base = zone_mask(an, side, "base") & zone_mask(an, side, "peripheral")
        if base.sum() < 10:
            continue
        for _ in range(int(rng.integers(4, 8))):
            px, py = _pick(base, rng)
            L = 0.035 * lw
            sgn = 1 if side == RIGHT else -1
            draw.line(kerley, (int(px), int(py)), (int(px + sgn * L), int(py)), 1.0, 1)
    an.density += blur(kerley, 0.6) * 0.10 * (an.lung[RIGHT] | an.lung[LEFT])
    gt = _gt(acc, 0.4)
    out = []
    for side in SIDES:  # one region per lung
        g = gt * an.lung_full[side]  # type: ignore[attr-defined]
        if g.sum() >= 4:
            out.append(g.astype(np.float32))
    return out


def _exp_table() -> np.ndarray:
    return _EXP_TABLE if _EXP_TABLE is not None else _make_exp_table()


_EXP_TABLE: np.ndarray | None = None


def _make_exp_table() -> np.ndarray:
    global _EXP_TABLE
    _EXP_TABLE = dm.exp(-dm.nodes(0.0, 16.0))  # exp(-x) for x in [0, 16]
    return _EXP_TABLE


@functools.lru_cache(maxsize=4)
def _unit_sine(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n, dtype=np.float64) / (n - 1)
    return t, dm.sin(math.pi * t)


def _round(an: Anatomy, f: Finding, *, rel: float, strength: float, lobulated: float, dense_core: bool = False,
           r_range: tuple[float, float] = (0.0, 1.0)):
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    lw = _lung_width(an)
    sides = _sides(f, rng) if f.box is None else (None,)
    for side in sides:
        g = replace(f, side=side) if side else f
        sd, cx, cy, ax, ay = _box_region(an, g, rng, rel_w=rel, rel_h=rel, erode_frac=rel / 2)
        # a nodule stays a nodule (< 3 cm), a mass a mass, whatever box it came from
        r = min(max(0.5 * (ax + ay) * dm.uniform(rng, 0.9, 1.1), r_range[0] * lw), r_range[1] * lw)
        r = max(2.0, r)
        p3, p5 = dm.uniform(rng, 0, 6), dm.uniform(rng, 0, 6)
        reach = r * (1 + lobulated) + max(1.0, 0.15 * r) + 2
        ys, xs = _window(an.hw, cx, cy, reach, reach)
        blob = np.zeros(an.hw, np.float32)
        d_full = np.zeros(an.hw, np.float32)
        if ys.stop > ys.start and xs.stop > xs.start:
            dy = np.arange(ys.start, ys.stop, dtype=np.float64)[:, None] - cy
            dx = np.arange(xs.start, xs.stop, dtype=np.float64)[None, :] - cx
            d = np.sqrt(dx * dx + dy * dy)
            inv = 1.0 / np.where(d > 0, d, 1.0)
            c, s = np.where(d > 0, dx * inv, 1.0), dy * inv  # cos and sin of the polar angle
            c2, s2 = c * c, s * s
            # sin(k angle + p) = sin(k angle) cos p + cos(k angle) sin p, multiple angles by Chebyshev
            s3, c3 = s * (3.0 - 4.0 * s2), c * (4.0 * c2 - 3.0)
            s5, c5 = s * (16.0 * s2 * s2 - 20.0 * s2 + 5.0), c * (16.0 * c2 * c2 - 20.0 * c2 + 5.0)
            wave = 0.5 * (s3 * dm.cos_s(p3) + c3 * dm.sin_s(p3)) + 0.5 * (s5 * dm.cos_s(p5) + c5 * dm.sin_s(p5))
            rad = r * (1 + lobulated * wave)
            blob[ys, xs] = np.clip((rad - d) / max(1.0, 0.15 * r) + 0.5, 0, 1)
            d_full[ys, xs] = np.clip(1 - d / max(r, 1), 0, 1)
        blob = _clip_lungs(an, blob, sd, full=True)
        gt = _gt(blob)
        if gt.sum() < 2:
            continue
        body = blob * (0.8 + 0.2 * d_full) if not dense_core else blob
        an.density += blur(body, 0.6) * np.float32(strength * dm.uniform(rng, 0.9, 1.1))
        out.append(gt)
    return out


def _nodule(an, f):
    return _round(an, f, rel=0.06, strength=0.30, lobulated=0.05, r_range=(0.015, 0.05))


def _mass(an, f):
    return _round(an, f, rel=0.16, strength=0.32, lobulated=0.12, r_range=(0.05, 0.14))


def _calcification(an, f):
    return _round(an, f, rel=0.022, strength=0.55, lobulated=0.0, dense_core=True, r_range=(0.006, 0.016))


def _fibrosis(an: Anatomy, f: Finding):
    """Reticular (net-like) lines with some volume loss, in the zone (bases by default)."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    lw = _lung_width(an)
    sides = _sides(f, rng) if f.box is None else (None,)
    for side in sides:
        g = replace(f, side=side, zone=f.zone or ("lower" if rng.random() < 0.6 else "upper")) if side else f
        sd, cx, cy, ax, ay = _box_region(an, g, rng, rel_w=0.24, rel_h=0.26)
        net = np.zeros(an.hw, np.float32)
        for _ in range(int(40 * (ax * ay) / ((0.12 * lw) * (0.12 * lw))) + 20):
            px, py = cx + dm.uniform(rng, -ax, ax), cy + dm.uniform(rng, -ay, ay)
            a = dm.uniform(rng, 0, math.pi)
            L = dm.uniform(rng, 0.02, 0.05) * lw
            draw.line(net, (int(px), int(py)), (int(px + L * dm.cos_s(a)), int(py + L * dm.sin_s(a))), 1.0, 1)
        env = _patch(an, cx, cy, ax, ay, rng, roughness=0.3)
        net = _clip_lungs(an, blur(net, 0.7) * env, sd)
        env = _clip_lungs(an, env, sd)
        gt = _gt(env)
        if gt.sum() < 4:
            continue
        an.density += net * 0.16 + blur(env, 3) * 0.05
        out.append(gt)
    return out


def _emphysema(an: Anatomy, f: Finding):
    """Hyperinflation is in the modifiers; here an upper-zone bulla (lucent, thin wall) as the lesion."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    sides = _sides(f, rng) if f.side else ((SIDES[int(rng.integers(2))],) if f.box is None else (None,))
    for side in sides:
        g = replace(f, side=side, zone=f.zone or "upper") if side else f
        sd, cx, cy, ax, ay = _box_region(an, g, rng, rel_w=0.16, rel_h=0.14, erode_frac=0.05)
        yy, xx = _grid(an)
        u, v = (xx - cx) / ax, (yy - cy) / ay
        d = np.sqrt(u * u + v * v)
        bulla = np.clip((1 - d) * 6, 0, 1).astype(np.float32)
        bulla = _clip_lungs(an, bulla, sd)
        gt = _gt(bulla)
        if gt.sum() < 4:
            continue
        an.marking_keep *= 1 - 0.85 * bulla
        an.lucency += blur(bulla, 1.5) * 0.05
        wall = (np.abs(d - 1) < 0.06).astype(np.float32) * (an.lung[RIGHT] | an.lung[LEFT])
        an.density += blur(wall, 0.6) * 0.07
        out.append(gt)
    return out


def _fracture(an: Anatomy, f: Finding):
    """A rib with a cortical break and callus at its lateral arc."""
    rng = an.frng  # type: ignore[attr-defined]
    out = []
    side = _sides(f, rng)[0]
    ribs = [p for s, p in an.ribs if s == side]
    if not ribs:
        return out
    if f.box is not None:
        b = an.from_canonical(f.box)
        target = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        def d2(p):
            dx, dy = p[:, 0] - target[0], p[:, 1] - target[1]
            return dx * dx + dy * dy

        pts = min(((float(np.min(d2(p))), i) for i, p in enumerate(ribs)), key=lambda t: t[0])
        pts = ribs[pts[1]]
        k = int(np.argmin(d2(pts)))
    else:
        lo = 2 if f.zone not in ("lower", "base") else 5
        pts = ribs[int(rng.integers(lo, min(len(ribs), lo + 4)))]
        k = int(rng.integers(int(0.55 * len(pts)), int(0.9 * len(pts))))
    cx, cy = pts[k]
    lw = _lung_width(an)
    r = 0.022 * lw
    m = np.zeros(an.hw, np.float32)
    cv2.ellipse(m, (int(cx), int(cy)), (int(r * 1.2), int(r)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    an.density += blur(m, 1.0) * 0.14
    d = pts[min(k + 1, len(pts) - 1)] - pts[max(k - 1, 0)]
    dx, dy = float(d[0]), float(d[1])
    n = np.array([-dy, dx]) / (math.sqrt(dx * dx + dy * dy) + 1e-6)
    gap = np.zeros(an.hw, np.float32)
    p1, p2 = (np.array([cx, cy]) + n * r * 1.3), (np.array([cx, cy]) - n * r * 1.3)
    draw.line(gap, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), 1.0, 1)
    an.lucency += blur(gap, 0.5) * 0.12
    out.append(m)
    return out


def _device(an: Anatomy, f: Finding):
    """Support devices drawn as radiopaque lines and shapes; ground truth is the device itself."""
    rng = an.frng  # type: ignore[attr-defined]
    h, w = an.hw
    x0, y0, x1, y1 = an.lung_box
    lw, lh = x1 - x0, y1 - y0
    mid = an.midline
    kind = f.device or ("et_tube", "ng_tube", "cvc", "pacemaker", "sternotomy", "ecg")[int(rng.integers(6))]
    m = np.zeros((h, w), np.float32)

    def line(pts, width):
        draw.polyline(m, np.asarray(pts, np.float64), width)

    def curve(p0, p1, p2, n=30):
        t = (np.arange(n, dtype=np.float64) / (n - 1))[:, None]
        return (1 - t) * (1 - t) * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t * t * np.array(p2)

    U = functools.partial(dm.uniform, rng)
    cx, cy = an.carina
    if kind == "et_tube":
        tip = (mid, cy - U(0.05, 0.12) * lh)
        line([(mid + dm.normal(rng, 0, 0.01) * lw, 0), tip], 0.016 * lw)
    elif kind == "ng_tube":
        ex = mid + 0.02 * lw
        below = min(h - 2, y1 + U(0.05, 0.12) * lh)
        pts = np.vstack([curve((ex, 0), (ex - 0.01 * lw, 0.5 * (cy + y1)), (ex + 0.03 * lw, y1 - 0.05 * lh)),
                         curve((ex + 0.03 * lw, y1 - 0.05 * lh), (ex + 0.10 * lw, below), (ex + 0.20 * lw, below))])
        line(pts, 0.010 * lw)
    elif kind == "cvc":
        sgn = -1 if rng.random() < 0.65 else 1  # right-sided lines are the usual
        start = (mid + sgn * 0.42 * lw, y0 + 0.04 * lh)
        tip = (mid - 0.05 * lw, y0 + U(0.30, 0.40) * lh)
        line(curve(start, (mid + sgn * 0.12 * lw, y0 + 0.05 * lh), tip), 0.008 * lw)
    elif kind == "pacemaker":
        gx, gy = mid + 0.32 * lw, y0 + 0.10 * lh
        cv2.ellipse(m, (int(gx), int(gy)), (int(0.07 * lw), int(0.045 * lw)), U(-20, 20), 0, 360, 1.0, -1,
                    cv2.LINE_AA)
        ra = (mid - 0.02 * lw, y0 + 0.60 * lh)
        rv = (mid + 0.08 * lw, y0 + 0.78 * lh)
        line(curve((gx, gy), (mid + 0.02 * lw, y0 + 0.05 * lh), ra), 0.009 * lw)
        line(curve((gx, gy), (mid + 0.05 * lw, y0 + 0.10 * lh), rv), 0.009 * lw)
    elif kind == "sternotomy":
        for k in range(int(rng.integers(5, 8))):
            yk = y0 + (0.22 + 0.08 * k) * lh
            draw.ellipse_outline(m, (int(mid), int(yk)), (int(0.018 * lw), int(0.010 * lw)), U(-10, 10), 1.0,
                                 max(1, int(0.006 * lw)))
    else:  # ecg leads
        for _k in range(int(rng.integers(3, 6))):
            px, py = x0 + U(0.05, 0.95) * lw, y0 + U(0.02, 0.9) * lh
            draw.circle_outline(m, (int(px), int(py)), max(2, int(0.022 * lw)), 1.0, max(1, int(0.008 * lw)))
            line(curve((px, py), (px + U(-0.2, 0.2) * lw, py + 0.1 * lh),
                       (px + U(-0.3, 0.3) * lw, h)),
                 0.005 * lw)
    m = np.clip(m, 0, 1)
    an.density += blur(m, 0.5) * 0.55
    gt = cv2.dilate((m > 0.3).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    return [gt]


_RENDERERS = {
    "opacity": _opacity, "consolidation": _consolidation, "pneumonia": _pneumonia, "infiltrate": _infiltrate,
    "covid": _covid, "effusion": _effusion, "pneumothorax": _pneumothorax, "cardiomegaly": _cardiomegaly,
    "enlarged_cm": _enlarged_cm, "atelectasis": _atelectasis, "edema": _edema, "nodule": _nodule, "mass": _mass,
    "calcification": _calcification, "fibrosis": _fibrosis, "emphysema": _emphysema, "fracture": _fracture,
    "device": _device,
}


def to_output(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """A work-resolution mask → bool mask at the output size."""
    return dm.resize(mask.astype(np.float32), out_hw) >= 0.5
