"""Reading image files the way each model's official code reads them: one reader, named decode recipes.

Models disagree on how a file becomes pixels, and the differences move results on real datasets
(a colour JPEG read by the codec's own gray conversion or converted from RGB; a 16-bit PNG cut to
its high byte or min–max stretched; a DICOM inverted or not). So every adapter declares the
recipe of its official code (``Adapter.decode``) and :func:`read_image` applies it by making the
same library calls that code makes:

- ``cv2-gray``: ``cv2.imread(path, 0)`` (AFLoc localization and pretraining, GLoRIA). DICOM as
  their ``read_from_dicom``: ``cv2.convertScaleAbs(x, alpha=255 / x.max())``, MONOCHROME1
  inverted with ``cv2.bitwise_not``.
- ``cv2-rgb``: ``cv2.imread(path)`` then ``cv2.cvtColor(BGR2RGB)`` (CheXzero's ``img_to_hdf5``).
- ``pil-rgb``: ``PIL.Image.open(path).convert('RGB')`` (AFLoc zero-shot classification, ConVIRT as
  ViLMedic). DICOM as AFLoc's classification RSNA reader: ``remap_to_uint8`` of the stored values
  (no inversion), then RGB.
- ``pil``: ``PIL.Image.open(path)`` as opened (open_clip resizes in the file's own mode, 16-bit or
  RGBA, and converts to RGB after): the array of an ``L``, ``I;16``, ``I``, ``F``, ``RGB`` or ``RGBA``
  image, other modes converted to RGB; DICOM as ``pil-rgb``.
- ``medklip``: ``pil-rgb`` for image files; DICOM as MedKLIP's RSNA reader: ``pixel_array / 255``,
  ``skimage.exposure.equalize_hist``, ``* 255`` cast to uint8, RGB.
- ``hi-ml``: BioViL's ``load_image``: ``skimage.io.imread`` (DICOM: ``pydicom`` ``pixel_array``,
  no inversion, no LUT), ``remap_to_uint8`` (global min–max over every channel), PIL ``'L'``.
- ``canonical``: the project's own choice for models without an official reader (sanity,
  saliency classifiers, figures): gray; colour through ``cv2.cvtColor``; 16-bit min–max
  stretched; DICOM through its modality and VOI LUTs (pydicom), MONOCHROME1 inverted, then min–max.

Where an official code reads no DICOM (CheXzero, CLIP, ConVIRT), its recipe's DICOM branch is
the one named above for that recipe. Every file is checked first (empty, truncated), and a file
a decoder cannot read is a ``DataError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


# -- value maps shared by the recipes -----------------------------------------------------------
def remap_to_uint8(array: np.ndarray) -> np.ndarray:
    """hi-ml's (and AFLoc's classification) ``remap_to_uint8``: subtract the minimum, divide by the
    new maximum, times 255, truncating cast, in that order (the order decides ties at integer
    boundaries). A constant image becomes zeros (the official code divides by zero there)."""
    a = np.asarray(array).astype(float)
    a -= a.min()
    mx = a.max()
    if mx > 0:
        a /= mx
    a *= 255
    return a.astype(np.uint8)


to_uint8 = remap_to_uint8  # the canonical stretch is the same map


# -- DICOM branches ----------------------------------------------------------------------------
def _dicom(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error
        raise DataError(path, f"cannot decode DICOM ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise DataError(path, f"expected a single-frame grayscale DICOM, got pixel array of shape {arr.shape}")
    return ds, arr


def _monochrome1(ds) -> bool:
    return str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1"


def _dicom_gloria(path: Path) -> np.ndarray:
    """GLoRIA's and AFLoc's ``read_from_dicom``: scale by 255 / max (rounded, saturated), then invert MONOCHROME1."""
    import cv2

    ds, x = _dicom(path)
    x = cv2.convertScaleAbs(x, alpha=(255.0 / x.max()))
    if _monochrome1(ds):
        x = cv2.bitwise_not(x)
    return x


def _dicom_minmax(path: Path) -> np.ndarray:
    """``remap_to_uint8(pydicom pixel_array)``: stored values, no LUT, no inversion (hi-ml, AFLoc classification)."""
    return remap_to_uint8(_dicom(path)[1])


def _dicom_equalized(path: Path) -> np.ndarray:
    """MedKLIP's RSNA reader: ``pixel_array / 255``, histogram equalisation, back to 0..255 (truncated)."""
    return equalize_hist_255(_dicom(path)[1])


