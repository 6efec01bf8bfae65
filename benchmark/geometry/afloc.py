"""The official AFLoc evaluation's geometry, quirks included: its box mapping into the 224 letterbox,
its box masks (summed, not unioned), its resized-mask threshold and its 14-pixel margin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchmark.geometry.frames import letterbox_array, letterbox_params
from benchmark.geometry.rasterize import decode_rle, rasterize_polygons, read_mask_file, sample_size

# AFLoc's margin (BioViL's ``set_margin`` constants applied to 224 maps: 14 px per side).
AFLOC_MARGIN_RESIZE = 512
AFLOC_MARGIN_CROP = 448
# AFLoc binarises resized masks with ``>= 1e-5`` (any partial coverage counts).
AFLOC_MASK_EPS = 1e-5


def afloc_box_mapping(box: Sequence[float], w: int, h: int, n: int) -> np.ndarray:
    """AFLoc's ``box_mapping``: scale by N/longest, add the pad, floor each value, int32.

    ``w`` and ``h`` are the original image width and height.
    """
    p = letterbox_params((h, w), n)
    b = np.array(box) * p.percent
    b = b.astype(np.float64)
    b[0] = int(np.floor(b[0] + p.left))
    b[1] = int(np.floor(b[1] + p.top))
    b[2] = int(np.floor(b[2]))
    b[3] = int(np.floor(b[3]))
    return b.astype(np.int32)


def afloc_box2mask(box: Sequence[int], w: int, h: int) -> np.ndarray:
    """AFLoc's ``box2mask``: ``mask[y:y+h, x:x+w] = 1`` with Python slice semantics (uint8)."""
    mask = np.zeros((h, w), dtype=np.uint8)
    x, y, bw, bh = (int(v) for v in box[:4])
    mask[y:y + bh, x:x + bw] = 1
    return mask


def afloc_boxes_mask(boxes: Iterable[Sequence[float]], image_size: Sequence[int], n: int) -> np.ndarray:
    """The official AFLoc box ground truth in the N×N letterbox frame: per-box masks **summed**.

    Pixels covered by two boxes hold 2 (AFLoc's merged MS-CXR phrases, RSNA multi-box rows).
    """
    h, w = int(image_size[0]), int(image_size[1])
    out = np.zeros((n, n), dtype=np.uint8)
    for box in boxes:
        out += afloc_box2mask(afloc_box_mapping(box, w, h, n), n, n)
    return out


def afloc_mask_to_frame(mask: np.ndarray, n: int) -> np.ndarray:
    """AFLoc's mask mapping: ``_resize_img`` (INTER_AREA + zero padding) then ``>= 1e-5``.

    The dtype decides the rounding, as in the official loaders: a uint8 0/1 mask
    (CheXlocalize RLE) is rounded by OpenCV, so a frame pixel needs about half coverage; a
    float mask (COVID Rural PNG read as float32) keeps any partial coverage.
    """
    if not mask.any():
        return np.zeros((n, n), dtype=np.uint8)
    return (letterbox_array(mask, n) >= AFLOC_MASK_EPS).astype(np.uint8)


def afloc_margin_valid(frame_size: Sequence[int], resize: int = AFLOC_MARGIN_RESIZE,
                       crop: int = AFLOC_MARGIN_CROP) -> np.ndarray:
    """Boolean (H, W) map of the pixels AFLoc's ``set_margin`` keeps (True = valid).

    The kept square has side ``int(crop * min(H, W) / resize)`` (196 for 224), placed with
    floor on the left/top; everything else becomes NaN.
    """
    h, w = int(frame_size[0]), int(frame_size[1])
    side = int(crop * min(h, w) / resize)
    top, left = (h - side) // 2, (w - side) // 2
    valid = np.zeros((h, w), dtype=bool)
    valid[top:top + side, left:left + side] = True
    return valid


def afloc_sample_mask(sample: Any, n: int = 224, image_size: Sequence[int] | None = None) -> np.ndarray:
    """Ground truth of a ``Sample`` in AFLoc's N×N letterbox frame, by the official rules.

    - boxes: ``box_mapping`` + ``box2mask``, **summed** (overlaps hold 2);
    - RLEs (CheXlocalize): decoded uint8, ``_resize_img`` with OpenCV rounding, ``>= 1e-5``;
    - mask files (COVID Rural): stored values as float32, ``_resize_img``, ``>= 1e-5``;
    - polygons (no official counterpart): rasterised in original pixels, then as mask files.
    Sources are combined as: summed boxes, then a union with the other sources.
    """
    size = sample_size(sample, image_size)
    out = afloc_boxes_mask(sample.boxes, size, n) if sample.boxes else np.zeros((n, n), np.uint8)
    other = np.zeros((n, n), dtype=bool)
    if sample.rles:
        dec = np.zeros(size, dtype=np.uint8)
        for rle in sample.rles:
            dec |= decode_rle(rle, size)
        other |= afloc_mask_to_frame(dec, n) > 0
    if sample.mask_paths:
        raw = np.zeros(size, dtype=np.float32)
        for path in sample.mask_paths:
            raw = np.maximum(raw, read_mask_file(path, size, raw=True))
        other |= afloc_mask_to_frame(raw, n) > 0
    if sample.polygons:
        other |= afloc_mask_to_frame(rasterize_polygons(sample.polygons, size).astype(np.float32), n) > 0
    return np.where(other & (out == 0), 1, out).astype(np.uint8)
