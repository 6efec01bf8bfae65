"""Bootstrap confidence intervals, vectorised: one weight matrix times per-sample values.

Why this shape: a replicate mean is ``counts @ values / counts @ present`` where
``counts[r, i]`` is how often sample ``i`` was drawn in replicate ``r``. One matrix
product gives every metric and category of a chunk of replicates at once; chunks keep
memory at ``chunk × N`` whatever the number of replicates.

Two ways to draw:
- :func:`unit_weights` (canonical): ``numpy.random.default_rng(seed)``; whole resampling
  units (image or patient) are drawn with replacement, optionally within strata.
- :class:`LegacyStream` (official emulation): the legacy global NumPy stream of
  ``np.random.seed(seed)`` followed by ``np.random.choice(N, N, replace=True)`` once per
  replicate, the draw AFLoc's and CheXlocalize's ``bootstrap_metric`` make. Successive
  ``bootci`` calls continue the same stream, so the order of calls is part of the result.
  :func:`sklearn_resample_indices` emulates AFLoc's classification bootstrap
  (``sklearn.utils.resample(idx, replace=True, random_state=i)``).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

DEFAULT_N_BOOT = 1000
DEFAULT_CHUNK = 100
_BLAS = None


def blas_single_thread():
    """Context that runs BLAS on one thread: the products here are thin ([100, N] × [N, few]),
    and a second BLAS thread on a busy 2-core machine makes them several times slower."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except Exception:  # threadpoolctl missing: leave BLAS alone
            _BLAS = False
    if _BLAS is False:
        import contextlib

        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------
