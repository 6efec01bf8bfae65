"""A normal frontal chest radiograph phantom, built around a real lung-mask pair.

Everything is drawn at a *work* resolution (longest side ``WORK_SIDE``) as attenuation
layers, so that a finding can change the anatomy (a larger heart, a shorter lung) before
the layers are composed; ``finish`` brings the composed image to the output size and adds
fine noise there.

All arithmetic is deterministic (``detmath``): the same seed gives the same bits on every CPU.
OpenCV is used only to draw (on float32 canvases its rasterisers are integer code and ignore
anti-aliasing) and for its integer (city-block and chessboard) distance transforms.

Orientation (radiological convention): image column 0 is the patient's right. The lung
drawn on the image's left half is the *right* lung, the one on the image's right half (with
the cardiac notch and the gastric bubble below it) the *left* lung.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

import cv2
import numpy as np

from benchmark.demo import detmath as dm
from benchmark.demo import draw
from benchmark.demo.material import LungShape

WORK_SIDE = 384
SMALL_WORK_SIDE = 320  # outputs up to 800 px
TRAIN_WORK_SIDE = 256  # outputs up to 560 px (training images, seen at 224 by the models)
RIGHT, LEFT = "right", "left"  # patient sides


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 image (``detmath.blur``: deterministic, large sigmas on a block-averaged copy)."""
    return dm.blur(a, sigma)


