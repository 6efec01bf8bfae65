"""Deterministic file encoders: DICOM, PNG/JPG, COCO and SIIM RLE, identifiers.

Every identifier (UID, patient id, DICOM id) is a hash of the seed and the image's place
in the plan, and DICOM dates are fixed, so that the same seed writes byte-identical files.
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
    """[0, 1] float → uint8, rounded and saturated."""
    return cv2.convertScaleAbs(cv2.max(np.asarray(img, np.float32), 0.0), alpha=255.0)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def write_jpg(path: Path, img: np.ndarray, quality: int = 90) -> None:
    ok, buf = cv2.imencode(".jpg", to_uint8(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    write_bytes(path, buf.tobytes())


def write_png(path: Path, arr: np.ndarray) -> None:
    """8-bit PNG; Huffman-only deflate is both the fastest and the smallest on noisy radiographs."""
    a = to_uint8(arr) if arr.dtype != np.uint8 else arr
    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 6,
                                       cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes(path, buf.tobytes())


def write_dicom(path: Path, img: np.ndarray, *, photometric: str = "MONOCHROME2", patient_id: str, study_uid: str,
                series_uid: str, sop_uid: str, view: str, sex: str, age: int, pixel_spacing: float = 0.168,
                description: str = "") -> None:
    """A single-frame, 8-bit, JPEG-baseline DICOM as the Kaggle RSNA and SIIM sets distribute them.

    ``MONOCHROME1`` stores inverted values (bright = low), so a correct reader must invert
    them back; ``MONOCHROME2`` stores bright = high.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, JPEGBaseline8Bit, SecondaryCaptureImageStorage

    u8 = to_uint8(img)
    if photometric == "MONOCHROME1":
        u8 = 255 - u8
    elif photometric != "MONOCHROME2":
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
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
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


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
    """Outer contours of a bool mask as ``[[x, y], ...]`` polygons (simplified, pixel corners)."""
    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    h, w = mask.shape
    eps = epsilon_frac * max(h, w)
    out = []
    for c in sorted(cnts, key=lambda c: (int(c[:, 0, 1].min()), int(c[:, 0, 0].min()))):
        if cv2.contourArea(c) < min_area:
            continue
        approx = cv2.approxPolyDP(c, eps, True)[:, 0, :]
        if len(approx) < 3:
            continue
        out.append([[float(x), float(y)] for x, y in approx])
    return out


def rasterize_polygons(polygons: list, hw: tuple[int, int]) -> np.ndarray:
    """Fill polygons the way CheXlocalize's ``create_mask`` does (PIL, outline and fill = 1)."""
    from PIL import Image, ImageDraw

    h, w = hw
    im = Image.new("1", (w, h))
    draw = ImageDraw.Draw(im)
    for poly in polygons:
        draw.polygon([tuple(p) for p in poly], outline=1, fill=1)
    return np.array(im, dtype=bool)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)