def counts_from_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Index matrix [r, k] of draws from range(n) → multiplicity matrix [r, n] (float64)."""
    idx = np.asarray(idx)
    out = np.empty((idx.shape[0], n), dtype=np.float64)
    for i, row in enumerate(idx):
        out[i] = np.bincount(row, minlength=n)
    return out


# --------------------------------------------------------------------------------------
# The legacy stream's draws, counted without materialising the indices
# --------------------------------------------------------------------------------------
# ``RandomState.randint(0, n, size)`` (and so ``np.random.choice(n, n)`` and sklearn's ``resample``)
# draws each index by masked rejection from the MT19937 stream: take the next 32-bit output, keep
# its low bits (``mask``, the smallest all-ones value >= n - 1), accept it if it is < n, else take
# the next output. NumPy keeps this legacy algorithm frozen (NEP 19). The same values therefore come
# from the raw outputs (``MT19937.random_raw``), masked and filtered in bulk; the stream position
# after the last accepted draw is restored from the raw outputs (MT19937's state is the untempered
# outputs of its current 624-word block). Rejected draws are simply counted into bins >= n and
# dropped, so each replicate's counts are one ``bincount`` of its slice of the masked outputs.
_MT_N = 624
FAST_DRAW_MIN_N = 512  # below, RandomState.randint itself is as fast
# RandomState's rejection loop is fast while it rarely rejects (its branch is then predictable): the
# raw outputs are read in bulk only where more than a quarter of them are rejected (n just above a
# power of two: n = 10,000 rejects 39 %)
FAST_DRAW_MAX_ACCEPT = 0.75


def _untemper(y: np.ndarray) -> np.ndarray:
    """MT19937 state words from their outputs (inverse of the tempering transform)."""
    y = np.asarray(y, dtype=np.uint32)
    y = y ^ (y >> np.uint32(18))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    x = y
    for _ in range(5):
        x = y ^ ((x << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = x
    for _ in range(3):
        x = y ^ (x >> np.uint32(11))
    return x


def _fast_draws_ok(n: int) -> bool:
    return FAST_DRAW_MIN_N <= n < 2**32 - 1 and n / (1 << (n - 1).bit_length()) < FAST_DRAW_MAX_ACCEPT


class _MaskedStream:
    """The masked outputs (``raw & mask``) of an MT19937 bit generator, drawn ahead in pieces and
    consumed replicate by replicate; remembers the raw outputs near the consumption point so that
    the generator's state there can be rebuilt (:meth:`state_at_end`).

    Pieces stay below 128 KiB and the masked values live in one buffer reused across calls, so
    drawing allocates nothing large (fresh large arrays cost a page fault per 4 KiB page)."""

    PIECE = 16_000  # raw outputs per random_raw call

    def __init__(self, bg: np.random.MT19937, n: int, pos0: int):
        self.bg, self.n, self.pos0 = bg, n, pos0
        self.mask = (1 << (n - 1).bit_length()) - 1
        self.accept = n / (self.mask + 1)
        self.buf = _stream_buffer(4 * self.PIECE)
        self.lo = 0  # buf[lo:hi] holds outputs base + lo .. base + hi - 1 (base: outputs drawn before buf[0])
        self.hi = 0
        self.base = 0
        self.raw: list[tuple[int, np.ndarray]] = []  # (index of the first output, raw outputs), recent pieces

    def _draw(self, upto: int) -> None:
        """Make buf hold at least ``upto`` entries past lo."""
        if self.lo + upto > len(self.buf):
            keep = self.buf[self.lo:self.hi].copy()
            if upto > len(self.buf):
                self.buf = _stream_buffer(2 * upto)
            self.buf[:len(keep)] = keep
            self.base += self.lo
            self.hi -= self.lo
            self.lo = 0
        while self.hi - self.lo < upto:
            m = min(self.PIECE, len(self.buf) - self.hi)
            raw = self.bg.random_raw(m)
            np.bitwise_and(raw.view(np.int64), self.mask, out=self.buf[self.hi:self.hi + m])
            self.raw.append((self.base + self.hi, raw))
            self.hi += m
        used = self.base + self.lo
        while len(self.raw) > 1 and self.raw[0][0] + len(self.raw[0][1]) <= used - _MT_N:
            self.raw.pop(0)  # the rebuilt state needs no output more than a block behind the consumption point

    def next_counts(self, out: np.ndarray) -> None:
        """Counts [n] of the next ``randint(0, n, size=n)`` call into ``out`` (float64)."""
        n, accept = self.n, self.accept
        guess = int(n / accept)
        self._draw(guess + 1)
        lo = self.lo
        have = int(np.count_nonzero(self.buf[lo:lo + guess] < n))
        if have >= n:  # the n-th accepted output is at or before the guess: search backwards
            extra, width = have - n + 1, 0
            while True:
                width = min(guess, 2 * width + int(1.5 * extra / accept) + 64)
                hits = np.flatnonzero(self.buf[lo + guess - width:lo + guess] < n)
                if len(hits) >= extra:
                    end = lo + guess - width + int(hits[len(hits) - extra]) + 1
                    break
        else:  # search forwards
            short, width = n - have, 0
            while True:
                width = 2 * width + int(1.5 * short / accept) + 64
                self._draw(guess + width)
                lo = self.lo
                hits = np.flatnonzero(self.buf[lo + guess:lo + guess + width] < n)
                if len(hits) >= short:
                    end = lo + guess + int(hits[short - 1]) + 1
                    break
        out[:] = np.bincount(self.buf[lo:end], minlength=self.mask + 1)[:n]  # rejected outputs: bins >= n
        self.lo = end

    def state_at_end(self, key0: np.ndarray) -> tuple[np.ndarray, int]:
        """(key, pos) of the generator just after the last consumed output."""
        used = self.base + self.lo  # outputs consumed; output i sits at index pos0 + i of its blocks
        if used == 0:
            return key0, self.pos0
        block, last = divmod(self.pos0 + used - 1, _MT_N)
        if block == 0:
            return key0, last + 1
        first = block * _MT_N - self.pos0  # output index of that block's first word
        drawn = self.raw[-1][0] + len(self.raw[-1][1])
        if first + _MT_N > drawn:  # the block's remaining words (the state is reset afterwards)
            self.raw.append((drawn, self.bg.random_raw(first + _MT_N - drawn)))
        words = np.concatenate([r for _, r in self.raw])
        at = first - self.raw[0][0]
        if at < 0 or at + _MT_N > len(words):
            raise RuntimeError("internal error: the outputs of the last MT19937 block were not kept")
        return _untemper(words[at:at + _MT_N]), last + 1


_BUFFERS = threading.local()


def _stream_buffer(size: int) -> np.ndarray:
    """An int64 buffer of at least ``size`` entries, reused within a thread (up to 32 MiB)."""
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None or len(buf) < size:
        buf = np.empty(size, dtype=np.int64)
        if buf.nbytes <= 32 * 2**20:
            _BUFFERS.buf = buf
    return buf


def legacy_counts(rs: np.random.RandomState, n: int, rows: int) -> np.ndarray:
    """Counts [rows, n] (float64) of ``rows`` successive ``rs.randint(0, n, size=n)`` calls.

    The same numbers as ``counts_from_indices`` of those calls, and ``rs`` is left where the calls
    leave it; where the rejection loop often rejects (see ``FAST_DRAW_MAX_ACCEPT``) the draws are
    read from the raw MT19937 outputs (see above)."""
    if rows == 0 or not _fast_draws_ok(n):
        return counts_from_indices(rs.randint(0, n, size=(rows, n)), n)
    state = rs.get_state()
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": state[1], "pos": state[2]}}
    stream = _MaskedStream(bg, n, int(state[2]))
    out = np.empty((rows, n), dtype=np.float64)
    for i in range(rows):
        stream.next_counts(out[i])
    key, pos = stream.state_at_end(state[1])
    rs.set_state(("MT19937", key, pos) + tuple(state[3:]))
    return out


def seeded_counts(seeds: Sequence[int], n: int) -> np.ndarray:
    """Counts [len(seeds), n]: row i from ``RandomState(seeds[i]).randint(0, n, size=n)``.

    Each replicate starts a fresh stream, so the raw-output reader has nothing to amortise here:
    the draws are NumPy's own."""
    out = np.empty((len(seeds), n), dtype=np.float64)
    rs = np.random.RandomState(0)
    for i, seed in enumerate(seeds):
        rs.seed(seed)  # the same legacy seeding as RandomState(seed), without building an object per replicate
        out[i] = np.bincount(rs.randint(0, n, size=n), minlength=n)
    return out


