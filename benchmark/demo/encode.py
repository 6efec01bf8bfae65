"""Deterministic file encoders: DICOM, PNG/JPG, COCO and SIIM RLE, identifiers.

Every identifier (UID, patient id, DICOM id) is a hash of the seed and the image's place
in the plan, and DICOM dates and implementation tags are fixed, so that the same seed writes
byte-identical files with any supported pydicom. PNGs are written by ``pngenc`` (deflate output
would depend on the zlib in use); JPEGs by OpenCV's libjpeg-turbo with its default integer
("islow") DCT, baseline Huffman tables and no chroma: bit-exact whatever SIMD it uses.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from pathlib import Path

import cv2
import numpy as np

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, under which generate_uid derives UIDs
IMPLEMENTATION_UID = UID_ROOT + "7.1"  # this writer (pydicom's own implementation UID names its version)
IMPLEMENTATION_VERSION_NAME = "AFLOC_BENCH_DEMO"


def digest(*parts) -> bytes:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()


def det_uuid(*parts) -> str:
    """A deterministic UUID-4-shaped string (RSNA ``patientId`` style)."""
    return str(uuid.UUID(bytes=digest(*parts)[:16], version=4))


def det_uid(*parts) -> str:
    """A deterministic DICOM UID under ``UID_ROOT`` (at most 64 characters)."""
    n = int.from_bytes(digest(*parts)[:16], "big")
    return (UID_ROOT + str(n))[:64]


def det_hex_id(*parts) -> str:
    """MIMIC-CXR ``dicom_id`` style: five dash-separated groups of 8 hex digits."""
    h = digest(*parts).hex()[:40]
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounded (half to even) and saturated."""
    from benchmark.demo.detmath import to_uint8 as _to_uint8

    return _to_uint8(img)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def jpeg_bytes(u8: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of a uint8 grayscale image (libjpeg-turbo's integer DCT and standard tables)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8, np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0,
                            cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def write_jpg(path: Path, img: np.ndarray, quality: int = 90) -> None:
    write_bytes(path, jpeg_bytes(to_uint8(img), quality))


def write_png(path: Path, arr: np.ndarray) -> None:
    """8-bit grayscale PNG (``pngenc``: Paeth filter, Huffman-coded literals, the same bytes everywhere)."""
    from benchmark.demo.pngenc import encode

    a = to_uint8(arr) if arr.dtype != np.uint8 else arr
    write_bytes(path, encode(a))


def write_dicom(path: Path, img: np.ndarray, *, photometric: str = "MONOCHROME2", patient_id: str, study_uid: str,
                series_uid: str, sop_uid: str, view: str, sex: str, age: int, pixel_spacing: float = 0.168,
                description: str = "") -> None:
    """A single-frame, 8-bit, JPEG-baseline DICOM as the Kaggle RSNA and SIIM sets distribute them.

    ``MONOCHROME1`` stores inverted values (bright = low), so a correct reader must invert
    them back; ``MONOCHROME2`` stores bright = high.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

    u8 = to_uint8(img)
    if photometric == "MONOCHROME1":
        u8 = 255 - u8
    elif photometric != "MONOCHROME2":
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    jpeg = jpeg_bytes(u8, 92)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    # fixed, so that the file does not carry the pydicom version (pydicom's own defaults do)
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = description or f"view: {view}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{int(age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(u8.shape[0]), int(u8.shape[1])
    ds.PixelSpacing = [f"{pixel_spacing:.3f}", f"{pixel_spacing:.3f}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pydicom 2.x: the encoding is set on the dataset, the file-format flag is spelled differently
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


# --------------------------------------------------------------------------- RLE
def coco_rle(mask: np.ndarray) -> dict:
    """pycocotools compressed RLE of a bool mask, ``counts`` as str (the CheXlocalize JSON form)."""
    h, w = mask.shape
    if not mask.any():
        return {"size": [int(h), int(w)], "counts": _empty_counts(int(h), int(w))}
    from pycocotools import mask as mask_util

    enc = mask_util.encode(mask.astype(np.uint8, order="F"))
    return {"size": [int(enc["size"][0]), int(enc["size"][1])], "counts": enc["counts"].decode("ascii")}


@functools.lru_cache(maxsize=64)
def _empty_counts(h: int, w: int) -> str:
    from pycocotools import mask as mask_util

    return mask_util.encode(np.zeros((h, w), np.uint8, order="F"))["counts"].decode("ascii")


def siim_rle(mask: np.ndarray) -> str:
    """SIIM-ACR relative RLE: column-major pixel order, pairs ``gap length``, gap from the previous run's end."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    changes = np.nonzero(padded[1:] != padded[:-1])[0]
    starts, ends = changes[0::2], changes[1::2]
    if len(starts) == 0:
        return "-1"
    out = []
    prev_end = 0
    for s, e in zip(starts, ends):
        out.append(str(int(s - prev_end)))
        out.append(str(int(e - s)))
        prev_end = e
    return " ".join(out)


def polygons_of(mask: np.ndarray, *, epsilon_frac: float = 0.004, min_area: int = 8) -> list[list[list[float]]]:
    """Outer contours of a bool mask as ``[[x, y], ...]`` polygons (simplified, pixel corners).

    The contours are OpenCV's (integer tracing, the same in every version); their area and their
    Douglas-Peucker simplification are computed here (``approxPolyDP`` changed between versions)."""
    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    h, w = mask.shape
    eps = epsilon_frac * max(h, w)
    out = []
    for c in sorted(cnts, key=lambda c: (int(c[:, 0, 1].min()), int(c[:, 0, 0].min()))):
        pts = c[:, 0, :].astype(np.int64)
        if _area2(pts) < 2 * min_area:
            continue
        approx = pts[_simplify_closed(pts, eps)]
        if len(approx) < 3:
            continue
        out.append([[float(x), float(y)] for x, y in approx])
    return out


def _area2(pts: np.ndarray) -> int:
    """Twice the area of a closed integer polygon (shoelace formula, exact)."""
    x, y = pts[:, 0], pts[:, 1]
    return abs(int((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()))


def _simplify_closed(pts: np.ndarray, eps: float) -> np.ndarray:
    """Indices kept by Douglas-Peucker simplification of a closed integer curve: split at point 0
    and the point farthest from it, then each chain is cut at its farthest point from the chord
    while that is more than ``eps`` away (exact integer distances, compared with ``eps**2``)."""
    n = len(pts)
    if n < 3:
        return np.arange(n)
    d = pts - pts[0]
    far = int(np.argmax(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]))
    if far == 0:
        return np.array([0])
    first = _dp(pts[:far + 1], eps)
    second = _dp(np.concatenate([pts[far:], pts[:1]]), eps)
    idx = np.concatenate([np.flatnonzero(first), far + np.flatnonzero(second[:-1])])
    return np.unique(idx)


def _dp(chain: np.ndarray, eps: float) -> np.ndarray:
    keep = np.zeros(len(chain), bool)
    keep[0] = keep[-1] = True
    eps2 = float(eps) * float(eps)
    stack = [(0, len(chain) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        px, py = int(chain[a, 0]), int(chain[a, 1])
        dx, dy = int(chain[b, 0]) - px, int(chain[b, 1]) - py
        sx, sy = chain[a + 1:b, 0] - px, chain[a + 1:b, 1] - py
        length2 = dx * dx + dy * dy
        if length2 == 0:
            metric, limit = sx * sx + sy * sy, eps2
        else:
            cross = sx * dy - sy * dx  # distance * chord length
            metric, limit = cross * cross, eps2 * length2
        k = int(np.argmax(metric))
        if float(metric[k]) > limit:
            m = a + 1 + k
            keep[m] = True
            stack += [(m, b), (a, m)]
    return keep


def rasterize_polygons(polygons: list, hw: tuple[int, int]) -> np.ndarray:
    """Fill polygons as CheXlocalize's ``create_mask`` does with PIL (``polygon(outline=1, fill=1)``,
    which Pillow draws as the fill alone): on every integer row, from the rounded left crossing of
    the outline to the rounded right one (even-odd rule), plus the vertices and horizontal edges.
    Computed here because Pillow's filling changed between versions (in corner cases)."""
    h, w = int(hw[0]), int(hw[1])
    out = np.zeros((h, w), bool)
    for poly in polygons:
        p = np.asarray(poly, np.float64).reshape(-1, 2)
        if len(p) == 0:
            continue
        _fill_even_odd(out, p)
    return out


def _fill_even_odd(out: np.ndarray, p: np.ndarray) -> None:
    h, w = out.shape
    x0, y0 = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows, a, b = [], [], []
    # vertices, and horizontal edges as whole runs
    vy = np.floor(y0 + 0.5).astype(np.int64)
    flat = y0 == y1
    rows.append(vy)
    a.append(np.floor(np.where(flat, np.minimum(x0, x1), x0) + 0.5).astype(np.int64))
    b.append(np.floor(np.where(flat, np.maximum(x0, x1), x0) + 0.5).astype(np.int64))
    # crossings of each integer row by the other edges, on the half-open range [min y, max y)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first, stop = np.ceil(lo).astype(np.int64), np.ceil(hi).astype(np.int64)
    n = np.where(flat, 0, np.maximum(stop - first, 0))
    if n.sum():
        e = np.repeat(np.arange(len(p)), n)
        y = first[e] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        x = x0[e] + (y - y0[e]) * ((x1[e] - x0[e]) / (y1[e] - y0[e]))
        order = np.lexsort((x, y))
        y, x = y[order].reshape(-1, 2), x[order].reshape(-1, 2)  # each row is crossed an even number of times
        rows.append(y[:, 0])
        a.append(np.floor(x[:, 0] + 0.5).astype(np.int64))
        b.append(np.floor(x[:, 1] + 0.5).astype(np.int64))
    row, a, b = np.concatenate(rows), np.maximum(np.concatenate(a), 0), np.minimum(np.concatenate(b), w - 1)
    ok = (row >= 0) & (row < h) & (a <= b)
    row, a, b = row[ok], a[ok], b[ok]
    size = h * (w + 1)
    diff = np.bincount(row * (w + 1) + a, minlength=size) - np.bincount(row * (w + 1) + b + 1, minlength=size)
    out |= np.cumsum(diff.reshape(h, w + 1), axis=1)[:, :w] > 0


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- colour images and tables
# (the pathology demo sets: colour JPEG/PNG/TIFF tiles and SICAPv2's partition spreadsheets)
def jpeg_rgb_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG of a uint8 RGB image: libjpeg-turbo's integer colour conversion, 4:2:0 chroma
    downsampling and integer DCT (bit-exact whatever SIMD it uses), standard tables."""
    a = np.ascontiguousarray(np.asarray(rgb, np.uint8)[..., ::-1])  # OpenCV takes B, G, R
    ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0,
                                       cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def png_rgb_bytes(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG written like ``pngenc`` (Paeth filter over 3-byte pixels, one Huffman-only block)."""
    import struct
    import zlib

    from benchmark.demo import pngenc

    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {a.shape}")
    h, w, _ = a.shape
    x = a.astype(np.int16)
    f = np.empty((h, w, 3), np.int16)
    left = np.zeros_like(x)
    left[:, 1:] = x[:, :-1]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    upleft = np.zeros_like(x)
    upleft[1:, 1:] = x[:-1, :-1]
    da, db = up - upleft, left - upleft
    pa, pb, pc = np.abs(da), np.abs(db), np.abs(da + db)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    f[:] = (x - pred) & 0xFF
    out = np.empty((h, w * 3 + 1), np.uint8)
    out[:, 0] = 4
    out[:, 1:] = f.reshape(h, w * 3).astype(np.uint8)
    raw = out.tobytes()
    stream = b"\x78\x01" + pngenc._deflate_literals(raw) + struct.pack(">I", zlib.adler32(raw) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + pngenc._chunk(b"IHDR", ihdr) + pngenc._chunk(b"IDAT", stream) + \
        pngenc._chunk(b"IEND", b"")


def tiff_rgb_bytes(rgb: np.ndarray) -> bytes:
    """Baseline uncompressed RGB TIFF (little-endian, one strip): no library, the same bytes everywhere."""
    import struct

    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = a.shape
    pixels = a.tobytes()
    n_tags = 12
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * n_tags + 4  # BitsPerSample values, then the two resolutions
    data_at = extra_at + 6 + 16
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, extra_at), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_at), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(pixels)),
            (282, 5, 1, extra_at + 6), (283, 5, 1, extra_at + 14), (284, 3, 1, 1)]
    assert len(tags) == n_tags
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", n_tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 8, 8, 8) + struct.pack("<II", 72, 1) * 2
    assert len(out) == data_at
    return bytes(out) + pixels


def zip_stored(members: list[tuple[str, bytes]]) -> bytes:
    """A ZIP archive of uncompressed members with fixed times and attributes (no zlib, no clock)."""
    import struct
    import zlib

    local, central = bytearray(), bytearray()
    dos_time, dos_date = 0, (1980 - 1980) << 9 | 1 << 5 | 1  # 1980-01-01 00:00
    for name, data in members:
        fn = name.encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, dos_time, dos_date, crc, len(data), len(data),
                             len(fn), 0) + fn + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, dos_time, dos_date, crc, len(data),
                               len(data), len(fn), 0, 0, 0, 0, 0, offset) + fn
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    return bytes(local + central + end)


