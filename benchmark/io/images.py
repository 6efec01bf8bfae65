"""Reading images as distributed: DICOM, PNG, JPG (8 or 16 bit) into uint8 arrays.

One reader for every loader and adapter, so that a DICOM is turned into pixels the same
way everywhere: MONOCHROME1 is inverted (bright = dense), then a global min–max maps the
stored values to 0..255 (the remap BioViL and AFLoc's classification code apply).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmark.dataset import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
_TAIL = 64  # bytes read from the end of a file to find its end marker


def check_complete(path: Path) -> None:
    """Raise ``DataError`` for an empty or truncated image file (cheap: the size and the last bytes).

    A JPEG cut short decodes without an error (OpenCV only prints "Premature end of JPEG file" and
    fills the rest with grey), so its end-of-image marker is required; a PNG must end with its IEND
    chunk. DICOM files fail in their own decoder."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, "empty image file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise DataError(path, "truncated JPEG (no end-of-image marker): the file was cut short")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise DataError(path, "truncated PNG (no IEND chunk): the file was cut short")


def read_image(path: str | os.PathLike, color: str = "gray") -> np.ndarray:
    """Return uint8 ``(H, W)`` for ``color='gray'`` or ``(H, W, 3)`` RGB for ``'rgb'``.

    Raises ``DataError`` naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    check_complete(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        img = _read_dicom(path)
    else:
        img = _read_raster(path)
    if color == "gray":
        if img.ndim == 3:
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return img
    if color == "rgb":
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        return img
    raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding all pixels where possible."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    check_complete(path)
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error
        raise DataError(path, f"cannot read image header ({type(exc).__name__}: {exc})") from exc


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Global min–max to 0..255 (truncating cast), leaving uint8 input unchanged."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot decode DICOM ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise DataError(path, f"expected a single-frame grayscale DICOM, got pixel array of shape {arr.shape}")
    arr = arr.astype(np.float64)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return to_uint8(arr)


def _read_raster(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(path, "cannot decode image (expected PNG/JPG/TIFF)")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:
        img = to_uint8(img)
    return img
