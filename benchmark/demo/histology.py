"""Synthetic H&E tiles for the pathology demo sets: prostate (Gleason patterns) and lung (LUAD patterns).

A tile is built as stain densities (eosin: stroma, cytoplasm; haematoxylin: nuclei; blood) on a
white background and turned into colour by a multiplicative (Beer-Lambert-like) transmission per
channel. Structures are drawn from explicit geometry (glands as lumen + epithelial ring with a
row of nuclei, cribriform masses, solid sheets, alveolar septa, papillary stalks, micropapillary
tufts), so each class looks different and its region is known exactly.

Same rules as the chest phantoms (``detmath``): only IEEE ``+ - * /``, ``sqrt``, comparisons and
the deterministic elementary functions of ``detmath``; random numbers from the generator's
integers and uniform doubles; pixel sums by ``np.bincount`` (a sequential loop). So the same
seed gives the same bytes on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmark.demo import detmath as D

PROSTATE = ("benign", "g3", "g4", "g4c", "g5")
LUNG = ("normal_lung", "tumor_stroma", "lung_tumor", "lepidic", "acinar", "papillary", "micropapillary", "solid")
KINDS = PROSTATE + LUNG
TWO_PI = D.TWO_PI

# transmission lost per unit density, per channel (R, G, B)
K_HAEM = (0.70, 0.80, 0.38)
K_EOS = (0.06, 0.52, 0.22)
K_BLOOD = (0.08, 0.78, 0.72)


@dataclass
class Tile:
    """The colour image (uint8 RGB), the lesion region (bool, None where the kind has none) and what was drawn."""

    rgb: np.ndarray
    region: np.ndarray | None
    info: dict = field(default_factory=dict)


class _Nuclei:
    """Nucleus parameters collected over a whole tile, stamped once."""

    def __init__(self):
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, rng, x, y, *, r: tuple[float, float], elong: tuple[float, float] = (1.0, 1.25),
            dark: tuple[float, float] = (0.55, 0.75), irr: float = 0.05, nucleolus: float = 0.0,
            texture: float = 0.3, cos=None, sin=None) -> None:
        x = np.asarray(x, np.float64).ravel()
        y = np.asarray(y, np.float64).ravel()
        n = len(x)
        if n == 0:
            return
        rad = D.uniform(rng, r[0], r[1], n)
        e = D.uniform(rng, elong[0], elong[1], n)
        a = rad * np.sqrt(e)
        b = rad / np.sqrt(e)
        if cos is None:  # a random orientation; its cosine and sine are taken for all nuclei at once
            ang, cos, sin = TWO_PI * rng.random(n), np.zeros(n), np.zeros(n)
        else:
            ang = np.full(n, np.nan)
        ph = TWO_PI * rng.random((2, n))
        self.parts.append({
            "x": x, "y": y, "a": a, "b": b, "c": np.broadcast_to(np.asarray(cos, np.float64), (n,)).copy(),
            "s": np.broadcast_to(np.asarray(sin, np.float64), (n,)).copy(), "ang": ang, "ph2": ph[0], "ph3": ph[1],
            "dark": D.uniform(rng, dark[0], dark[1], n), "i2": irr * rng.random(n), "i3": irr * rng.random(n),
            "nuc": np.full(n, float(nucleolus)), "tex": np.full(n, float(texture))})

    def count(self) -> int:
        return sum(len(p["x"]) for p in self.parts)

    def stamp(self, rng, hw) -> np.ndarray:
        """Haematoxylin density of all nuclei (float32): soft-edged, irregular ellipses with chromatin grain."""
        h, w = hw
        out = np.zeros(h * w, np.float64)
        if not self.parts:
            return out.reshape(h, w).astype(np.float32)
        p = {k: np.concatenate([q[k] for q in self.parts]) for k in self.parts[0]}
        keep = (p["x"] > -8) & (p["x"] < w + 8) & (p["y"] > -8) & (p["y"] < h + 8)
        p = {k: v[keep] for k, v in p.items()}
        free = ~np.isnan(p["ang"])
        p["c"][free], p["s"][free] = D.cos(p["ang"][free]), D.sin(p["ang"][free])
        p["p2c"], p["p2s"], p["p3c"], p["p3s"] = D.cos(p["ph2"]), D.sin(p["ph2"]), D.cos(p["ph3"]), D.sin(p["ph3"])
        reach = np.ceil(p["a"] * (1.0 + p["i2"] + p["i3"])).astype(np.int64) + 1
        for r in np.unique(reach).tolist():  # patch size by nucleus size
            sel = reach == r
            _stamp_group(rng, {k: v[sel] for k, v in p.items()}, h, w, out, int(r))
        return out.reshape(h, w).astype(np.float32)


def _stamp_group(rng, p, h, w, out, rmax: int) -> None:
    f32 = np.float32
    off = np.arange(-rmax, rmax + 1, dtype=np.int64)
    ix, iy = np.floor(p["x"]).astype(np.int64), np.floor(p["y"]).astype(np.int64)
    px = ix[:, None, None] + off[None, None, :]
    py = iy[:, None, None] + off[None, :, None]
    fx = (ix - p["x"]).astype(f32)[:, None, None] + off.astype(f32)[None, None, :]
    fy = (iy - p["y"]).astype(f32)[:, None, None] + off.astype(f32)[None, :, None]

    def col(k):
        return p[k].astype(f32)[:, None, None]

    c, s = col("c"), col("s")
    u = (fx * c + fy * s) * (f32(1.0) / col("a"))
    v = (fy * c - fx * s) * (f32(1.0) / col("b"))
    q = u * u + v * v + f32(1e-6)
    rr = np.sqrt(q)
    if bool((p["i2"] > 0).any() or (p["i3"] > 0).any()):
        iq = f32(1.0) / q
        iq3 = iq / rr
        uu, vv = u * u, v * v
        shape = f32(1.0) + col("i2") * (((uu - vv) * col("p2c") + (f32(2.0) * u * v) * col("p2s")) * iq)
        shape = shape + col("i3") * ((u * (uu - f32(3.0) * vv) * col("p3c") + v * (f32(3.0) * uu - vv) * col("p3s"))
                                     * iq3)
        rr = rr / shape
    val = np.clip((f32(1.0) - rr) * (f32(0.5) * (col("a") + col("b"))) + f32(0.5), f32(0.0), f32(1.0))
    tex = col("tex")
    val = val * ((f32(1.0) - tex) + (f32(2.0) * tex) * rng.random(val.shape, dtype=f32))
    if bool((p["nuc"] > 0).any()):
        d2 = fx * fx + fy * fy
        val = val + col("nuc") * np.clip(f32(1.0) - d2 * f32(0.6), f32(0.0), f32(1.0)) * (rr < f32(1.0))
    wgt = col("dark") * val
    ok = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (wgt > 0.0)
    out += np.bincount((py * w + px)[ok], weights=wgt[ok], minlength=h * w)


# ----------------------------------------------------------------------------- small tools
def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lowfreq(rng, hw, cell: float) -> np.ndarray:
    """Smooth noise of about unit amplitude with features of ``cell`` pixels (float32)."""
    h, w = hw
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    return D.resize(D.white(rng, (gh, gw)), (h, w))


def _grid_points(rng, box, spacing: float, jitter: float = 0.7):
    """A jittered grid of points in ``box`` (y0, x0, y1, x1): float64 (x, y)."""
    y0, x0, y1, x1 = box
    ny, nx = max(1, int((y1 - y0) / spacing) + 1), max(1, int((x1 - x0) / spacing) + 1)
    gy, gx = np.mgrid[0:ny, 0:nx]
    j = rng.random((2, ny, nx)) - 0.5
    x = x0 + (gx + 0.5 + jitter * j[0]) * spacing
    y = y0 + (gy + 0.5 + jitter * j[1]) * spacing
    return x.ravel(), y.ravel()


def _inside(mask: np.ndarray, x, y) -> np.ndarray:
    h, w = mask.shape
    xi = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
    yi = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
    return mask[yi, xi] & (x >= 0) & (x < w) & (y >= 0) & (y < h)


def _harmonics(rng, amps: list[float]):
    """Radial modulation ``1 + sum_k a_k cos(k t + phi_k)``, k = 2, 3, ...: amplitudes and phase (cos, sin)."""
    out = []
    for k, amp in enumerate(amps, start=2):
        phi = TWO_PI * float(rng.random())
        out.append((k, amp * float(rng.random()), D.cos_s(phi), D.sin_s(phi)))
    return out


def _radius_at(harm, R: float, ct, st):
    """R(1 + sum a_k cos(k t + phi)) with cos t, sin t given (angle multiples by recurrence)."""
    ck, sk = ct, st
    rho = np.ones_like(ct)
    k = 1
    for kk, amp, cp, sp in harm:
        while k < kk:
            ck, sk = ck * ct - sk * st, sk * ct + ck * st
            k += 1
        rho = rho + amp * (ck * cp - sk * sp)
    return R * rho


class _Canvas:
    """Stain density maps of one tile."""

    def __init__(self, hw):
        self.hw = hw
        self.E = np.zeros(hw, np.float32)  # eosin
        self.Hd = np.zeros(hw, np.float32)  # diffuse haematoxylin (cytoplasm, mucin)
        self.B = np.zeros(hw, np.float32)  # blood
        self.nuclei = _Nuclei()

    def paint(self, fp, e, hd=0.0, box=None):
        """Replace the stains under the soft footprint ``fp`` (0..1) by ``e`` and ``hd``."""
        fp = np.asarray(fp, np.float32)
        if box is None:
            sl = (slice(None), slice(None))
        else:
            sl = (slice(box[0], box[2]), slice(box[1], box[3]))
        inv = np.float32(1.0) - fp
        for m, v in ((self.E, e), (self.Hd, hd)):
            m[sl] = m[sl] * inv + np.asarray(v, np.float32) * fp
        self.B[sl] = self.B[sl] * inv


# ----------------------------------------------------------------------------- tissues
def _stroma(rng, cv: _Canvas, s: float, density: float = 0.55, clefts: float = 0.35, loose: float = 0.0):
    """Wavy collagen fibres (anisotropic noise, rotated and warped), white clefts, spindle nuclei, a few lymphocytes."""
    h, w = cv.hw
    amp = 10.0 * s
    L = int(math.ceil(math.sqrt(h * h + w * w) + 2 * amp)) + 4
    noise = D.white(rng, (L, L))
    t_along = D.gaussian_taps(round(4.5 * s, 3))
    t_across = D.gaussian_taps(round(0.9 * s, 3))
    fib = D._conv_cols(D._conv_rows(noise, t_across), t_along)
    norm = math.sqrt(_energy(t_along) * _energy(t_across))
    theta = TWO_PI * float(rng.random())
    ct, st = D.cos_s(theta), D.sin_s(theta)
    yy = np.arange(h, dtype=np.float64)[:, None] - h / 2.0
    xx = np.arange(w, dtype=np.float64)[None, :] - w / 2.0
    wy = _lowfreq(rng, cv.hw, 48.0 * s).astype(np.float64) * amp
    wx = _lowfreq(rng, cv.hw, 48.0 * s).astype(np.float64) * amp
    sy = np.clip(np.rint(L / 2.0 + xx * st + yy * ct + wy), 0, L - 1).astype(np.int64)
    sx = np.clip(np.rint(L / 2.0 + xx * ct - yy * st + wx), 0, L - 1).astype(np.int64)
    f = fib[sy, sx] * np.float32(1.0 / norm)
    tone = np.float32(1.0) + np.float32(0.25) * _lowfreq(rng, cv.hw, 90.0 * s)
    e = np.clip(np.float32(0.72) + np.float32(0.3) * f, 0.12, 1.1) * tone * np.float32(density)
    cleft = _smoothstep((np.float32(-1.25 + clefts) - f) * np.float32(1.6))
    e = e * (np.float32(1.0) - np.float32(0.85) * cleft.astype(np.float32))
    if loose:
        e = e * np.float32(1.0 - loose)
    cv.E[:] = e
    cv.Hd[:] = np.float32(0.02)
    area = h * w
    n = int(area / (520.0 * s * s))
    x, y = D.uniform(rng, 0, w, n), D.uniform(rng, 0, h, n)
    # spindle nuclei along the fibres
    cv.nuclei.add(rng, x, y, r=(2.0 * s, 2.8 * s), elong=(3.0, 5.5), dark=(0.45, 0.65), irr=0.05, texture=0.15,
                  cos=np.full(n, ct), sin=np.full(n, -st))
    m = int(area / (4000.0 * s * s))
    cv.nuclei.add(rng, D.uniform(rng, 0, w, m), D.uniform(rng, 0, h, m), r=(1.8 * s, 2.3 * s), elong=(1.0, 1.1),
                  dark=(0.8, 0.95), texture=0.05)
    return f


def _energy(taps: np.ndarray) -> float:
    t = [float(v) for v in taps]
    total = t[0] * t[0]
    for v in t[1:]:
        total += 2.0 * v * v
    return total


def _vessels(rng, cv: _Canvas, s: float, n: int):
    """Small capillaries: an endothelial ring with red cells inside."""
    h, w = cv.hw
    for _ in range(n):
        cx, cy = D.uniform(rng, 0, w), D.uniform(rng, 0, h)
        R = D.uniform(rng, 4.0 * s, 8.0 * s)
        box, fx, fy = _box(cv.hw, cx, cy, R + 3)
        if box is None:
            continue
        d = np.sqrt(fx * fx + (fy * 1.3) ** 2)
        fp = np.clip(R - d + 0.5, 0.0, 1.0)
        cv.paint(fp, 0.05, 0.0, box)
        cv.B[box[0]:box[2], box[1]:box[3]] += (fp * 0.75 * (rng.random(fp.shape) < 0.8)).astype(np.float32)


def _box(hw, cx, cy, r):
    h, w = hw
    y0, y1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return None, None, None
    fy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    fx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    return (y0, x0, y1, x1), np.broadcast_to(fx, (y1 - y0, x1 - x0)), np.broadcast_to(fy, (y1 - y0, x1 - x0))


def _gland(rng, cv: _Canvas, cx, cy, R, *, s, t, harm, nuc_r, dark, irr=0.05, nucleolus=0.0, basal=True,
           spacing=None, lumen_e=0.0, secretion=0.0, epi_e=0.32, epi_h=0.05, rows=1):
    """A gland: lumen (white) of radius R(theta), ringed by epithelium of thickness t with nuclei in a row."""
    rmax = R * (1.0 + sum(a for _, a, _, _ in harm)) + t + 3
    box, fx, fy = _box(cv.hw, cx, cy, rmax)
    if box is None:
        return
    d = np.sqrt(fx * fx + fy * fy) + 1e-9
    rho = _radius_at(harm, R, fx / d, fy / d)
    lumen = np.clip(rho - d + 0.5, 0.0, 1.0)
    outer = np.clip(rho + t - d + 0.5, 0.0, 1.0)
    cv.paint(outer, epi_e, epi_h, box)
    if secretion:
        lumen_e = lumen_e + secretion * np.clip(D.resize(D.white(rng, (4, 4)), lumen.shape).astype(np.float64), 0, 1)
    cv.paint(lumen, lumen_e, 0.0, box)
    spacing = spacing or 2.1 * nuc_r
    n = max(6, int(TWO_PI * (R + 0.6 * t) / spacing))
    ang = TWO_PI * (np.arange(n) + 0.3 * (rng.random(n) - 0.5)) / n + TWO_PI * float(rng.random())
    ca, sa = D.cos(ang), D.sin(ang)
    for row in range(rows):
        frac = (0.68 if basal else 0.5) if rows == 1 else (0.3 + 0.45 * row)
        rr = _radius_at(harm, R, ca, sa) + t * frac + D.uniform(rng, -0.12, 0.12, n) * t
        cv.nuclei.add(rng, cx + rr * ca, cy + rr * sa, r=nuc_r, elong=(1.1, 1.6) if basal else (1.0, 1.3),
                      dark=dark, irr=irr, nucleolus=nucleolus, texture=0.25, cos=ca, sin=sa)


def _place_disks(rng, n, hw, r_range, allowed=None, gap=2.0, tries=40, taken=None):
    """Up to ``n`` non-overlapping discs (x, y, r) with centres where ``allowed`` is set: ``n * tries``
    candidates drawn at once, accepted greedily in order (neighbours found through a grid of cells)."""
    h, w = hw
    m = n * tries
    r = D.uniform(rng, r_range[0], r_range[1], m)
    x = -0.1 * r + (w + 0.2 * r) * rng.random(m)
    y = -0.1 * r + (h + 0.2 * r) * rng.random(m)
    if allowed is not None:
        ok = _inside(allowed, x, y)
        x, y, r = x[ok], y[ok], r[ok]
    old = list(taken or [])
    reach = 2.0 * max([float(r_range[1])] + [c for _, _, c in old]) + gap
    grid: dict[tuple[int, int], list] = {}

    def put(d):
        grid.setdefault((int(d[0] // reach), int(d[1] // reach)), []).append(d)

    for d in old:
        put(d)
    new = []
    for xi, yi, ri in zip(x.tolist(), y.tolist(), r.tolist()):
        if len(new) >= n:
            break
        gx, gy = int(xi // reach), int(yi // reach)
        clash = False
        for cx in (gx - 1, gx, gx + 1):
            for cy in (gy - 1, gy, gy + 1):
                for a, b, c in grid.get((cx, cy), ()):
                    lim = c + ri + gap
                    if (a - xi) * (a - xi) + (b - yi) * (b - yi) <= lim * lim:
                        clash = True
                        break
                if clash:
                    break
            if clash:
                break
        if not clash:
            put((xi, yi, ri))
            new.append((xi, yi, ri))
    return new


# ----------------------------------------------------------------------------- prostate
def _benign_glands(rng, cv, s, allowed, n, taken=None):
    placed = _place_disks(rng, n, cv.hw, (28.0 * s, 62.0 * s), allowed, gap=12.0 * s, taken=taken)
    for x, y, R in placed:
        harm = _harmonics(rng, [0.18, 0.1, 0.0, 0.0, 0.07, 0.08, 0.07, 0.06])  # oval, papillary infoldings
        _gland(rng, cv, x, y, R, s=s, t=11.0 * s, harm=harm, nuc_r=(2.6 * s, 3.2 * s), dark=(0.45, 0.6),
               spacing=7.5 * s, secretion=0.12 * float(rng.random() < 0.4), epi_e=0.3, epi_h=0.03)
        if rng.random() < 0.8:  # flattened basal cells outside the secretory layer
            n_b = max(4, int(TWO_PI * R / (16.0 * s)))
            ang = TWO_PI * (np.arange(n_b) + rng.random(n_b) * 0.5) / n_b
            ca, sa = D.cos(ang), D.sin(ang)
            rr = R * 1.02 + 11.5 * s
            cv.nuclei.add(rng, x + rr * ca, y + rr * sa, r=(1.8 * s, 2.3 * s), elong=(2.5, 3.5),
                          dark=(0.55, 0.7), cos=-sa, sin=ca)
    return placed


def _region(rng, hw, coverage: float, s: float) -> np.ndarray:
    """A smooth blob covering about ``coverage`` of the tile (the tumour area)."""
    h, w = hw
    cx, cy = D.uniform(rng, 0.2 * w, 0.8 * w), D.uniform(rng, 0.2 * h, 0.8 * h)
    yy = (np.arange(h, dtype=np.float64)[:, None] - cy) / h
    xx = (np.arange(w, dtype=np.float64)[None, :] - cx) / w
    f = _lowfreq(rng, hw, 110.0 * s).astype(np.float64) * 0.6 - 2.2 * (xx * xx + yy * yy)
    thr = D.percentile(f[::4, ::4], 100.0 * (1.0 - coverage))
    return f > thr


def _tumour_g3(rng, cv, s, region, nuc):
    placed = _place_disks(rng, 400, cv.hw, (7.0 * s, 14.0 * s), region, gap=7.0 * s, tries=12)
    for x, y, R in placed:
        harm = _harmonics(rng, [0.15, 0.05])
        _gland(rng, cv, x, y, R * 0.55, s=s, t=R * 0.45 + 3.0 * s, harm=harm, nuc_r=nuc, dark=(0.65, 0.85),
               irr=0.12, nucleolus=0.5, spacing=6.5 * s, epi_e=0.36, epi_h=0.08)
    return len(placed)


def _mass(rng, cv, s, x, y, R, lumina, lum_r, nuc, region=None, slit=False):
    """An epithelial mass (fused glands) with ``lumina`` small lumens; nuclei throughout."""
    harm = _harmonics(rng, [0.2, 0.12, 0.08, 0.05])
    box, fx, fy = _box(cv.hw, x, y, R * 1.5 + 3)
    if box is None:
        return
    d = np.sqrt(fx * fx + fy * fy) + 1e-9
    rho = _radius_at(harm, R, fx / d, fy / d)
    fp = np.clip(rho - d + 0.5, 0.0, 1.0)
    cv.paint(fp, 0.27, 0.13, box)
    holes = []
    for _ in range(lumina):
        a = TWO_PI * float(rng.random())
        rr = R * 0.72 * math.sqrt(float(rng.random()))
        hx, hy = x + rr * D.cos_s(a), y + rr * D.sin_s(a)
        hr = D.uniform(rng, *lum_r)
        if any((hx - p) ** 2 + (hy - q) ** 2 < (hr + r_ + 4.0 * s) ** 2 for p, q, r_ in holes):
            continue
        holes.append((hx, hy, hr))
        hb, hfx, hfy = _box(cv.hw, hx, hy, hr * (2.2 if slit else 1.0) + 2)
        if hb is None:
            continue
        if slit:
            ang = TWO_PI * float(rng.random())
            ca, sa = D.cos_s(ang), D.sin_s(ang)
            u, v = hfx * ca + hfy * sa, hfy * ca - hfx * sa
            dd = np.sqrt(u * u / 4.0 + v * v)
        else:
            dd = np.sqrt(hfx * hfx + hfy * hfy)
        cv.paint(np.clip(hr - dd + 0.5, 0.0, 1.0), 0.0, 0.0, hb)
    gx, gy = _grid_points(rng, (y - R * 1.5, x - R * 1.5, y + R * 1.5, x + R * 1.5), 8.6 * s)
    dx, dy = gx - x, gy - y
    dd = np.sqrt(dx * dx + dy * dy) + 1e-9
    ok = dd < _radius_at(harm, R, dx / dd, dy / dd) - 2.0 * s
    for hx, hy, hr in holes:
        ok &= (gx - hx) ** 2 + (gy - hy) ** 2 > (hr * (2.0 if slit else 1.0) + 2.5 * s) ** 2
    if region is not None:
        ok &= _inside(region, gx, gy)
    cv.nuclei.add(rng, gx[ok], gy[ok], r=nuc, dark=(0.6, 0.8), irr=0.15, nucleolus=0.45, texture=0.25)


def _tumour_g4(rng, cv, s, region, nuc, cribriform):
    n = 0
    if cribriform:
        for x, y, R in _place_disks(rng, 16, cv.hw, (28.0 * s, 58.0 * s), region, gap=5.0 * s):
            _mass(rng, cv, s, x, y, R, lumina=int(R * R / (45.0 * s * s)), lum_r=(4.0 * s, 9.0 * s), nuc=nuc)
            n += 1
    else:
        for x, y, R in _place_disks(rng, 60, cv.hw, (18.0 * s, 36.0 * s), region, gap=2.0 * s):
            _mass(rng, cv, s, x, y, R, lumina=int(rng.integers(1, 5)), lum_r=(2.5 * s, 5.0 * s), nuc=nuc, slit=True)
            n += 1
        # poorly formed small glands and cords between the fused ones
        for x, y, R in _place_disks(rng, 30, cv.hw, (5.0 * s, 9.0 * s), region, gap=3.0 * s, tries=10):
            _mass(rng, cv, s, x, y, R, lumina=0, lum_r=(1.0, 1.0), nuc=nuc)
    return n


def _tumour_g5(rng, cv, s, region, nuc, comedo):
    reg = D.blur(region.astype(np.float32), 1.5 * s)
    cv.paint(reg, 0.38, 0.1)
    h, w = cv.hw
    gx, gy = _grid_points(rng, (0, 0, h, w), 9.0 * s, jitter=0.9)
    ok = _inside(region, gx, gy)
    necrosis = None
    if comedo:
        ys, xs = np.nonzero(region[::8, ::8])
        k = int(rng.integers(len(ys)))
        ncx, ncy, nr = xs[k] * 8.0 + 4, ys[k] * 8.0 + 4, D.uniform(rng, 22.0 * s, 40.0 * s)
        box, fx, fy = _box(cv.hw, ncx, ncy, nr + 2)
        d = np.sqrt(fx * fx + fy * fy)
        fp = np.clip(nr - d + 0.5, 0.0, 1.0) * region[box[0]:box[2], box[1]:box[3]]
        cv.paint(fp, 0.75, 0.05, box)
        ok &= (gx - ncx) ** 2 + (gy - ncy) ** 2 > (nr + 2.0) ** 2
        m = int(nr * nr / (12.0 * s * s))  # nuclear debris
        ang, rad = TWO_PI * rng.random(m), nr * np.sqrt(rng.random(m))
        cv.nuclei.add(rng, ncx + rad * D.cos(ang), ncy + rad * D.sin(ang), r=(0.7 * s, 1.4 * s),
                      dark=(0.6, 0.9), texture=0.0)
        necrosis = (float(ncx), float(ncy), float(nr))
    cv.nuclei.add(rng, gx[ok], gy[ok], r=nuc, elong=(1.0, 1.5), dark=(0.6, 0.85), irr=0.22, nucleolus=0.35,
                  texture=0.2)
    return necrosis


def prostate(rng, hw, grade: str, s: float = 1.0) -> Tile:
    """A prostate biopsy tile: benign glands in fibromuscular stroma, plus a tumour area of ``grade``
    (g3: small well-formed glands; g4: fused glands; g4c: cribriform; g5: solid sheets)."""
    if grade not in PROSTATE:
        raise ValueError(f"prostate grade must be one of {PROSTATE}, not {grade!r}")
    cv = _Canvas(hw)
    _stroma(rng, cv, s, density=D.uniform(rng, 0.5, 0.65))
    _vessels(rng, cv, s, int(rng.integers(1, 4)))
    info: dict = {"kind": grade, "organ": "prostate"}
    region = None
    if grade == "benign":
        info["benign_glands"] = len(_benign_glands(rng, cv, s, None, int(rng.integers(3, 8))))
    else:
        region = _region(rng, hw, D.uniform(rng, 0.3, 0.75), s)
        info["benign_glands"] = len(_benign_glands(rng, cv, s, ~region, int(rng.integers(0, 4))))
        nuc = (3.3 * s, 4.4 * s)
        if grade == "g3":
            info["tumour_glands"] = _tumour_g3(rng, cv, s, region, nuc)
        elif grade in ("g4", "g4c"):
            info["tumour_masses"] = _tumour_g4(rng, cv, s, region, nuc, grade == "g4c")
        else:
            comedo = bool(rng.random() < 0.4)
            info["necrosis"] = _tumour_g5(rng, cv, s, region, (3.2 * s, 4.8 * s), comedo)
        info["region_fraction"] = round(float(np.count_nonzero(region)) / region.size, 4)
    return Tile(compose(rng, cv), region, info)


# ----------------------------------------------------------------------------- lung
def _voronoi(rng, hw, cell: float, jitter: float = 0.85, warp: float = 0.0):
    """Nearest and second-nearest seed distances of a jittered grid (alveoli), the pixel grid optionally
    warped by ``warp`` pixels of smooth noise (wavy walls): (d1, d2, seed id, seeds)."""
    h, w = hw
    gh, gw = int((h + 2 * warp) / cell) + 4, int((w + 2 * warp) / cell) + 4
    j = rng.random((2, gh, gw)) - 0.5
    gy, gx = np.mgrid[0:gh, 0:gw]
    sy = (gy - 2 + 0.5 + jitter * j[0]) * cell
    sx = (gx - 2 + 0.5 + jitter * j[1]) * cell
    yc = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w)) + 0.5
    xc = np.arange(w, dtype=np.float64)[None, :] + np.zeros((h, 1)) + 0.5
    if warp:
        yc = yc + warp * _lowfreq(rng, hw, 1.3 * cell).astype(np.float64)
        xc = xc + warp * _lowfreq(rng, hw, 1.3 * cell).astype(np.float64)
    iy = np.clip(np.floor(yc / cell).astype(np.int64) + 2, 1, gh - 2)
    ix = np.clip(np.floor(xc / cell).astype(np.int64) + 2, 1, gw - 2)
    d1 = np.full(hw, np.inf)
    d2 = np.full(hw, np.inf)
    idx = np.zeros(hw, np.int64)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            k = (iy + oy) * gw + (ix + ox)
            dy = yc - sy.ravel()[k]
            dx = xc - sx.ravel()[k]
            d = dx * dx + dy * dy
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            idx = np.where(closer, k, idx)
            d1 = np.where(closer, d, d1)
    return np.sqrt(d1), np.sqrt(d2), idx, (sx.ravel(), sy.ravel())


def _alveoli(rng, cv, s, cell, septum, lining=None, collapsed=0.1, seeds_out=None):
    """Alveolar septa (pink, capillaries, flat nuclei) around white air spaces; ``lining``: tumour cells along them."""
    d1, d2, idx, seeds = _voronoi(rng, cv.hw, cell, warp=0.18 * cell)
    e = d2 - d1
    wid = septum * (1.0 + 0.35 * _lowfreq(rng, cv.hw, 40.0 * s).astype(np.float64))
    sep = np.clip((wid - e) * 0.7 + 0.5, 0.0, 1.0)
    filled = rng.random(len(seeds[0])) < collapsed
    sep = np.maximum(sep, filled[idx] * 0.8)
    cv.paint(sep, 0.62, 0.02)
    cv.B += (sep * (rng.random(cv.hw) < 0.05) * 0.8 * (e < wid * 0.6)).astype(np.float32)
    ys, xs = np.nonzero(sep > 0.5)
    n = len(ys) // int(110 * s * s) + 1
    k = rng.integers(0, len(ys), n) if len(ys) else np.zeros(0, np.int64)
    cv.nuclei.add(rng, xs[k] + 0.5, ys[k] + 0.5, r=(1.8 * s, 2.4 * s), elong=(1.5, 2.6), dark=(0.45, 0.65))
    if lining is not None:
        ys, xs = np.nonzero((e > wid * 0.55) & (e < wid * 1.05))
        n = len(ys) // int(lining["per"] * s * s) + 1
        k = rng.integers(0, len(ys), n) if len(ys) else np.zeros(0, np.int64)
        cv.nuclei.add(rng, xs[k] + 0.5, ys[k] + 0.5, r=lining["r"], elong=(1.0, 1.4), dark=(0.7, 0.9),
                      irr=0.15, nucleolus=0.3, texture=0.2)
    if seeds_out is not None:
        seeds_out.extend(zip(seeds[0][~filled], seeds[1][~filled]))
    # alveolar macrophages in some air spaces
    m = int(cv.hw[0] * cv.hw[1] / (9000.0 * s * s))
    mx, my = D.uniform(rng, 0, cv.hw[1], m), D.uniform(rng, 0, cv.hw[0], m)
    ok = e[np.clip(my.astype(np.int64), 0, cv.hw[0] - 1), np.clip(mx.astype(np.int64), 0, cv.hw[1] - 1)] > 2 * septum
    for x, y in zip(mx[ok], my[ok]):
        box, fx, fy = _box(cv.hw, x, y, 7 * s)
        if box is not None:
            cv.paint(np.clip(5.5 * s - np.sqrt(fx * fx + fy * fy), 0.0, 1.0) * 0.8, 0.35, 0.04, box)
    cv.nuclei.add(rng, mx[ok], my[ok], r=(2.0 * s, 2.6 * s), dark=(0.5, 0.7))


def _papillae(rng, cv, s, nuc):
    """Branching fibrovascular cores lined by tumour cells, in white space."""
    h, w = cv.hw
    cv.E[:] = np.float32(0.03)
    cv.Hd[:] = 0
    segs = []
    roots = _place_disks(rng, 7, cv.hw, (1.0, 1.0), None, gap=0.3 * min(h, w), tries=20)
    limit = int(h * w / (700.0 * s * s))
    for x, y, _ in roots:
        stack = [(x, y, TWO_PI * float(rng.random()), 0)]
        while stack and len(segs) < limit:
            x, y, a, depth = stack.pop(0)
            ln = D.uniform(rng, 22.0 * s, 45.0 * s)
            x2, y2 = x + ln * D.cos_s(a), y + ln * D.sin_s(a)
            segs.append((x, y, x2, y2, D.uniform(rng, 5.0 * s, 9.0 * s) / (1.0 + 0.25 * depth)))
            inside = -10 < x2 < w + 10 and -10 < y2 < h + 10
            if depth < 4 and inside:
                for sgn in (-1.0, 1.0):
                    if rng.random() < 0.8:
                        stack.append((x2, y2, a + sgn * D.uniform(rng, 0.4, 1.0), depth + 1))
    core = np.full((h, w), 1e9)
    t = 8.5 * s
    for x, y, x2, y2, rc in segs:
        vx, vy = x2 - x, y2 - y
        ll = vx * vx + vy * vy
        m_ = rc + t + 2.0
        y0, y1 = max(0, int(min(y, y2) - m_)), min(h, int(max(y, y2) + m_) + 1)
        x0, x1 = max(0, int(min(x, x2) - m_)), min(w, int(max(x, x2) + m_) + 1)
        if y0 < y1 and x0 < x1:
            yy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
            xx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
            tt = np.clip(((xx - x) * vx + (yy - y) * vy) / ll, 0.0, 1.0)
            px, py = xx - (x + tt * vx), yy - (y + tt * vy)
            sub = core[y0:y1, x0:x1]
            np.minimum(sub, np.sqrt(px * px + py * py) - rc, out=sub)
        ln = math.sqrt(ll)
        nx, ny = -vy / ln, vx / ln
        m = max(2, int(ln / (2.2 * nuc[1])))
        f = (np.arange(m) + 0.5) / m
        for sgn in (-1.0, 1.0):
            off = sgn * (rc + 0.6 * t)
            cv.nuclei.add(rng, x + f * vx + off * nx, y + f * vy + off * ny, r=nuc, elong=(1.1, 1.5),
                          dark=(0.7, 0.9), irr=0.15, nucleolus=0.3, cos=np.full(m, nx), sin=np.full(m, ny))
    cv.paint(np.clip(t - core + 0.5, 0.0, 1.0), 0.4, 0.09)
    cv.paint(np.clip(-core + 0.5, 0.0, 1.0), 0.7, 0.01)
    cv.B += (np.clip(-core - 1.0, 0.0, 1.0) * (rng.random((h, w)) < 0.15) * 0.7).astype(np.float32)
    return len(segs)


def _tufts(rng, cv, s, centres, nuc):
    """Micropapillary tufts: small balls of tumour cells without cores, floating in air spaces."""
    n = 0
    for x, y in centres:
        for _ in range(int(rng.integers(1, 3))):
            tx, ty = x + D.uniform(rng, -6, 6) * s, y + D.uniform(rng, -6, 6) * s
            R = D.uniform(rng, 6.0 * s, 11.0 * s)
            box, fx, fy = _box(cv.hw, tx, ty, R + 4 * s)
            if box is None:
                continue
            d = np.sqrt(fx * fx + fy * fy)
            cv.paint(np.clip(R + 3.0 * s - d + 0.5, 0.0, 1.0), 0.0, 0.0, box)  # retraction halo
            cv.paint(np.clip(R - d + 0.5, 0.0, 1.0), 0.55, 0.1, box)
            m = max(4, int(TWO_PI * R / (2.3 * nuc[1])))
            ang = TWO_PI * (np.arange(m) + rng.random(m) * 0.4) / m
            rr = R - 0.9 * nuc[1]
            cv.nuclei.add(rng, tx + rr * D.cos(ang), ty + rr * D.sin(ang), r=nuc, dark=(0.75, 0.95), irr=0.15)
            n += 1
    return n


def _solid_sheet(rng, cv, s, nuc, region=None):
    """Polygonal tumour cells in sheets: pink cytoplasm, faint cell borders, one nucleus each."""
    h, w = cv.hw
    cell = 12.5 * s
    d1, d2, _, seeds = _voronoi(rng, cv.hw, cell, jitter=0.7)
    border = np.clip(1.6 * s - (d2 - d1), 0.0, 1.0)
    fp = np.ones(cv.hw, np.float32) if region is None else D.blur(region.astype(np.float32), 1.5 * s)
    cv.paint(fp, 0.5 + 0.15 * border, 0.07)
    x, y = np.asarray(seeds[0]), np.asarray(seeds[1])
    ok = (x > -4) & (x < w + 4) & (y > -4) & (y < h + 4)
    if region is not None:
        ok &= _inside(region, x, y)
    cv.nuclei.add(rng, x[ok], y[ok], r=nuc, elong=(1.0, 1.35), dark=(0.65, 0.9), irr=0.18, nucleolus=0.45,
                  texture=0.3)


def lung(rng, hw, kind: str, s: float = 1.0) -> Tile:
    """A lung tile: normal alveolar lung, tumour-associated stroma, or an adenocarcinoma pattern."""
    if kind not in LUNG:
        raise ValueError(f"lung kind must be one of {LUNG}, not {kind!r}")
    cv = _Canvas(hw)
    info: dict = {"kind": kind, "organ": "lung"}
    nuc = (3.2 * s, 4.6 * s)
    if kind == "lung_tumor":  # WSSS4LUAD tumour epithelium: solid or acinar, filling most of the patch
        kind = "solid" if rng.random() < 0.5 else "acinar"
        info["pattern"] = kind
    if kind == "normal_lung":
        _alveoli(rng, cv, s, D.uniform(rng, 34.0, 48.0) * s, D.uniform(rng, 2.2, 3.4) * s, collapsed=0.08)
    elif kind == "tumor_stroma":
        _stroma(rng, cv, s, density=D.uniform(rng, 0.45, 0.6), clefts=0.2)
        m = int(hw[0] * hw[1] / (D.uniform(rng, 300.0, 900.0) * s * s))  # lymphocytes
        cx, cy = D.uniform(rng, 0, hw[1]), D.uniform(rng, 0, hw[0])
        lx = np.clip(cx + D.normal(rng, 0, 0.35 * hw[1], m), 0, hw[1] - 1)
        ly = np.clip(cy + D.normal(rng, 0, 0.35 * hw[0], m), 0, hw[0] - 1)
        cv.nuclei.add(rng, lx, ly, r=(2.0 * s, 2.6 * s), elong=(1.0, 1.1), dark=(0.85, 1.0), texture=0.05)
        _vessels(rng, cv, s, int(rng.integers(1, 4)))
        info["lymphocytes"] = m
    elif kind == "lepidic":
        _alveoli(rng, cv, s, D.uniform(rng, 40.0, 55.0) * s, D.uniform(rng, 3.5, 5.0) * s, collapsed=0.03,
                 lining={"per": 30.0, "r": nuc})
    elif kind == "acinar":
        _stroma(rng, cv, s, density=D.uniform(rng, 0.35, 0.5), clefts=0.1)
        placed = _place_disks(rng, 120, hw, (9.0 * s, 18.0 * s), None, gap=5.0 * s, tries=8)
        for x, y, R in placed:
            _gland(rng, cv, x, y, R * 0.5, s=s, t=R * 0.5 + 3.5 * s, harm=_harmonics(rng, [0.25, 0.12, 0.06]),
                   nuc_r=nuc, dark=(0.7, 0.9), irr=0.15, nucleolus=0.3, spacing=7.5 * s, epi_e=0.42, epi_h=0.1)
        info["glands"] = len(placed)
    elif kind == "papillary":
        info["papillae"] = _papillae(rng, cv, s, nuc)
    elif kind == "micropapillary":
        centres: list = []
        _alveoli(rng, cv, s, D.uniform(rng, 42.0, 56.0) * s, D.uniform(rng, 2.0, 3.0) * s, collapsed=0.02,
                 seeds_out=centres)
        info["tufts"] = _tufts(rng, cv, s, centres, (2.8 * s, 3.8 * s))
    elif kind == "solid":
        _solid_sheet(rng, cv, s, nuc)
    return Tile(compose(rng, cv), None, info)


# ----------------------------------------------------------------------------- colour
def compose(rng, cv: _Canvas) -> np.ndarray:
    """Stain densities → RGB uint8: per-channel transmission ``bg (1 - kH H)(1 - kE E)(1 - kB B)``,
    with a per-tile stain strength, slight optical blur and sensor noise."""
    h, w = cv.hw
    H = np.clip(cv.nuclei.stamp(rng, cv.hw) + cv.Hd, 0.0, 1.0)
    E = np.clip(cv.E, 0.0, 1.0)
    Bl = np.clip(cv.B, 0.0, 1.0)
    fh, fe = D.uniform(rng, 0.85, 1.1), D.uniform(rng, 0.8, 1.15)
    tint = D.uniform(rng, -0.015, 0.015, 3)
    out = np.empty((h, w, 3), np.uint8)
    grain = D.blur(D.white(rng, (h, w)), 0.6) * np.float32(0.012)
    for c in range(3):
        t = np.float32(0.955 + float(tint[c])) * (np.float32(1.0) - np.float32(K_HAEM[c] * fh) * H)
        t = t * (np.float32(1.0) - np.float32(K_EOS[c] * fe) * E)
        t = t * (np.float32(1.0) - np.float32(K_BLOOD[c]) * Bl)
        t = D.blur(t, 0.55) + grain
        out[..., c] = D.to_uint8(t)
    return out


def render(rng, kind: str, hw, s: float = 1.0) -> Tile:
    """A tile of ``kind`` (one of ``KINDS``) at size ``hw``; ``s`` scales every structure (pixels per micron)."""
    if kind in PROSTATE:
        return prostate(rng, hw, kind, s)
    return lung(rng, hw, kind, s)


def mixed(rng, hw, kinds: list[str], s: float = 1.0) -> Tile:
    """A tile showing several ``kinds`` side by side (a patch with more than one label): the first kind
    everywhere, each further one over a smooth blob of about 30-50 % of the tile."""
    base = render(rng, kinds[0], hw, s)
    rgb = base.rgb.copy()
    for k in kinds[1:]:
        over = render(rng, k, hw, s)
        region = _region(rng, hw, D.uniform(rng, 0.3, 0.5), s)
        rgb[region] = over.rgb[region]
    return Tile(rgb, None, {"kind": "+".join(kinds), "organ": base.info.get("organ"), "parts": list(kinds)})


def block_mask(region: np.ndarray, block: int = 8) -> np.ndarray:
    """``region`` quantised to ``block``-pixel squares (a square is set when at least half of it is):
    such a mask survives JPEG coding exactly (each 8x8 block is flat)."""
    h, w = region.shape
    if h % block or w % block:
        raise ValueError(f"mask size {h}x{w} is not a multiple of {block}")
    frac = region.reshape(h // block, block, w // block, block).sum(axis=(1, 3), dtype=np.int64)
    on = frac * 2 >= block * block
    return np.repeat(np.repeat(on, block, axis=0), block, axis=1)


def provenance(job, tile: Tile, **extra) -> dict:
    """The per-image record of ``provenance/<set>.jsonl``."""
    return {"split": job.split, "index": job.index, "kind": job.extra.get("kind"), "info": tile.info,
            "missing": [], **extra}