class LegacyStream:
    """The legacy global NumPy stream after ``np.random.seed(seed)``.

    ``np.random.choice(N, N, replace=True)`` draws ``randint(0, N, size=N)`` from
    ``RandomState``; successive calls are equal to slices of one larger ``randint``
    request, which is what makes chunked emulation exact.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rs = np.random.RandomState(seed)

    def indices(self, n: int, n_boot: int = DEFAULT_N_BOOT, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """One ``bootstrap_metric`` call: ``n_boot`` replicates of ``choice(n, n)``, in chunks."""
        done = 0
        while done < n_boot:
            r = min(chunk, n_boot - done)
            yield self._rs.randint(0, n, size=(r, n))
            done += r

    def weights(self, n: int, n_boot: int = DEFAULT_N_BOOT, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """The multiplicities [r, n] of :meth:`indices`' chunks (:func:`legacy_counts`)."""
        done = 0
        while done < n_boot:
            r = min(chunk, n_boot - done)
            yield legacy_counts(self._rs, n, r)
            done += r

    def skip(self, n: int, n_boot: int = DEFAULT_N_BOOT) -> None:
        """Consume the draws of one ``bootstrap_metric`` call without using them."""
        for _ in self.weights(n, n_boot):
            pass


def sklearn_resample_indices(n: int, n_boot: int = DEFAULT_N_BOOT, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Replicate ``i`` = ``sklearn.utils.resample(range(n), replace=True, random_state=i)``."""
    rs = np.random.RandomState(0)
    done = 0

    def draw(i: int) -> np.ndarray:
        rs.seed(i)  # the same legacy seeding as RandomState(i), without building an object per replicate
        return rs.randint(0, n, size=n)

    while done < n_boot:
        r = min(chunk, n_boot - done)
        yield np.stack([draw(i) for i in range(done, done + r)])
        done += r


def sklearn_resample_counts(n: int, n_boot: int = DEFAULT_N_BOOT, chunk: int = DEFAULT_CHUNK,
                            seed: int = 0) -> Iterator[np.ndarray]:
    """Multiplicities [r, n] of :func:`sklearn_resample_indices`' chunks; replicate ``i`` is seeded
    with ``seed + i`` (0 + i: ``resample(..., random_state=i)``)."""
    for start in range(0, n_boot, chunk):
        yield seeded_counts(range(seed + start, seed + min(n_boot, start + chunk)), n)


def unit_draws(units: Sequence, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, *, strata: Sequence | None = None,
               chunk: int = DEFAULT_CHUNK, order_by: Sequence | None = None) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Cluster bootstrap in unit space: ``(inv, chunks of unit multiplicities [r, U])``.

    ``units`` gives each sample's resampling unit (image or patient id); ``inv[i]`` is the
    column of sample ``i``'s unit. Columns are units sorted by id, or by (``order_by`` of the
    unit's first sample, id), so draws never depend on the row order. With ``strata`` (one
    label per sample, constant within a unit; otherwise the unit's first label is used)
    units are drawn within each stratum, keeping the stratum's number of units.
    """
    units = np.asarray(units)
    _, first, inv = np.unique(units, return_index=True, return_inverse=True)
    n_units = len(first)
    if order_by is not None:
        key = np.asarray(order_by)[first]
        perm = np.lexsort((np.arange(n_units), key))  # stable: ids stay sorted within a key
        rank = np.empty(n_units, dtype=np.int64)
        rank[perm] = np.arange(n_units)
        inv, first = rank[inv], first[perm]
    groups = None
    if strata is not None:
        s = np.asarray(strata)[first]
        groups = [np.flatnonzero(s == g) for g in np.unique(s)]

    def gen() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        done = 0
        while done < n_boot:
            r = min(chunk, n_boot - done)
            if groups is None:
                yield counts_from_indices(rng.integers(0, n_units, size=(r, n_units)), n_units)
            else:
                counts_u = np.zeros((r, n_units))
                for members in groups:
                    draw = members[rng.integers(0, len(members), size=(r, len(members)))]
                    counts_u += counts_from_indices(draw, n_units)
                yield counts_u
            done += r

    return inv.reshape(-1), gen()


def unit_weights(units: Sequence, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, *, strata: Sequence | None = None,
                 chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Cluster bootstrap as sample weights [r, N]: every sample of a drawn unit enters with the
    unit's multiplicity (the same draws as :func:`unit_draws`)."""
    inv, chunks = unit_draws(units, n_boot, seed, strata=strata, chunk=chunk)
    for counts_u in chunks:
        yield counts_u[:, inv]


def to_unit_space(values: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Sum the rows of ``values`` [N, M] per unit → [U, M] (rows of a unit share its weight)."""
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    starts = np.flatnonzero(np.r_[True, sorted_inv[1:] != sorted_inv[:-1]])
    return np.add.reduceat(np.asarray(values, dtype=np.float64)[order], starts, axis=0)


# --------------------------------------------------------------------------------------
# Replicate statistics
# --------------------------------------------------------------------------------------
def weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Replicate means [r, M] of ``values`` [N, M] under sample ``weights`` [r, N], NaN skipped.

    A column with no weighted non-NaN value gives NaN (as ``DataFrame.mean`` of an
    all-NaN column). Sums and counts come from one matrix product.
    """
    return _means_of_stacked(*_stacked_sums_counts(values), weights)


def _stacked_sums_counts(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``[values with NaN as 0 | non-NaN indicator]`` [N, 2M] (the matrix every replicate multiplies) and M."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    present = ~np.isnan(v)
    return np.concatenate([np.where(present, v, 0.0), present.astype(np.float64)], axis=1), v.shape[1]


def _means_of_stacked(stacked: np.ndarray, m: int, weights: np.ndarray) -> np.ndarray:
    both = weights @ stacked
    num, den = both[:, :m], both[:, m:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def unique_columns(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct columns, index of each original column): metrics often share columns
    (e.g. the same NaN pattern), and the matrix product needs each only once."""
    cols = np.asfortranarray(mat)
    seen: dict[bytes, int] = {}
    keep: list[int] = []
    which = np.empty(mat.shape[1], dtype=np.int64)
    for j in range(mat.shape[1]):
        key = cols[:, j].tobytes()
        if key not in seen:
            seen[key] = len(keep)
            keep.append(j)
        which[j] = seen[key]
    return np.ascontiguousarray(mat[:, keep]), which


def replicate_means(values: np.ndarray, weight_chunks: Iterator[np.ndarray]) -> np.ndarray:
    """Stack :func:`weighted_nanmean` over a stream of weight chunks → [R, M] ([0, M] for no chunk)."""
    stacked, m = _stacked_sums_counts(values)  # built once for all chunks
    parts = [_means_of_stacked(stacked, m, w) for w in weight_chunks]
    if not parts:
        return np.zeros((0, np.asarray(values).shape[1]))
    return np.concatenate(parts, axis=0)


def official_ci(reps: np.ndarray, level: float = 0.95):
    """AFLoc/CheXlocalize ``compute_cis`` on replicates [R] or [R, M] (per column).

    Sort with NaN last (pandas ``sort_values``), lower = element ``int(a/2 * R) - 1``,
    upper = element ``int((1 - a/2) * R) - 1`` (24 and 974 for R = 1000), mean = mean of
    the non-NaN replicates. Returns ``(mean, lo, hi)`` arrays (unrounded); NaN without replicates
    (``n_boot = 0``: point estimates only).
    """
    reps = np.asarray(reps, dtype=np.float64)
    one = reps.ndim == 1
    if one:
        reps = reps[:, None]
    r = reps.shape[0]
    if r == 0:
        none = np.full(reps.shape[1], np.nan)
        return (none[0], none[0], none[0]) if one else (none, none.copy(), none.copy())
    alpha = 1 - level
    lo_i, hi_i = int(alpha / 2 * r) - 1, int((1 - alpha / 2) * r) - 1
    srt = np.sort(reps, axis=0)  # numpy sorts NaN last, as pandas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(reps, axis=0)
    lo, hi = srt[lo_i], srt[hi_i]
    return (mean[0], lo[0], hi[0]) if one else (mean, lo, hi)


OFFICIAL_CI_MIN_REPLICATES = 40  # below, int(0.025 * R) - 1 = -1: the "lower" bound is the largest replicate
_warned_few: set[str] = set()


def warn_few_official_replicates(n_boot: int, protocol: str) -> None:
    """Once per protocol and process: the official index rule needs R >= 40 replicates."""
    if 0 < n_boot < OFFICIAL_CI_MIN_REPLICATES and protocol not in _warned_few:
        _warned_few.add(protocol)
        logging.getLogger("afloc_bench.bootstrap").warning(
            "%s with --n-boot %d: the official interval takes sorted replicates int(0.025 R) - 1 and "
            "int(0.975 R) - 1, which below %d replicates makes the lower bound the largest replicate; "
            "use --n-boot >= %d (1000 as published) or 0 for points only",
            protocol, n_boot, OFFICIAL_CI_MIN_REPLICATES, OFFICIAL_CI_MIN_REPLICATES)


def percentile_ci(reps: np.ndarray, level: float = 0.95):
    """Percentile interval over the finite replicates (linear interpolation).

    Returns ``(boot_mean, lo, hi)``; NaN when no replicate is finite. Used by
    ``canonical@1`` and paired comparisons.
    """
    reps = np.asarray(reps, dtype=np.float64)
    one = reps.ndim == 1
    if one:
        reps = reps[:, None]
    alpha = 1 - level
    mean = np.full(reps.shape[1], np.nan)
    lo = np.full(reps.shape[1], np.nan)
    hi = np.full(reps.shape[1], np.nan)
    for j in range(reps.shape[1]):
        f = reps[:, j][np.isfinite(reps[:, j])]
        if f.size:
            mean[j] = f.mean()
            lo[j], hi[j] = np.quantile(f, [alpha / 2, 1 - alpha / 2])
    return (mean[0], lo[0], hi[0]) if one else (mean, lo, hi)


def bootstrap_p_value(diff_reps: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of a difference: ``min(1, 2·min(P*(Δ≤0), P*(Δ≥0)))``."""
    d = np.asarray(diff_reps, dtype=np.float64)
    one = d.ndim == 1
    if one:
        d = d[:, None]
    out = np.full(d.shape[1], np.nan)
    for j in range(d.shape[1]):
        f = d[:, j][np.isfinite(d[:, j])]
        if f.size:
            out[j] = min(1.0, 2 * min(np.mean(f <= 0), np.mean(f >= 0)))
    return out[0] if one else out


def bh_fdr(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok])]
    m = len(order)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q[order] = np.minimum(ranked, 1.0)
    return q