def equalize_hist_255(arr: np.ndarray) -> np.ndarray:
    """``(255 * skimage.exposure.equalize_hist(arr / 255)).astype(uint8)`` for an integer image, computed
    once per distinct pixel value and looked up (the same numpy histogram, weighted by each value's
    count, and the same interpolation; four times faster than interpolating every pixel)."""
    flat = np.asarray(arr).ravel()
    lo = int(flat.min())
    offset = np.subtract(flat, lo, dtype=np.int64)
    counts = np.bincount(offset)
    present = np.flatnonzero(counts)
    values = (present + lo).astype(np.float64) / 255.0
    hist, edges = np.histogram(values, bins=256, weights=counts[present])  # skimage: range = image min..max
    centers = (edges[:-1] + edges[1:]) / 2.0
    cdf = hist.cumsum()
    cdf = cdf / float(cdf[-1])
    table = np.zeros(len(counts), dtype=np.uint8)
    table[present] = (255 * np.interp(values, centers, cdf)).astype(np.uint8)
    return table[offset].reshape(np.shape(arr))


def _dicom_canonical(path: Path) -> np.ndarray:
    """Modality LUT (rescale), VOI LUT (window or table), MONOCHROME1 inverted, then min–max to uint8."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds, arr = _dicom(path)
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float64)
    if _monochrome1(ds):
        arr = arr.max() - arr
    return remap_to_uint8(arr)


# -- image-file branches -----------------------------------------------------------------------
def _cv2_read(path: Path, flag: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), flag)
    if img is None:
        raise DataError(path, "cannot decode image (expected PNG/JPG/TIFF)")
    return img


def _raster_cv2_gray(path: Path) -> np.ndarray:
    import cv2

    return _cv2_read(path, cv2.IMREAD_GRAYSCALE)


def _raster_cv2_rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(_cv2_read(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _raster_cv2_bgr(path: Path) -> np.ndarray:
    """``cv2.imread(p, 1)`` as it comes: channels in the file's B, G, R order (``PIL.Image.fromarray(x)
    .convert("RGB")`` keeps that order, so a model fed this way sees blue first)."""
    import cv2

    return _cv2_read(path, cv2.IMREAD_COLOR)


def _pil(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def _raster_pil_rgb(path: Path) -> np.ndarray:
    return _pil(path, "RGB")


_PIL_ARRAY_MODES = ("L", "I;16", "I", "F", "RGB", "RGBA")  # modes ``Image.fromarray`` gives back from their arrays


def _raster_pil_as_opened(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im if im.mode in _PIL_ARRAY_MODES else im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def _raster_hi_ml(path: Path) -> np.ndarray:
    from skimage import io

    try:
        arr = io.imread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return arr


def _raster_canonical(path: Path) -> np.ndarray:
    import cv2

    img = _cv2_read(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        img = remap_to_uint8(img)
    return img


def _to_l(arr: np.ndarray) -> np.ndarray:
    """hi-ml's last step: ``Image.fromarray(remap_to_uint8(x)).convert('L')``."""
    from PIL import Image

    return np.asarray(Image.fromarray(remap_to_uint8(arr)).convert("L"))


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(gray).convert("RGB"))


# recipe -> (image-file reader, DICOM reader, final step); every output is uint8 (H, W) or (H, W, 3),
# except ``pil``, which keeps the file's mode
RECIPES: dict[str, tuple[Callable[[Path], np.ndarray], Callable[[Path], np.ndarray],
                         Callable[[np.ndarray], np.ndarray] | None]] = {
    "cv2-gray": (_raster_cv2_gray, _dicom_gloria, None),
    "cv2-rgb": (_raster_cv2_rgb, lambda p: _to_rgb(_dicom_canonical(p)), None),
    "cv2-bgr": (_raster_cv2_bgr, lambda p: _to_rgb(_dicom_canonical(p)), None),
    "pil-rgb": (_raster_pil_rgb, lambda p: _to_rgb(_dicom_minmax(p)), None),
    "pil": (_raster_pil_as_opened, lambda p: _to_rgb(_dicom_minmax(p)), None),
    "medklip": (_raster_pil_rgb, lambda p: _to_rgb(_dicom_equalized(p)), None),
    "hi-ml": (_raster_hi_ml, lambda p: _dicom(p)[1], _to_l),
    "canonical": (_raster_canonical, _dicom_canonical, None),
}
COLOR_RECIPES = frozenset({"cv2-rgb", "cv2-bgr", "pil-rgb", "medklip"})  # these give (H, W, 3)


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"unknown decode recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    return recipe


def read_image(path: str | os.PathLike, recipe: str = "canonical") -> np.ndarray:
    """The file's pixels as ``recipe`` reads them: uint8 ``(H, W)``, or ``(H, W, 3)`` RGB for
    the colour recipes (``pil``: the array of the file's own mode). Raises ``DataError`` naming
    the file when it is missing, empty, truncated or cannot be decoded."""
    raster, dicom, final = RECIPES[check_recipe(recipe)]
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    check_complete(path)
    img = dicom(path) if path.suffix.lower() in DICOM_SUFFIXES else raster(path)
    return final(img) if final is not None else img


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
