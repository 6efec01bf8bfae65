"""Deterministic numerics for the demo generator: the same bits on every CPU and library version.

numpy's transcendental ufuncs (``exp``, ``log``, ``sin``, ``power`` ...) and OpenCV's filters and
resamplers pick SIMD code paths at run time whose last bits differ from one instruction set to
another; numpy's float reductions sum in an order that depends on the build; numpy's normal
deviates use C-library ``exp``/``log`` in the ziggurat's tails. Everything the generator computes
with floats is therefore made here of IEEE-754 ``+ - * /`` and ``sqrt`` (each correctly rounded,
so identical everywhere), applied elementwise in a fixed order:

- elementary functions (``exp``, ``log``, ``sin``, ``cos``, ``pow``): range reduction with exactly
  representable constants, then Taylor polynomials by Horner's rule, in float64. Accurate to a
  few ulp and, above all, the same on every machine. Scalar twins (``exp_s`` ...) in plain Python
  floats do the same operations in the same order, so they give the same bits as the arrays.
- random numbers: only the generators' integers and uniform doubles (``Generator.random``,
  ``random.Random.random``; both platform independent), turned into normals by Box-Muller.
- blurs and resampling: separable convolutions over explicit kernel taps and bilinear
  interpolation with precomputed weights, in float32 (elementwise float32 arithmetic is exact
  IEEE too); large blurs run on an exactly block-averaged copy.
- sums of whole images: in exact integer (fixed-point) arithmetic, so the order does not matter.

Mixing numpy float scalars with arrays is avoided (numpy 2 promotes ``float32 array * float64
scalar`` to float64, numpy 1 did not): scalars passed in here are plain Python numbers.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# ----------------------------------------------------------------------------- constants
# fdlibm's split constants: the high parts have trailing zero bits, so k * HI is exact
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e+00
PIO2_1 = 1.57079632673412561417e+00
PIO2_2 = 6.07710050630396597660e-11
PIO2_3 = 2.02226624871116645580e-21
TWO_OVER_PI = 6.36619772367581382433e-01
SQRT_HALF = 0.7071067811865476
TWO_PI = 2.0 * math.pi  # math.pi is a literal constant; doubling is exact

_EXP_C = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))  # 1/13! ... 1/0!, exact quotients
_LOG_C = tuple(1.0 / (2 * k + 1) for k in range(11, 0, -1))  # z^k / (2k + 1), k = 11 .. 1
_SIN_C = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(9, 0, -1))  # r^(2k+1) terms, k = 9 .. 1
_COS_C = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(9, 0, -1))  # r^(2k) terms, k = 9 .. 1


# ----------------------------------------------------------------------------- elementary functions
def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def exp(x) -> np.ndarray:
    """e**x of a float64 array (elementwise, deterministic)."""
    x = np.clip(_f64(x), -745.0, 709.0)
    k = np.rint(x * INV_LN2)
    r = (x - k * LN2_HI) - k * LN2_LO  # |r| <= ln2 / 2
    p = np.full_like(r, _EXP_C[0])
    for c in _EXP_C[1:]:
        p *= r
        p += c
    return np.ldexp(p, k.astype(np.int32))


def exp_s(x: float) -> float:
    x = min(max(float(x), -745.0), 709.0)
    k = float(round(x * INV_LN2))
    r = (x - k * LN2_HI) - k * LN2_LO
    p = _EXP_C[0]
    for c in _EXP_C[1:]:
        p = p * r + c
    return math.ldexp(p, int(k))


def log(x) -> np.ndarray:
    """Natural logarithm of a float64 array of positive numbers."""
    m, e = np.frexp(_f64(x))  # x = m * 2**e, m in [0.5, 1)
    low = m < SQRT_HALF
    m = np.where(low, m * 2.0, m)  # m in [sqrt(1/2), sqrt(2))
    e = (e - low).astype(np.float64)
    f = m - 1.0
    s = f / (2.0 + f)  # (m - 1) / (m + 1), |s| <= 0.1716
    z = s * s
    p = np.full_like(z, _LOG_C[0])
    for c in _LOG_C[1:]:
        p *= z
        p += c
    p *= z  # sum_k z^k / (2k + 1), k >= 1
    lm = 2.0 * s + 2.0 * s * p  # log(m) = 2 atanh(s)
    return e * LN2_HI + (lm + e * LN2_LO)


def log_s(x: float) -> float:
    m, e = math.frexp(float(x))
    if m < SQRT_HALF:
        m, e = m * 2.0, e - 1
    e = float(e)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    p = _LOG_C[0]
    for c in _LOG_C[1:]:
        p = p * z + c
    p = p * z
    lm = 2.0 * s + 2.0 * s * p
    return e * LN2_HI + (lm + e * LN2_LO)


def _reduce(x):
    k = np.rint(x * TWO_OVER_PI)
    r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3  # |r| <= pi / 4 (for |x| < 2**20)
    return r, k.astype(np.int64) & 3


def _sincos_r(r):
    z = r * r
    s = np.full_like(z, _SIN_C[0])
    for c in _SIN_C[1:]:
        s *= z
        s += c
    s *= z
    s = r + r * s
    c_ = np.full_like(z, _COS_C[0])
    for c in _COS_C[1:]:
        c_ *= z
        c_ += c
    c_ *= z
    return s, 1.0 + c_


def sin(x) -> np.ndarray:
    r, q = _reduce(_f64(x))
    s, c = _sincos_r(r)
    return np.choose(q, (s, c, -s, -c))


def cos(x) -> np.ndarray:
    r, q = _reduce(_f64(x))
    s, c = _sincos_r(r)
    return np.choose(q, (c, -s, -c, s))


def _sincos_s(x: float) -> tuple[float, float]:
    x = float(x)
    k = float(round(x * TWO_OVER_PI))
    r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3
    z = r * r
    s = _SIN_C[0]
    for c in _SIN_C[1:]:
        s = s * z + c
    s = r + r * (s * z)
    c_ = _COS_C[0]
    for c in _COS_C[1:]:
        c_ = c_ * z + c
    c_ = 1.0 + c_ * z
    q = int(k) & 3
    return ((s, c_), (c_, -s), (-s, -c_), (-c_, s))[q]


def sin_s(x: float) -> float:
    return _sincos_s(x)[0]


def cos_s(x: float) -> float:
    return _sincos_s(x)[1]


def pow(x, y: float) -> np.ndarray:  # noqa: A001 - the mathematical name
    """``x ** y`` of a float64 array of non-negative numbers (0 ** y = 0 for y > 0)."""
    x = _f64(x)
    pos = x > 0
    out = exp(float(y) * log(np.where(pos, x, 1.0)))
    return np.where(pos, out, 0.0)


def pow_s(x: float, y: float) -> float:
    x = float(x)
    return exp_s(float(y) * log_s(x)) if x > 0 else 0.0


# ----------------------------------------------------------------------------- random numbers
def uniform(rng: np.random.Generator, low: float = 0.0, high: float = 1.0, size=None):
    """Uniform on [low, high) as ``low + (high - low) * u`` in separate IEEE operations
    (numpy's own ``uniform`` may fuse them on CPUs with FMA)."""
    low, high = float(low), float(high)
    if size is None:
        return low + (high - low) * float(rng.random())
    return low + (high - low) * rng.random(size)


def normal(rng: np.random.Generator, loc: float = 0.0, scale: float = 1.0, size=None):
    """Normal deviates by Box-Muller (cosine branch) from two uniform doubles each."""
    if size is None:
        u1, u2 = float(rng.random()), float(rng.random())
        r = math.sqrt(-2.0 * log_s(1.0 - u1))  # 1 - u1 in (0, 1]
        return float(loc) + float(scale) * (r * cos_s(TWO_PI * u2))
    u1 = rng.random(size)
    u2 = rng.random(size)
    z = np.sqrt(-2.0 * log(1.0 - u1)) * cos(TWO_PI * u2)
    return float(loc) + float(scale) * z


def gauss(pr, mu: float, sigma: float) -> float:
    """A normal deviate from a ``random.Random`` (whose own ``gauss`` calls the C library)."""
    u1, u2 = pr.random(), pr.random()
    r = math.sqrt(-2.0 * log_s(1.0 - u1))
    return float(mu) + float(sigma) * (r * cos_s(TWO_PI * u2))


def white(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance white noise (uniform; it becomes Gaussian once blurred), float32."""
    return ((rng.random(shape) - 0.5) * math.sqrt(12.0)).astype(np.float32)


# ----------------------------------------------------------------------------- exact statistics
FIX = 1 << 16  # fixed-point scale of the exact sums (|values| < 2**15, up to 2**22 of them)


def mean_std(a: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``a`` from exact integer sums of its fixed-point values."""
    q = np.rint(np.asarray(a, np.float64) * FIX).astype(np.int64)
    n = q.size
    s1 = int(q.sum())
    s2 = int((q * q).sum())
    mean = s1 / (n * FIX)
    var = (n * s2 - s1 * s1) / (n * n * FIX * FIX)
    return mean, math.sqrt(max(var, 0.0))


def median(values) -> float:
    """Median of a 1-D array (the mean of the middle two for an even count)."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = len(v)
    if n % 2:
        return float(v[n // 2])
    return (float(v[n // 2 - 1]) + float(v[n // 2])) / 2.0


def percentile(values, q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of a 1-D array."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    pos = (len(v) - 1) * (float(q) / 100.0)
    i = min(int(pos), len(v) - 1)
    j = min(i + 1, len(v) - 1)
    t = pos - i
    a, b = float(v[i]), float(v[j])
    return a + (b - a) * t


def interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation (``np.interp`` semantics; ``xp`` increasing), float64."""
    x, xp, fp = _f64(x), _f64(xp), _f64(fp)
    if len(xp) == 1:
        return np.full_like(x, fp[0])
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    x0, x1, y0, y1 = xp[j], xp[j + 1], fp[j], fp[j + 1]
    y = y0 + (y1 - y0) * ((x - x0) / (x1 - x0))
    return np.where(x <= xp[0], fp[0], np.where(x >= xp[-1], fp[-1], y))


def nodes(lo: float, hi: float, n: int = 4096) -> np.ndarray:
    """``n`` equally spaced float64 nodes from ``lo`` to ``hi`` (the table grid of ``curve``)."""
    return float(lo) + (float(hi) - float(lo)) * (np.arange(n, dtype=np.float64) / (n - 1))


def curve(x: np.ndarray, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A function tabulated at ``nodes(lo, hi, len(values))`` applied to float32 ``x`` (clipped to
    [lo, hi]) by linear interpolation: a few float32 operations per pixel instead of a polynomial."""
    v = np.asarray(values, np.float64).astype(np.float32)
    n = len(v)
    step = np.append(v[1:] - v[:-1], np.float32(0.0))
    lo, hi = float(lo), float(hi)
    u = (np.clip(np.asarray(x, np.float32), lo, hi) - np.float32(lo)) * np.float32((n - 1) / (hi - lo))
    i = np.minimum(u.astype(np.int32), n - 2)  # u >= 0: truncation is floor
    t = u - i.astype(np.float32)
    return v[i] + step[i] * t


# ----------------------------------------------------------------------------- blur
@functools.lru_cache(maxsize=512)
def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised taps ``w[0..r]`` (w[k] weighs both offsets +-k) of a Gaussian, r = ceil(3 sigma)."""
    sigma = float(sigma)
    r = max(1, math.ceil(3.0 * sigma))
    w = [exp_s(-(k * k) / (2.0 * sigma * sigma)) for k in range(r + 1)]
    total = w[0]
    for v in w[1:]:
        total += 2.0 * v
    return np.array([v / total for v in w], np.float32)


def _mirror(n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of the ``r`` mirrored entries before and after an axis of length n > r
    (OpenCV's BORDER_REFLECT_101: ``dcb|abcd|cba``)."""
    return np.arange(r, 0, -1), np.arange(n - 2, n - 2 - r, -1)


def _conv_rows(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Convolve along axis 0 with a symmetric kernel, mirrored borders (OpenCV's BORDER_REFLECT_101)."""
    h = a.shape[0]
    r = min(len(taps) - 1, h - 1)
    if r < 1:
        return a.copy()
    before, after = _mirror(h, r)
    p = np.empty((h + 2 * r,) + a.shape[1:], a.dtype)
    p[r:r + h] = a
    p[:r] = a[before]
    p[r + h:] = a[after]
    out = p[r:r + h] * taps[0]
    tmp = np.empty_like(out)
    for k in range(1, r + 1):
        np.add(p[r - k:r - k + h], p[r + k:r + k + h], out=tmp)
        tmp *= taps[k]
        out += tmp
    return out


def _conv_cols(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Convolve along axis 1 of a 2-D array: the padded rows laid end to end, so that every tap is
    one contiguous operation (the outputs that straddle two rows are dropped)."""
    h, w = a.shape
    r = min(len(taps) - 1, w - 1)
    if r < 1:
        return a.copy()
    wp = w + 2 * r
    before, after = _mirror(w, r)
    p = np.empty((h, wp), a.dtype)
    p[:, r:r + w] = a
    p[:, :r] = np.take(a, before, axis=1)
    p[:, r + w:] = np.take(a, after, axis=1)
    flat = p.ravel()
    n = flat.size
    out = np.empty(n, a.dtype)
    body = out[:n - 2 * r]
    np.multiply(flat[r:n - r], taps[0], out=body)
    tmp = np.empty_like(body)
    for k in range(1, r + 1):
        np.add(flat[r - k:n - r - k], flat[r + k:n - r + k], out=tmp)
        tmp *= taps[k]
        body += tmp
    return out.reshape(h, wp)[:, :w]


def blur1d(v: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 1-D float array (float64 in, float64 out)."""
    v = _f64(v)
    if sigma <= 0.3:
        return v.copy()
    return _conv_rows(v, gaussian_taps(float(sigma)).astype(np.float64))


DIRECT_MAX_SIGMA = 2.5


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D float32 image (a new array). Only the part with content (and the
    kernel's reach around it) is filtered; larger sigmas run on an exactly block-averaged copy,
    blurred by what is left of sigma and brought back by bilinear interpolation."""
    a = np.asarray(a, np.float32)
    sigma = float(sigma)
    if sigma <= 0.3:
        return a.copy()
    h, w = a.shape
    f = 1 if sigma <= DIRECT_MAX_SIGMA else int(sigma // 1.5)
    reach = math.ceil(3.0 * sigma) + 2 * f + 1
    rows = np.flatnonzero(a.any(axis=1))
    if len(rows) == 0:
        return np.zeros_like(a)
    cols = np.flatnonzero(a.any(axis=0))
    y0, y1 = max(0, int(rows[0]) - reach), min(h, int(rows[-1]) + 1 + reach)
    x0, x1 = max(0, int(cols[0]) - reach), min(w, int(cols[-1]) + 1 + reach)
    if (y1 - y0) * (x1 - x0) < 0.7 * h * w:
        out = np.zeros_like(a)
        out[y0:y1, x0:x1] = _blur(a[y0:y1, x0:x1], sigma, f)
        return out
    return _blur(a, sigma, f)


def _blur(a: np.ndarray, sigma: float, f: int) -> np.ndarray:
    if f <= 1:
        taps = gaussian_taps(sigma)
        return np.ascontiguousarray(_conv_cols(_conv_rows(a, taps), taps))
    h, w = a.shape
    small = block_mean(a, f)
    # block averaging and bilinear interpolation add about (f / 2)**2 of variance
    rest = math.sqrt(max(sigma * sigma / (f * f) - 0.25, 0.25))
    taps = gaussian_taps(round(rest, 3))
    small = _conv_cols(_conv_rows(small, taps), taps)
    hs, ws = small.shape
    return resize(small, (hs * f, ws * f))[:h, :w]


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (the last ones padded by repeating the edge), summed in a fixed order."""
    h, w = a.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    if (hp, wp) != (h, w):
        a = np.pad(a, ((0, hp - h), (0, wp - w)), mode="edge")
    v = a.reshape(hp // f, f, wp // f, f)
    s = v[:, 0, :, 0].copy()
    for dy in range(f):
        for dx in range(f):
            if dy or dx:
                s += v[:, dy, :, dx]
    return s * np.float32(1.0 / (f * f))


# ----------------------------------------------------------------------------- resampling
@functools.lru_cache(maxsize=256)
def _linear_axis(n_src: int, n_dst: int):
    """Source indices and weights of bilinear resampling along one axis (pixel centres aligned,
    borders clamped: OpenCV's INTER_LINEAR)."""
    x = (np.arange(n_dst, dtype=np.float64) + 0.5) * (n_src / n_dst) - 0.5
    x = np.clip(x, 0.0, n_src - 1.0)
    i0 = np.minimum(x.astype(np.int64), n_src - 1)  # x >= 0: truncation is floor
    i1 = np.minimum(i0 + 1, n_src - 1)
    t = x - i0
    return i0, i1, (1.0 - t).astype(np.float32), t.astype(np.float32)


def resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a 2-D float32 image to ``hw`` (columns first, then rows; a new array)."""
    a = np.asarray(a, np.float32)
    h, w = int(hw[0]), int(hw[1])
    if a.shape == (h, w):
        return a.copy()
    if a.shape[1] != w:  # np.take keeps the result C-ordered (fancy indexing on axis 1 would not)
        j0, j1, v0, v1 = _linear_axis(a.shape[1], w)
        a = np.take(a, j0, axis=1) * v0 + np.take(a, j1, axis=1) * v1
    if a.shape[0] != h:
        i0, i1, u0, u1 = _linear_axis(a.shape[0], h)
        a = np.take(a, i0, axis=0) * u0[:, None] + np.take(a, i1, axis=0) * u1[:, None]
    return np.ascontiguousarray(a)


def place(a: np.ndarray, hw: tuple[int, int], sx: float, bx: float, sy: float, by: float) -> np.ndarray:
    """``a`` scaled by (sx, sy) and shifted by (bx, by) onto a zero canvas of size ``hw``, bilinear
    (what ``cv2.warpAffine`` does with an axis-aligned matrix and a constant zero border)."""
    a = np.asarray(a, np.float32)
    h, w = int(hw[0]), int(hw[1])
    (j0, j1, v0, v1) = _shift_axis(a.shape[1], w, float(sx), float(bx))
    (i0, i1, u0, u1) = _shift_axis(a.shape[0], h, float(sy), float(by))
    p = np.pad(a, 1)  # index 0 and n + 1 are the zero border
    cols = np.take(p, j0, axis=1) * v0 + np.take(p, j1, axis=1) * v1
    return np.take(cols, i0, axis=0) * u0[:, None] + np.take(cols, i1, axis=0) * u1[:, None]


def _shift_axis(n_src: int, n_dst: int, s: float, b: float):
    x = (np.arange(n_dst, dtype=np.float64) - b) / s
    x = np.clip(x, -1.0, float(n_src))  # beyond one pixel outside, only the zero border is read
    x0 = np.floor(x)
    t = x - x0
    i0 = (x0.astype(np.int64) + 1).clip(0, n_src + 1)  # +1: the padded border
    i1 = (i0 + 1).clip(0, n_src + 1)
    return i0, i1, (1.0 - t).astype(np.float32), t.astype(np.float32)


def nearest_indices(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each destination index for nearest-neighbour resampling (integer arithmetic)."""
    return (np.arange(n_dst, dtype=np.int64) * n_src) // n_dst


def distance(mask: np.ndarray) -> np.ndarray:
    """Distance of every non-zero pixel to the nearest zero pixel (float32), the octagonal
    approximation ``max(chessboard, city-block / sqrt(2))`` of the Euclidean distance (within 8 %,
    exact along the axes and diagonals). Both parts are OpenCV's integer distance transforms;
    its Euclidean 3x3 and 5x5 ones sum floats in an order that depends on the SIMD path."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    chess = cv2.distanceTransform(m, cv2.DIST_C, 3)
    city = cv2.distanceTransform(m, cv2.DIST_L1, 3)
    return np.maximum(chess, city * np.float32(1.0 / math.sqrt(2.0)))


def disk(r: int) -> np.ndarray:
    """A filled disk of radius ``r`` as a uint8 structuring element (2r + 1 square)."""
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ((xx * xx + yy * yy) <= r * r + r).astype(np.uint8)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounded half to even and saturated."""
    v = np.clip(np.asarray(img, np.float32), 0.0, 1.0) * np.float32(255.0)
    return np.rint(v).astype(np.uint8)