@functools.lru_cache(maxsize=16)
def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinate images (float32, shared and read-only)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``sigma`` (pixels): white noise on
    a grid ``sigma // 2`` times coarser, blurred, interpolated and standardised (float32)."""
    h, w = shape
    f = max(1, int(sigma // 2))
    grid_hw = (h, w) if f == 1 else (max(2, h // f + 1), max(2, w // f + 1))
    small = dm.blur(dm.white(rng, grid_hw), max(0.5, sigma / f))
    out = small if f == 1 else dm.resize(small, (h, w))
    mean, sd = dm.mean_std(out)
    out = out - np.float32(mean)
    return out * np.float32(1.0 / sd) if sd > 0 else out


@dataclass
class Modifiers:
    """Changes a finding makes to the anatomy itself (set before the anatomy is drawn)."""

    heart_scale: float = 1.0  # cardiomegaly: transverse heart diameter factor
    mediastinum_scale: float = 1.0  # widened superior mediastinum
    lung_height: dict = field(default_factory=lambda: {RIGHT: 1.0, LEFT: 1.0})  # inspiration / elevated diaphragm
    lucency: float = 1.0  # emphysema: darker lungs
    marking_gain: float = 1.0


@dataclass
class Anatomy:
    """Work-resolution layers and masks of one phantom."""

    rng: np.random.Generator
    out_hw: tuple[int, int]
    hw: tuple[int, int]
    scale: float  # work pixels per output pixel
    view: str
    female: bool
    lung: dict  # side -> bool mask
    lung_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the lung pair (work px)
    heart: np.ndarray  # bool
    mediastinum: np.ndarray  # bool: cardiomediastinal silhouette (superior mediastinum + heart)
    body: np.ndarray  # float thickness 0..1
    bones: np.ndarray
    markings: np.ndarray
    hila: dict  # side -> (x, y)
    carina: tuple[float, float]
    midline: float
    ribs: list = field(default_factory=list)  # (side, polyline work px) of posterior ribs
    density: np.ndarray | None = None  # findings add attenuation here
    lucency: np.ndarray | None = None  # findings remove attenuation here
    marking_keep: np.ndarray | None = None  # 1 = keep lung markings, 0 = none (pneumothorax)

    def __post_init__(self) -> None:
        z = np.zeros(self.hw, np.float32)
        self.density = z.copy()
        self.lucency = z.copy()
        self.marking_keep = np.ones(self.hw, np.float32)

    @property
    def lungs(self) -> np.ndarray:
        return self.lung[RIGHT] | self.lung[LEFT]

    def lungs_blur(self, sigma: float, side: str | None = None, full: bool = False) -> np.ndarray:
        """The visible (or ``full``) lung mask of ``side`` (None: both), blurred (cached: the lungs do
        not change after ``build``)."""
        cache = self.__dict__.setdefault("_lung_blurs", {})
        key = (float(sigma), side, bool(full))
        if key not in cache:
            lungs = self.lung_full if full else self.lung  # type: ignore[attr-defined]
            m = lungs[side] if side in (RIGHT, LEFT) else (lungs[RIGHT] | lungs[LEFT])
            cache[key] = blur(m.astype(np.float32), sigma)
        return cache[key]

    def from_canonical(self, box) -> tuple[float, float, float, float]:
        """A box ``[x0, y0, x1, y1]`` of the canonical frame (real 1024² radiographs, normalised)
        → work pixels of this phantom, mapping the median real lung-pair box onto this one's
        (plain floats: numpy scalars would change the dtype of array arithmetic between numpy 1 and 2)."""
        from benchmark.demo.material import canonical_lung_frame

        c = canonical_lung_frame()
        x0, y0, x1, y1 = self.lung_box
        b = [float(v) for v in box]
        fx, fy = (x1 - x0) / (c[2] - c[0]), (y1 - y0) / (c[3] - c[1])
        return (x0 + (b[0] - c[0]) * fx, y0 + (b[1] - c[1]) * fy, x0 + (b[2] - c[0]) * fx, y0 + (b[3] - c[1]) * fy)

    def side_box(self, side: str) -> tuple[int, int, int, int]:
        """Bounding box of the visible ``side`` lung (cached: the lungs do not change after ``build``)."""
        cache = self.__dict__.setdefault("_side_boxes", {})
        if side not in cache:
            m = self.lung[side]
            rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            cache[side] = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        return cache[side]


def work_shape(out_hw: tuple[int, int]) -> tuple[tuple[int, int], float]:
    h, w = out_hw
    longest = max(h, w)
    side = WORK_SIDE if longest > 800 else (SMALL_WORK_SIDE if longest > 560 else TRAIN_WORK_SIDE)
    s = min(1.0, side / max(h, w))
    return (max(16, round(h * s)), max(16, round(w * s))), s


def build(rng: np.random.Generator, out_hw: tuple[int, int], shape: LungShape, *, view: str = "PA",
          female: bool = False, mods: Modifiers | None = None) -> Anatomy:
    """Draw a normal chest (with the anatomical ``mods`` of the findings) around ``shape``."""
    mods = mods or Modifiers()
    (h, w), s = work_shape(out_hw)
    aspect_img = h / w
    # lung pair box: width a fraction of the image width, height from the real mask's aspect
    U = functools.partial(dm.uniform, rng)
    lw = w * (U(0.68, 0.78) if aspect_img <= 1.05 else U(0.74, 0.84))
    lh = lw * shape.aspect * U(0.92, 1.06)
    lh = min(lh, 0.78 * h)
    if view == "AP":
        lh *= U(0.90, 0.97)  # AP (often supine) films: lower inspiration
    cx = w / 2 + dm.normal(rng, 0, 0.012 * w)
    y0 = h * (U(0.05, 0.11) if aspect_img <= 1.1 else U(0.07, 0.14))
    y0 = min(y0, h - lh - 0.08 * h)
    x0 = cx - lw / 2
    lung_full = {}
    for label, side in ((1, RIGHT), (2, LEFT)):
        f = mods.lung_height.get(side, 1.0)
        m = (shape.labels == label).astype(np.float32)
        m = dm.resize(m, (max(2, round(lh * f)), max(2, round(lw))))
        canvas = np.zeros((h, w), np.float32)
        _paste(canvas, m, int(round(x0)), int(round(y0)))
        lung_full[side] = canvas > 0.5
    lx0, ly0 = int(round(x0)), int(round(y0))
    lx1, ly1 = int(round(x0 + lw)), int(round(y0 + lh))
    yy, xx = grid(h, w)

    # -- midline from the medial lung edges in the upper half
    e_r = _row_edge(lung_full[RIGHT], "max")
    e_l = _row_edge(lung_full[LEFT], "min")
    both = (e_r >= 0) & (e_l >= 0)
    band = both & (np.arange(h) > ly0 + 0.15 * lh) & (np.arange(h) < ly0 + 0.45 * lh)
    midline = dm.median((e_r[band] + e_l[band]) / 2) if band.any() else cx
    gap_up = dm.median(e_l[band] - e_r[band]) if band.any() else 0.1 * lw

    # -- heart silhouette: right atrium (image left) and left ventricle (image right), on the diaphragm
    bottom_r = ly0 + lh * mods.lung_height.get(RIGHT, 1.0)
    bottom_l = ly0 + lh * mods.lung_height.get(LEFT, 1.0)
    hs = mods.heart_scale
    ctr = U(0.40, 0.47)  # cardiothoracic ratio of a normal heart (PA)
    if view == "AP":
        ctr *= U(1.03, 1.10)  # AP magnification
    thorax_w = lw * 1.04
    heart_w = ctr * thorax_w * hs
    right_b = midline - heart_w * U(0.30, 0.36)  # right heart border
    left_b = right_b + heart_w
    base_y = min(bottom_r, bottom_l) - 0.10 * lh  # cardiophrenic level
    lv_c = (left_b - 0.33 * heart_w, base_y - 0.07 * lh)
    lv_ax = (0.35 * heart_w, (0.21 + 0.04 * (hs - 1)) * lh)
    ra_c = (right_b + 0.17 * heart_w, base_y - 0.05 * lh)
    ra_ax = (0.17 * heart_w, 0.17 * lh)
    heart_top = ly0 + (0.40 - 0.04 * (hs - 1)) * lh
    parts = _ellipse_mask((h, w), lv_c, lv_ax, U(-35, -20)).astype(np.float32)
    parts = np.maximum(parts, _ellipse_mask((h, w), ra_c, ra_ax, U(-5, 5)))
    parts = np.maximum(parts, _ellipse_mask((h, w), (midline + 0.04 * heart_w, heart_top + 0.15 * lh),
                                            (0.22 * heart_w, 0.15 * lh), 10))
    parts = np.maximum(parts, _ellipse_mask((h, w), (0.5 * (right_b + left_b), base_y + 0.02 * lh),
                                            (0.45 * heart_w, 0.08 * lh), 0))
    heart = blur(parts, 0.035 * lh) > 0.45  # one smooth silhouette
    heart &= (yy > heart_top) & (yy < max(bottom_r, bottom_l) - 0.03 * lh)
    # superior mediastinum (vessels, aortic knob), widened by its factor
    sm_half = max(gap_up, 0.10 * lw) / 2 * 1.1 * mods.mediastinum_scale
    med = (np.abs(xx - midline) < sm_half) & (yy < heart_top + 0.1 * lh)
    knob = _ellipse_mask((h, w), (midline + sm_half - 0.01 * lw, ly0 + 0.22 * lh), (0.04 * lw, 0.06 * lh), 0)
    med |= knob
    if mods.mediastinum_scale > 1.0:
        med |= _ellipse_mask((h, w), (midline, ly0 + 0.27 * lh), (sm_half * 1.05, 0.20 * lh), 0)
    mediastinum = heart | med
    lung = {side: m & ~mediastinum for side, m in lung_full.items()}

    # -- body outline: chest wall along the lungs, shoulders and neck above, abdomen below
    half = _body_half_width(h, w, lung_full, midline, ly0, ly1, lh, lw, rng)
    half = half.astype(np.float32)
    ax = np.abs(xx - np.float32(midline))
    body = (ax < half[:, None]).astype(np.float32)
    body = blur(body, 0.008 * w)
    dx = ax / np.maximum(half[:, None], np.float32(1.0))
    thickness = body * dm.curve(dx, _profile_table(), 0.0, 1.0)

    # -- hila and bones
    hy = ly0 + U(0.36, 0.42) * lh
    hila = {RIGHT: (midline - max(gap_up / 2, 0.05 * lw) - 0.07 * lw, hy + 0.02 * lh),
            LEFT: (midline + max(gap_up / 2, 0.05 * lw) + 0.07 * lw, hy - 0.02 * lh)}
    bones = _spine(h, w, midline, ly0, lh, lw, rng)
    ribs_layer, ribs = _ribs(h, w, midline, ly0, lh, lw, half, rng)
    bones += ribs_layer
    bones += _clavicles(h, w, midline, ly0, lh, lw, rng, view)
    bones += _shoulders(h, w, midline, ly0, lh, lw, 0.5 * lw + U(0.10, 0.16) * w, rng, view)

    markings = _vessels(h, w, lung_full, hila, rng) * mods.marking_gain
    carina = (midline + 0.005 * w, ly0 + U(0.27, 0.32) * lh)
    an = Anatomy(rng=rng, out_hw=out_hw, hw=(h, w), scale=s, view=view, female=female, lung=lung,
                 lung_box=(lx0, ly0, lx1, ly1), heart=heart, mediastinum=mediastinum, body=thickness,
                 bones=bones, markings=markings, hila=hila, carina=carina, midline=midline, ribs=ribs)
    an.lung_full = lung_full  # type: ignore[attr-defined]
    an._mods = mods  # type: ignore[attr-defined]
    an._trachea = _trachea(h, w, midline, carina, hila)  # type: ignore[attr-defined]
    gas = _gastric_bubble(h, w, lung_full[LEFT], rng) + _bowel_gas(h, w, midline, ly1, lw, rng)
    an._bubble = gas  # type: ignore[attr-defined]
    breasts = _breasts(h, w, lung_full, rng) if female else np.zeros((h, w), np.float32)
    an._breasts = breasts  # type: ignore[attr-defined]
    return an


@functools.lru_cache(maxsize=1)
def _profile_table() -> np.ndarray:
    """Body thickness across the chest, ``(0.22 + 0.78 sqrt(1 - dx**2)) ** 1.2`` at ``dm.nodes(0, 1)``."""
    dx = dm.nodes(0.0, 1.0)
    return dm.pow(0.22 + 0.78 * np.sqrt(np.clip(1.0 - dx * dx, 0.0, 1.0)), 1.2)


def _ellipse_mask(hw, c, axes, angle_deg) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    cv2.ellipse(m, (int(round(c[0])), int(round(c[1]))), (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
                float(angle_deg), 0, 360, 1, -1)
    return m.astype(bool)


def _body_half_width(h, w, lung_full, midline, ly0, ly1, lh, lw, rng) -> np.ndarray:
    """Half-width of the body per row: neck, sloping shoulders, chest wall along the lungs, abdomen."""
    U = functools.partial(dm.uniform, rng)
    idx = np.arange(h, dtype=np.float64)
    e_out_r = _row_edge(lung_full[RIGHT], "min")
    e_out_l = _row_edge(lung_full[LEFT], "max")
    ok = (e_out_r >= 0) & (e_out_l >= 0)
    wall = U(0.04, 0.07) * w
    chest = np.full(h, 0.5 * lw + wall, np.float64)
    if ok.any():
        vals = np.maximum(midline - e_out_r[ok], e_out_l[ok] - midline) + wall
        chest = dm.interp(idx, idx[ok], vals)
    below = idx > ly1
    chest[below] *= 1.0 - 0.12 * np.clip((idx[below] - ly1) / (0.5 * lh), 0, 1)
    neck = U(0.12, 0.16) * w
    shoulder = 0.5 * lw + U(0.12, 0.20) * w
    y_neck = ly0 - U(0.25, 0.40) * lh
    y_sh = ly0 + U(0.02, 0.08) * lh
    t = np.clip((idx - y_neck) / max(1.0, y_sh - y_neck), 0, 1)
    slope = neck + (shoulder - neck) * dm.pow(t, 0.6)
    top = idx < y_sh + 0.15 * lh
    half = chest.copy()
    half[top] = np.maximum(chest[top], slope[top])
    above = idx < y_neck
    half[above] = neck
    # below the shoulders the body narrows back to the chest wall (axilla)
    tr = np.clip((idx - y_sh) / (0.15 * lh), 0, 1)
    mixed = slope * (1 - tr) + chest * tr
    rows = (idx >= y_sh) & (idx < y_sh + 0.15 * lh)
    half[rows] = np.maximum(chest[rows], mixed[rows])
    return dm.blur1d(half, 0.015 * h)


def compose(an: Anatomy) -> np.ndarray:
    """Layers → work-resolution intensity in [0, 1] (bright = dense), in display units."""
    rng = an.rng
    h, w = an.hw
    mods: Modifiers = an._mods  # type: ignore[attr-defined]
    full = an.lung_full[RIGHT] | an.lung_full[LEFT]  # type: ignore[attr-defined]
    lungs_f = blur(full.astype(np.float32), 0.9)
    # air depth: deepest in the lung core, less at the edges (partial volume), apex and base
    dist = dm.distance(full)
    dmax = max(float(dist.max()), 1.0)
    depth = dm.curve(dist * np.float32(1.0 / (0.45 * dmax)), _depth_table(), 0.0, 1.0)
    x0, y0, x1, y1 = an.lung_box
    yy = (np.arange(h, dtype=np.float64) - y0) / max(1, y1 - y0)
    u = (yy + 0.02) / 0.13
    vert = 1.0 - 0.38 * dm.exp(-(u * u)) - 0.12 * np.clip((yy - 0.72) / 0.28, 0, 1)
    vert = vert.astype(np.float32)[:, None]
    texture = 1.0 + 0.04 * smooth_field(rng, (h, w), 0.010 * w) + 0.05 * smooth_field(rng, (h, w), 0.05 * w)
    air = lungs_f * (0.45 + 0.55 * depth) * vert * texture * np.float32(0.52 * mods.lucency) * (0.3 + 0.7 * an.body)
    med_f = blur(an.mediastinum.astype(np.float32), 1.0)
    air = blur(air, 1.0) * (1.0 - 0.85 * med_f)
    a = an.body * 0.64
    a = a - air
    a += 0.03 * med_f
    a += an.bones * (0.25 + 0.75 * an.lungs_blur(2.0))
    a += an.markings * an.marking_keep * an.lungs_blur(1.5)  # not behind the heart
    a += an._breasts  # type: ignore[attr-defined]
    a -= an._trachea  # type: ignore[attr-defined]
    a -= an._bubble  # type: ignore[attr-defined]
    a += an.density
    a -= an.lucency * lungs_f
    # slow exposure variation and a mild heel effect
    a += 0.02 * smooth_field(rng, (h, w), 0.25 * w)
    a += (0.02 * (np.arange(h, dtype=np.float64) / h - 0.5)).astype(np.float32)[:, None]
    a = np.clip(a, 0, None)
    # film response: soft shoulder at high attenuation, exposure and contrast vary per film
    gain = dm.uniform(rng, 0.95, 1.12)
    gamma = dm.uniform(rng, 0.9, 1.15)
    top = max(float(a.max()), 1e-3)
    return dm.curve(a, _film_table(gain, gamma, top), 0.0, top)


@functools.lru_cache(maxsize=1)
def _depth_table() -> np.ndarray:
    return dm.pow(dm.nodes(0.0, 1.0), 0.7)


def _film_table(gain: float, gamma: float, top: float) -> np.ndarray:
    """``clip((1 - exp(-1.6 gain a)) / (1 - exp(-1.52)), 0, 1) ** gamma`` at ``dm.nodes(0, top)``."""
    a = dm.nodes(0.0, top)
    img = (1.0 - dm.exp(-1.6 * gain * a)) / (1.0 - dm.exp_s(-1.6 * 0.95))
    return dm.pow(np.clip(img, 0.0, 1.0), gamma)


def finish(img_work: np.ndarray, an: Anatomy, *, noise: float | None = None) -> np.ndarray:
    """Work-resolution intensity → output size float32 in [0, 1] with quantum noise and a side marker."""
    rng = an.rng
    H, W = an.out_hw
    img = dm.resize(img_work, (H, W))
    sigma = dm.uniform(rng, 0.010, 0.018) if noise is None else float(noise)
    # quantum noise: stronger where fewer photons arrive (bright = dense)
    gain = img * np.float32(0.8 * sigma) + np.float32(0.6 * sigma)
    gain *= _noise_tile(rng, H, W)
    img += gain
    if rng.random() < 0.6:  # lead marker "L" on the patient's left (image right)
        size = max(12, int(0.035 * H))
        x = int(W * dm.uniform(rng, 0.80, 0.90))
        y = int(H * dm.uniform(rng, 0.04, 0.10)) + size
        _marker_l(img, x, y, size)
    np.clip(img, 0, 1, out=img)
    return img


def _marker_l(img: np.ndarray, x: int, y: int, size: int) -> None:
    """A lead letter "L" (cap height ``size``, baseline ``y``, left edge ``x``), anti-aliased by 4x
    supersampling with integer coverage counts, blended towards white."""
    H, W = img.shape
    stroke = max(2.0, size / 5.0)
    x0, y0 = max(0, x - 2), max(0, y - size - 2)
    x1, y1 = min(W, x + int(0.62 * size) + 3), min(H, y + 3)
    if x1 <= x0 or y1 <= y0:
        return
    ss = 4
    ys = (np.arange(y0 * ss, y1 * ss) + 0.5) / ss
    xs = (np.arange(x0 * ss, x1 * ss) + 0.5) / ss
    in_y = (ys >= y - size) & (ys <= y)
    stem = in_y[:, None] & ((xs >= x) & (xs <= x + stroke))[None, :]
    foot = ((ys >= y - stroke) & (ys <= y))[:, None] & ((xs >= x) & (xs <= x + 0.62 * size))[None, :]
    cover = (stem | foot).reshape(y1 - y0, ss, x1 - x0, ss).sum(axis=(1, 3))  # integer counts 0..16
    a = cover.astype(np.float32) * np.float32(1.0 / (ss * ss))
    region = img[y0:y1, x0:x1]
    region[...] = region * (1 - a) + np.float32(0.97) * a


_NOISE_BANK: tuple | None = None
_NOISE_SIDE = 1536


def _noise_tile(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Grainy noise (white noise through the detector MTF), cut from a fixed-seed bank at a
    random offset and orientation: as random per image as fresh noise, at a fraction of the cost."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        n = dm.normal(np.random.default_rng(20240102), size=(_NOISE_SIDE, _NOISE_SIDE)).astype(np.float32)
        n = dm.blur(n, 0.7) * np.float32(1.9)
        _NOISE_BANK = (n, np.ascontiguousarray(n.T))
    bank = _NOISE_BANK[int(rng.random() < 0.5)]
    reps_y, reps_x = -(-H // _NOISE_SIDE), -(-W // _NOISE_SIDE)
    if reps_y > 1 or reps_x > 1:
        bank = np.tile(bank, (reps_y, reps_x))
    oy = int(rng.integers(0, bank.shape[0] - H + 1))
    ox = int(rng.integers(0, bank.shape[1] - W + 1))
    return bank[oy:oy + H, ox:ox + W]


# --------------------------------------------------------------------------- parts
def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h, w = canvas.shape
    ph, pw = patch.shape
    xa, ya = max(0, x), max(0, y)
    xb, yb = min(w, x + pw), min(h, y + ph)
    if xb <= xa or yb <= ya:
        return
    canvas[ya:yb, xa:xb] = np.maximum(canvas[ya:yb, xa:xb], patch[ya - y:yb - y, xa - x:xb - x])


def _row_edge(mask: np.ndarray, which: str) -> np.ndarray:
    """Per row, the min or max column of ``mask`` (-1 where the row is empty)."""
    h, w = mask.shape
    has = mask.any(axis=1)
    if which == "min":
        e = np.argmax(mask, axis=1).astype(np.float64)
    else:
        e = (w - 1 - np.argmax(mask[:, ::-1], axis=1)).astype(np.float64)
    e[~has] = -1
    return e


def _polyline(canvas: np.ndarray, pts: np.ndarray, thickness: float, value: float = 1.0) -> None:
    draw.polyline(canvas, pts, thickness, value)


def _bone_band(h: int, w: int, polylines: list[np.ndarray], thickness: float, cortex: float = 0.55) -> np.ndarray:
    """Bone bands with brighter cortical margins (outer band minus a blurred inner core)."""
    outer = np.zeros((h, w), np.float32)
    inner = np.zeros((h, w), np.float32)
    for p in polylines:
        _polyline(outer, p, thickness)
        _polyline(inner, p, max(1.0, thickness * 0.55))
    outer = blur(outer, 0.7)
    inner = blur(inner, max(0.8, thickness * 0.2))
    return outer * (1 - cortex) + np.clip(outer - inner, 0, 1) * cortex * 1.6


def _spine(h, w, midline, ly0, lh, lw, rng) -> np.ndarray:
    sw = dm.uniform(rng, 0.085, 0.11) * lw
    yy, xx = grid(h, w)
    rows = np.arange(h, dtype=np.float64)[:, None]
    curve = dm.normal(rng, 0, 0.012) * lw * dm.sin((rows - ly0) / max(lh, 1) * math.pi)
    band = (np.abs(xx - (midline + curve).astype(np.float32)) < np.float32(sw / 2)).astype(np.float32)
    col = blur(band, 1.5) * 0.035
    step = lh / dm.uniform(rng, 10.0, 12.0)  # vertebral bodies: brighter endplates
    phase = ((rows - ly0) / step) % 1.0
    p0, p1 = (phase - 0.04) / 0.05, (phase - 0.96) / 0.05
    plates = (dm.exp(-(p0 * p0)) + dm.exp(-(p1 * p1))).astype(np.float32)
    col += blur(band * plates, 1.0) * 0.03
    ped = np.zeros((h, w), np.float32)  # pedicles: small ovals beside each body
    y = ly0 - 2 * step + 0.35 * step
    while y < h:
        c = midline + dm.normal(rng, 0, 0.002) * lw
        for sgn in (-1, 1):
            draw.ellipse_outline(ped, (int(c + sgn * sw * 0.36), int(y)),
                                 (max(1, int(sw * 0.08)), max(1, int(step * 0.17))), 0, 1.0, 1)
        y += step
    col += blur(ped, 0.8) * 0.03
    return col


def _ribs(h, w, midline, ly0, lh, lw, half, rng):
    """Posterior ribs (up-and-out from the spine, then down laterally) and fainter anterior ribs
    (from the lateral wall medially and downward, ending at the costal cartilage)."""
    U = functools.partial(dm.uniform, rng)
    post, ant, ribs = [], [], []
    spacing = lh / U(9.0, 10.0)
    th_p = max(2.0, 0.040 * lh)
    th_a = max(2.0, 0.048 * lh)
    t, arch, bend = _rib_profiles()
    ta, ant_arch = _unit_sine(18)
    for side, sgn in ((RIGHT, -1), (LEFT, 1)):
        for i in range(10):
            ys = ly0 - 0.10 * lh + i * spacing
            row = int(min(max(ys + 1.5 * spacing, 0), h - 1))
            reach = float(half[row]) * U(0.94, 1.0)
            x = midline + sgn * (0.045 * lw + t * (reach - 0.045 * lw))
            drop = spacing * U(2.6, 3.2) * (1 + 0.15 * i / 10)
            ys += dm.normal(rng, 0, 0.06) * spacing
            y = ys - 0.30 * spacing * arch + drop * bend
            pts = np.c_[x, y]
            post.append(pts)
            ribs.append((side, pts))
            if 1 <= i <= 6:
                run = reach * U(0.50, 0.60)
                axx = x[-1] - sgn * 0.015 * lw - sgn * ta * run
                ayy = y[-1] + ta * run * U(0.40, 0.55) - 0.25 * run * ant_arch * 0.5
                ant.append(np.c_[axx, ayy])
    p = _bone_band(h, w, post, th_p, cortex=0.6)
    a = _bone_band(h, w, ant, th_a, cortex=0.25)
    return p * 0.065 + a * 0.025, ribs


@functools.lru_cache(maxsize=4)
def _unit_sine(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``t`` = n equal steps over [0, 1] and ``sin(pi t)``."""
    t = np.arange(n, dtype=np.float64) / (n - 1)
    return t, dm.sin(math.pi * t)


@functools.lru_cache(maxsize=1)
def _rib_profiles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``t`` over a posterior rib (28 points), its arch ``sin(pi min(1.4 t, 1))`` and its bend ``t ** 2.4``."""
    t = np.arange(28, dtype=np.float64) / 27
    return t, dm.sin(math.pi * np.clip(t * 1.4, 0, 1)), dm.pow(t, 2.4)


def _clavicles(h, w, midline, ly0, lh, lw, rng, view):
    pls = []
    U = functools.partial(dm.uniform, rng)
    lift = U(-0.02, 0.04) * lh if view == "PA" else U(0.03, 0.08) * lh
    t, arch = _unit_sine(30)
    for sgn in (-1, 1):
        x = midline + sgn * (0.04 * lw + t * U(0.44, 0.52) * lw)
        y = ly0 + 0.08 * lh + lift - t * U(0.08, 0.14) * lh + 0.025 * lh * arch
        pls.append(np.c_[x, y])
    return _bone_band(h, w, pls, max(2.0, 0.042 * lh), cortex=0.5) * 0.12


def _shoulders(h, w, midline, ly0, lh, lw, shoulder_half, rng, view):
    out = np.zeros((h, w), np.float32)
    U = functools.partial(dm.uniform, rng)
    for sgn in (-1, 1):
        cx = midline + sgn * (shoulder_half - U(0.05, 0.08) * w)
        cy = ly0 + U(0.00, 0.06) * lh
        r = U(0.06, 0.08) * w
        cv2.circle(out, (int(cx), int(cy)), int(r), 0.9, -1, cv2.LINE_AA)
        draw.line(out, (int(cx), int(cy)), (int(cx + sgn * 0.05 * w), int(cy + 0.6 * lh)), 0.7, int(r * 0.8))
        # scapula: a faint triangle along the lateral chest wall
        tri = np.array([[cx - sgn * 0.6 * r, cy + 0.1 * r], [cx - sgn * 2.2 * r, cy + 0.9 * r],
                        [cx - sgn * 0.9 * r, cy + 0.50 * lh]], np.int32)
        sc = np.zeros((h, w), np.float32)
        cv2.fillConvexPoly(sc, tri, 0.25 if view == "PA" else 0.45, cv2.LINE_AA)
        out = np.maximum(out, sc)
    return blur(out, 1.2) * 0.10


VESSEL_BANK_SIZE = 32
_VESSEL_SIDE = 256


@functools.lru_cache(maxsize=1)
def _vessel_bank() -> tuple[np.ndarray, ...]:
    """Branching vessel trees of one lung (hilum on the left edge, branching to the right), drawn
    once from a fixed seed and warped onto each phantom's lungs: as varied as drawing them per
    image for a fraction of the cost."""
    S = _VESSEL_SIDE
    out = []
    for k in range(VESSEL_BANK_SIZE):
        pr = random.Random(9000 + k)
        acc: dict = {}
        hx, hy = 0.10 * S, 0.40 * S
        n = pr.randint(7, 10)
        for j in range(n):
            a0 = -0.55 * math.pi + j * (1.15 * math.pi) / (n - 1)
            _branch(acc, hx, hy, a0 + dm.gauss(pr, 0, 0.15), 1, 0.5 * S * pr.uniform(0.55, 0.9),
                    0.030 * S * pr.uniform(0.8, 1.2), 0, pr)
        canvas = np.zeros((S, S), np.float32)
        for (width, val), pls in sorted(acc.items()):
            layer = np.zeros((S, S), np.float32)
            if width > 1:
                cv2.polylines(layer, pls, False, 1.0, width, cv2.LINE_AA, shift=2)
            else:
                for pl in pls:
                    draw.polyline(layer, pl.reshape(-1, 2) / 4.0, 1)
            np.maximum(canvas, layer * (val / 10.0), out=canvas)
        out.append(dm.blur(canvas, 0.8))
    return tuple(out)


def _vessels(h, w, lung, hila, rng) -> np.ndarray:
    """Pulmonary vessels fanning out from each hilum, fainter and thinner to the periphery."""
    bank = _vessel_bank()
    canvas = np.zeros((h, w), np.float32)
    lungs = lung[RIGHT] | lung[LEFT]
    for side, (hx, hy) in hila.items():
        m = lung[side]
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(rows) < 4 or len(cols) < 4:
            continue
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
        tree = bank[int(rng.integers(len(bank)))]
        if rng.random() < 0.5:  # vertical flip of the upper/lower halves adds variety around the hilum
            tree = tree[::-1]
        tree = dm.resize(tree, (y1 - y0, x1 - x0))
        if side == RIGHT:  # the right lung's hilum is on its image-right (medial) edge
            tree = tree[:, ::-1]
        np.maximum(canvas[y0:y1, x0:x1], tree, out=canvas[y0:y1, x0:x1])
        cv2.ellipse(canvas, (int(hx), int(hy)), (int(0.03 * w), int(0.05 * w)), 0, 0, 360, 0.8, -1, cv2.LINE_AA)
    canvas = blur(canvas, 1.0)
    return canvas * 0.09 * blur(lungs.astype(np.float32), 3.0)  # the lungs are final only after build


def _branch(acc, x, y, ang, sgn, length, width, depth, pr) -> None:
    """Collect a vessel segment (4 jittered steps) and its children into ``acc``, keyed by line
    width and brightness (``pr``: a ``random.Random``; scalar maths keeps this cheap)."""
    if depth > 3 or length < 3 or width < 0.3:
        return
    steps = 4
    seg = length / steps
    pts = [(x, y)]
    for _ in range(steps):
        ang += dm.gauss(pr, 0.0, 0.16)
        x += sgn * dm.cos_s(ang) * seg
        y += dm.sin_s(ang) * seg
        pts.append((x, y))
    key = (max(1, int(round(width))), int(round(10 * (1.0 - 0.2 * depth) * min(1.0, width + 0.3))))
    acc.setdefault(key, []).append(np.array([(int(px * 4 + 0.5), int(py * 4 + 0.5)) for px, py in pts],
                                            np.int32).reshape(-1, 1, 2))
    n_child = 2 if depth < 2 else pr.randint(1, 2)
    for k in range(n_child):
        i = int(pr.uniform(0.35, 0.85) * steps)
        bx, by = pts[i]
        _branch(acc, bx, by, ang + (2 * k - 1) * pr.uniform(0.3, 0.7), sgn, length * pr.uniform(0.45, 0.6),
                width * 0.65, depth + 1, pr)


def _trachea(h, w, midline, carina, hila) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    cx, cy = carina
    tw = max(2, int(0.034 * w))
    draw.line(out, (int(midline), 0), (int(cx), int(cy)), 1.0, tw)
    for _side, (hx, hy) in hila.items():
        draw.line(out, (int(cx), int(cy)), (int((hx + cx) / 2), int((hy + cy) / 2 + 0.01 * h)), 0.8,
                  max(1, int(tw * 0.7)))
    return blur(out, 0.006 * w) * 0.10


def _gastric_bubble(h, w, left_lung, rng) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    if rng.random() < 0.25:
        return out
    ys, xs = np.nonzero(left_lung)
    if len(xs) == 0:
        return out
    cx = dm.percentile(xs, 55)
    col = left_lung[:, int(cx)]
    bottom = np.nonzero(col)[0].max() if col.any() else ys.max()
    ax = dm.uniform(rng, 0.025, 0.045) * w
    ay = ax * dm.uniform(rng, 0.5, 0.8)
    cv2.ellipse(out, (int(cx), int(bottom + 0.015 * h + ay)), (int(ax), int(ay)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    return blur(out, 1.5) * dm.uniform(rng, 0.18, 0.28)


def _bowel_gas(h, w, midline, ly1, lw, rng) -> np.ndarray:
    """A few irregular gas pockets in the upper abdomen, below the lungs."""
    out = np.zeros((h, w), np.float32)
    room = h - ly1
    if room < 0.08 * h:
        return out
    U = functools.partial(dm.uniform, rng)
    for _ in range(int(rng.integers(0, 5))):
        cx = midline + U(-0.45, 0.45) * lw
        cy = ly1 + U(0.15, 0.9) * room
        for _ in range(int(rng.integers(1, 4))):  # lobulated: a few overlapping loops
            ax, ay = U(0.008, 0.025) * w, U(0.006, 0.015) * w
            ox, oy = dm.normal(rng, 0, 0.012 * w), dm.normal(rng, 0, 0.012 * w)
            cv2.ellipse(out, (int(cx + ox), int(cy + oy)), (int(ax), int(ay)), U(0, 180), 0, 360, 1.0, -1,
                        cv2.LINE_AA)
    return blur(out, 2.0) * U(0.04, 0.09)


def _breasts(h, w, lung, rng) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    for side in (RIGHT, LEFT):
        ys, xs = np.nonzero(lung[side])
        if len(xs) == 0:
            continue
        cx = dm.percentile(xs, 30 if side == RIGHT else 70)
        cy = dm.percentile(ys, 92)
        ax, ay = 0.17 * w * dm.uniform(rng, 0.85, 1.15), 0.11 * h * dm.uniform(rng, 0.8, 1.2)
        cv2.ellipse(out, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    return blur(out, 0.012 * w) * dm.uniform(rng, 0.05, 0.08)
