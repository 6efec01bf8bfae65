"""Ground truth in original pixel coordinates: boxes, polygons, COCO RLE and mask files → binary masks.

Boxes are ``[x, y, w, h]`` with ``(x, y)`` the top-left corner, in edge coordinates (pixel ``i``
spans ``[i, i + 1)``); sizes are ``(height, width)``. Only numpy at module level.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchmark.dataset import DataError


# --------------------------------------------------------------------------------------
# Ground truth rasterisation in original coordinates
# --------------------------------------------------------------------------------------
def box_pixel_range(start: float, length: float, n: int) -> tuple[int, int]:
    """Pixels whose centre lies in ``[start, start + length)``, clipped to ``[0, n)``."""
    lo = math.ceil(start - 0.5)
    hi = math.ceil(start + length - 0.5)
    return max(lo, 0), min(hi, n)


def rasterize_boxes(boxes: Iterable[Sequence[float]], size: Sequence[int], *, mode: str = "union") -> np.ndarray:
    """Boxes ``[x, y, w, h]`` → uint8 (H, W) mask; a pixel is in a box if its centre is.

    ``mode="union"`` gives 0/1; ``mode="sum"`` counts covering boxes (the official AFLoc
    merge, where overlaps hold 2).
    """
    if mode not in ("union", "sum"):
        raise ValueError(f"mode must be 'union' or 'sum', got {mode!r}")
    h, w = int(size[0]), int(size[1])
    out = np.zeros((h, w), dtype=np.uint8)
    for b in boxes:
        x0, x1 = box_pixel_range(float(b[0]), float(b[2]), w)
        y0, y1 = box_pixel_range(float(b[1]), float(b[3]), h)
        if x1 > x0 and y1 > y0:
            if mode == "sum":
                out[y0:y1, x0:x1] += 1
            else:
                out[y0:y1, x0:x1] = 1
    return out


def rasterize_polygons(polygons: Iterable[Sequence[Sequence[float]]], size: Sequence[int]) -> np.ndarray:
    """Polygons (lists of ``[x, y]``) → uint8 union mask, filled with outline (PIL).

    Same drawing call as CheXlocalize's ``annotation_to_segmentation``
    (``ImageDraw.polygon(outline=1, fill=1)``).
    """
    from PIL import Image, ImageDraw

    h, w = int(size[0]), int(size[1])
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [(float(p[0]), float(p[1])) for p in poly]
        if len(pts) >= 2:
            draw.polygon(pts, outline=1, fill=1)
    return (np.asarray(img) > 0).astype(np.uint8)


def decode_rle(rle: dict[str, Any], size: Sequence[int] | None = None) -> np.ndarray:
    """COCO RLE (compressed string/bytes or uncompressed counts list) → uint8 (H, W)."""
    from pycocotools import mask as mask_utils

    if "size" not in rle or "counts" not in rle:
        raise DataError(None, f"a COCO RLE dict with 'size' and 'counts', got keys {sorted(rle)}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(obj)
    if size is not None and tuple(m.shape) != (int(size[0]), int(size[1])):
        raise DataError(None, f"RLE of size {m.shape} for an image of size {tuple(size)}")
    return m.astype(np.uint8)


def read_mask_file(path: str | os.PathLike, size: Sequence[int] | None = None, *, raw: bool = False) -> np.ndarray:
    """Read a mask image with ``cv2.IMREAD_UNCHANGED``; nonzero = lesion.

    Returns uint8 0/1, or with ``raw=True`` the stored values as float32 (the maximum over
    channels for colour files). Raises ``DataError`` naming the file when it cannot be read
    or its size differs from ``size``.
    """
    import cv2

    p = str(path)
    if not os.path.isfile(p):
        raise DataError(p, "mask image file not found")
    m = cv2.imread(p, cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DataError(p, "a readable mask image (PNG/JPG/TIFF); OpenCV could not decode it")
    if m.ndim == 3:
        m = m.max(axis=2)
    if size is not None and tuple(m.shape) != (int(size[0]), int(size[1])):
        raise DataError(p, f"a mask of the image size {tuple(int(v) for v in size)} (H, W), got {m.shape}")
    if raw:
        return m.astype(np.float32)
    return (m != 0).astype(np.uint8)


def sample_size(sample: Any, image_size: Sequence[int] | None) -> tuple[int, int]:
    size = image_size if image_size is not None else getattr(sample, "image_size", None)
    if size is None:
        raise DataError(getattr(sample, "image_path", None),
                          f"an image size for sample {getattr(sample, 'sample_id', '?')} (the loader did not set it)")
    return int(size[0]), int(size[1])


def sample_mask(sample: Any, image_size: Sequence[int] | None = None, *, box_mode: str = "union") -> np.ndarray:
    """All ground truth of a ``Sample`` as one uint8 mask in original pixels.

    Boxes are rasterised with ``box_mode`` (``union`` or ``sum``); polygons, RLEs and mask
    files are added as a union on top. A sample without localization gives zeros.
    """
    size = sample_size(sample, image_size)
    out = rasterize_boxes(sample.boxes, size, mode=box_mode) if sample.boxes else np.zeros(size, np.uint8)
    other = np.zeros(size, dtype=bool)
    if sample.polygons:
        other |= rasterize_polygons(sample.polygons, size) > 0
    for rle in sample.rles:
        try:
            other |= decode_rle(rle, size) > 0
        except Exception as exc:  # name the sample in the error
            raise DataError(sample.image_path, f"a valid RLE for sample {sample.sample_id}: {exc}") from exc
    for path in sample.mask_paths:
        other |= read_mask_file(path, size) > 0
    if box_mode == "union":
        return (out.astype(bool) | other).astype(np.uint8)
    return np.where(other & (out == 0), 1, out).astype(np.uint8)