def xlsx_bytes(rows: list[list], sheet: str = "Sheet1") -> bytes:
    """A minimal Excel workbook (one sheet; strings inline, numbers as numbers), the first row the header.

    Written part by part rather than with openpyxl, whose files carry the time of writing and whose
    XML changes between versions; readers (openpyxl, pandas) see an ordinary workbook."""
    from xml.sax.saxutils import escape

    def col(i: int) -> str:
        s = ""
        i += 1
        while i:
            i, r = divmod(i - 1, 26)
            s = chr(65 + r) + s
        return s

    body = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, v in enumerate(row):
            ref = f"{col(c)}{r}"
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(str(v))}</t></is></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{v!r}</v></c>')
        body.append(f'<row r="{r}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel_ns = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    head = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    parts = [
        ("[Content_Types].xml", head + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
         '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
         '<Default Extension="xml" ContentType="application/xml"/>'
         '<Override PartName="/xl/workbook.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
         '<Override PartName="/xl/worksheets/sheet1.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
         '<Override PartName="/xl/styles.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/></Types>'),
        ("_rels/.rels", head + '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
         f'<Relationship Id="rId1" Type="{rel_ns}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
        ("xl/workbook.xml", head + f'<workbook {ns} xmlns:r="{rel_ns}"><sheets>'
         f'<sheet name="{escape(sheet)}" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        ("xl/_rels/workbook.xml.rels", head + '<Relationships '
         'xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
         f'<Relationship Id="rId1" Type="{rel_ns}/worksheet" Target="worksheets/sheet1.xml"/>'
         f'<Relationship Id="rId2" Type="{rel_ns}/styles" Target="styles.xml"/></Relationships>'),
        ("xl/styles.xml", head + f'<styleSheet {ns}><fonts count="1"><font><sz val="11"/><name val="Calibri"/>'
         '</font></fonts><fills count="2"><fill><patternFill patternType="none"/></fill><fill>'
         '<patternFill patternType="gray125"/></fill></fills><borders count="1"><border><left/><right/><top/>'
         '<bottom/><diagonal/></border></borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" '
         'borderId="0"/></cellStyleXfs><cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" '
         'xfId="0"/></cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/>'
         '</cellStyles></styleSheet>'),
        ("xl/worksheets/sheet1.xml", head + f'<worksheet {ns}><sheetData>{"".join(body)}</sheetData></worksheet>'),
    ]
    return zip_stored([(name, text.encode("utf-8")) for name, text in parts])
