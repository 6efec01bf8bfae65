"""Frames: the letterbox, resize and crop geometries a model's grid covers, and maps moved between them.

Coordinates: ``image_size`` and frame sizes are ``(height, width)``; boxes are
``[x, y, w, h]`` with ``(x, y)`` the top-left corner. Continuous coordinates are *edge*
coordinates (pixel ``i`` spans ``[i, i + 1)``), so a frame axis relates to the original
axis by ``u = s * x + t``.

Input-geometry specs understood by :func:`parse_geometry`:

- ``letterbox:N``: longest side to N with ``cv2.INTER_AREA`` (other side
  ``int(side * N / longest)``), centred zero padding with floor on top/left and ceil on
  bottom/right, exactly AFLoc's ``_resize_img``.
- ``resize:HxW`` (or ``resize:N``): plain resize to H×W, aspect ratio not kept.
- ``resize_crop:R:C``: shorter side to R then a centred C×C crop (BioViL: 512 then 480
  or 448). The crop footprint in original pixels follows hi-ml: side
  ``s = int(C * min(H, W) / R)``, placed at ``floor((W - s) / 2)``, ``floor((H - s) / 2)``.
  ``resize_crop:R:C:nearest`` upsamples the grid to that footprint with nearest instead of
  bilinear (hi-ml's default ``interpolation``).
- ``native``: the original image itself (frame = original pixels).

Only numpy at module level; cv2, PIL, pycocotools and torch are imported where used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LetterboxParams:
    """Where an (H, W) image lands in an N×N letterbox frame."""

    new_h: int
    new_w: int
    top: int
    left: int
    percent: float  # AFLoc's nominal scale N / longest side (used by ``box_mapping``)


def letterbox_params(image_size: Sequence[int], n: int) -> LetterboxParams:
    """AFLoc's arithmetic: ``int(side * percent)`` for the short side, floor top/left padding.

    A square image takes the "taller" branch (``size.index(max)`` finds the height first).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {(h, w)}")
    if max(h, w) == h:  # taller (or square)
        percent = n / float(h)
        new_w = int(float(w) * float(percent))
        new_h = n
        pad = n - new_w
        return LetterboxParams(new_h, new_w, 0, int(np.floor(pad / 2)), percent)
    percent = n / float(w)
    new_h = int(float(h) * float(percent))
    new_w = n
    pad = n - new_h
    return LetterboxParams(new_h, new_w, int(np.floor(pad / 2)), 0, percent)


def letterbox_array(img: np.ndarray, n: int) -> np.ndarray:
    """``cv2.INTER_AREA`` resize of the longest side to ``n`` plus centred zero padding.

    Same arithmetic and dtype behaviour as AFLoc's ``_resize_img`` (uint8 stays uint8 and
    is rounded by OpenCV; float32 stays float32). Colour images (H, W, C) are padded on the
    two spatial axes.
    """
    import cv2

    p = letterbox_params(img.shape[:2], n)
    resized = cv2.resize(img, (p.new_w, p.new_h), interpolation=cv2.INTER_AREA)
    bottom = n - p.new_h - p.top
    right = n - p.new_w - p.left
    pad = [(p.top, bottom), (p.left, right)] + [(0, 0)] * (resized.ndim - 2)
    return np.pad(resized, pad, "constant", constant_values=0)


# --------------------------------------------------------------------------------------
# Grid → frame: smoothing and bilinear upsampling
# --------------------------------------------------------------------------------------
def smooth_grid(grid: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian smoothing on the native grid (scipy defaults: ``reflect``, truncate 4).

    This is the BioViL/AFLoc step ``ndimage.gaussian_filter(sim, sigma=(s, s), order=0)``;
    the output keeps the input dtype, as in the official code. Batches (B, h, w) are
    smoothed per map.
    """
    from scipy import ndimage

    grid = np.asarray(grid)
    if sigma <= 0:
        return grid.copy()
    if grid.ndim == 2:
        return ndimage.gaussian_filter(grid, sigma=(sigma, sigma), order=0)
    # sigma 0 on the batch axis: scipy filters the other two axes line by line, as for one map
    return ndimage.gaussian_filter(grid, sigma=(0, sigma, sigma), order=0)


def _axis_taps(src: np.ndarray, n_in: int, clamp_low: bool = True):
    """Integer taps and weights along one axis, with torch's border rules."""
    inside = (src >= -0.5) & (src <= n_in - 0.5)
    c = np.maximum(src, 0.0) if clamp_low else src
    i0 = np.floor(c).astype(np.int64)
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(c - i0, 0.0, 1.0)
    w1 = np.where(i1 == i0, 0.0, w1)
    return i0, i1, 1.0 - w1, w1, inside


def _bilinear_numpy(arr: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """torch's CPU bilinear kernel in numpy: source indices and weights in float32
    (torch's ``opmath`` for float maps), ``(x00*w0 + x01*w1)*h0 + (x10*w0 + x11*w1)*h1``."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    ih, iw = arr.shape[-2:]
    f = np.float32 if arr.dtype != np.float64 else np.float64

    def taps(n_out: int, n_in: int):
        scale = f(n_in) / f(n_out)
        src = np.maximum(scale * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5), f(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = np.clip(src - i0.astype(f), f(0), f(1)).astype(f)
        return i0, i1, (f(1) - l1).astype(f), l1

    y0, y1, h0, h1 = taps(oh, ih)
    x0, x1, w0, w1 = taps(ow, iw)
    a = arr.astype(f)
    top = a[..., y0, :][..., :, x0] * w0 + a[..., y0, :][..., :, x1] * w1
    bot = a[..., y1, :][..., :, x0] * w0 + a[..., y1, :][..., :, x1] * w1
    return (top * h0[:, None] + bot * h1[:, None]).astype(f)


def bilinear_resize(arr: np.ndarray, out_hw: Sequence[int], *, use_torch: bool | None = None) -> np.ndarray:
    """Bilinear resize (align_corners=False) of a map (h, w) or batch (B, h, w).

    With torch available this *is* ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` in the array's dtype, the call AFLoc, BioViL and CheXlocalize
    make; otherwise a numpy implementation of the same formula (agrees to ~1e-7).
    """
    arr = np.asarray(arr)
    if use_torch is None:
        use_torch = _torch_available()
    if use_torch:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(arr))
        shape = x.shape
        x4 = x.reshape(-1, 1, shape[-2], shape[-1])
        y = F.interpolate(x4, size=(int(out_hw[0]), int(out_hw[1])), mode="bilinear", align_corners=False)
        return y.reshape(*shape[:-2], int(out_hw[0]), int(out_hw[1])).numpy()
    return _bilinear_numpy(arr, out_hw)


_TORCH: bool | None = None


def _torch_available() -> bool:
    global _TORCH
    if _TORCH is None:
        try:
            import torch  # noqa: F401

            _TORCH = True
        except Exception:  # pragma: no cover - torch is a project dependency
            _TORCH = False
    return _TORCH


def sample_bilinear(fmap: np.ndarray, sy: float, ty: float, sx: float, tx: float,
                    out_hw: Sequence[int]) -> np.ndarray:
    """Resample ``fmap`` (h, w) or a batch (B, h, w) onto an output grid related by ``u = s * x + t``
    (edge coords).

    Output pixels whose centre falls outside ``fmap`` are NaN; inside, bilinear with the
    align_corners=False border rule. float64 result; a batch gives each map's values exactly.
    """
    ih, iw = fmap.shape[-2:]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    src_y = (np.arange(oh) + 0.5) * sy + ty - 0.5
    src_x = (np.arange(ow) + 0.5) * sx + tx - 0.5
    y0, y1, wy0, wy1, iny = _axis_taps(src_y, ih)
    x0, x1, wx0, wx1, inx = _axis_taps(src_x, iw)
    a = fmap.astype(np.float64)
    # a[:, x0] * wx0 + a[:, x1] * wx1, then the same along y, with two buffers instead of six
    rows = np.take(a, x0, axis=-1)
    rows *= wx0
    tmp = np.take(a, x1, axis=-1)
    tmp *= wx1
    rows += tmp
    out = np.take(rows, y0, axis=-2)
    out *= wy0[:, None]
    tmp = np.take(rows, y1, axis=-2)
    tmp *= wy1[:, None]
    out += tmp
    out[..., ~iny, :] = np.nan
    out[..., :, ~inx] = np.nan
    return out


# --------------------------------------------------------------------------------------
# Input geometries
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Affine:
    """Per-axis map from original edge coordinates to frame edge coordinates: u = s*x + t."""

    sy: float
    ty: float
    sx: float
    tx: float

    def to_frame(self, x: np.ndarray | float, y: np.ndarray | float):
        return self.sx * np.asarray(x, dtype=np.float64) + self.tx, self.sy * np.asarray(y, dtype=np.float64) + self.ty

    def to_original(self, u: np.ndarray | float, v: np.ndarray | float):
        return ((np.asarray(u, dtype=np.float64) - self.tx) / self.sx,
                (np.asarray(v, dtype=np.float64) - self.ty) / self.sy)


class Geometry:
    """An input geometry: the frame a model sees and how it relates to the original image."""

    spec: str = ""

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        raise NotImplementedError

    def affine(self, image_size: Sequence[int]) -> Affine:
        raise NotImplementedError

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        """The image as the model sees it (the reference preprocessing of this geometry)."""
        raise NotImplementedError

    # -- derived, shared by all geometries ---------------------------------------------
    def footprint(self, image_size: Sequence[int]) -> np.ndarray:
        """Boolean frame map: True where the frame pixel centre lies on the image."""
        fh, fw = self.frame_size(image_size)
        a = self.affine(image_size)
        h, w = int(image_size[0]), int(image_size[1])
        x, y = a.to_original(np.arange(fw) + 0.5, np.arange(fh) + 0.5)
        return ((y >= 0) & (y < h))[:, None] & ((x >= 0) & (x < w))[None, :]

    def map_to_frame(self, omap: np.ndarray, image_size: Sequence[int], *, area: bool = False) -> np.ndarray:
        """Original-resolution float map → frame (NaN off the image).

        ``area=True`` averages with ``cv2.INTER_AREA`` (for masks and downscaling);
        otherwise bilinear sampling.
        """
        if area:
            return self._area_to_frame(omap.astype(np.float32), image_size)
        return transfer_map(omap, Native(), self, image_size)

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def frame_to_original(self, fmap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        """Frame map → original image coordinates by bilinear sampling; NaN off the frame.

        Pixels of the original that the frame does not cover (e.g. cropped away by
        ``resize_crop``) are NaN, as are pixels whose sample touches a NaN frame pixel.
        """
        a = self.affine(image_size)
        h, w = int(image_size[0]), int(image_size[1])
        return sample_bilinear(np.asarray(fmap), a.sy, a.ty, a.sx, a.tx, (h, w))

    def grid_to_original(self, grid: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        """Native grid → original image coordinates in one bilinear step; NaN off the frame.

        One interpolation instead of two (grid→frame→original): each original pixel
        centre is mapped to its frame position and then to grid coordinates.
        """
        fh, fw = self.frame_size(image_size)
        gh, gw = np.asarray(grid).shape[-2:]
        a = self.affine(image_size)
        h, w = int(image_size[0]), int(image_size[1])
        # original edge x -> frame edge u = sx*x + tx -> grid edge g = u * gw / fw
        return sample_bilinear(np.asarray(grid), a.sy * gh / fh, a.ty * gh / fh, a.sx * gw / fw, a.tx * gw / fw, (h, w))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)


class Letterbox(Geometry):
    """Longest side to N (INTER_AREA), centred zero padding (AFLoc's ``_resize_img``)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.spec = f"letterbox:{self.n}"

    def params(self, image_size: Sequence[int]) -> LetterboxParams:
        return letterbox_params(image_size, self.n)

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        return (self.n, self.n)

    def affine(self, image_size: Sequence[int]) -> Affine:
        # Per-axis factor of the actual cv2 resize (new/old), not AFLoc's nominal percent.
        p = self.params(image_size)
        return Affine(p.new_h / image_size[0], p.top, p.new_w / image_size[1], p.left)

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        return letterbox_array(img, self.n)

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        out = letterbox_array(omap, self.n).astype(np.float32)
        out[~self.footprint(image_size)] = np.nan
        return out


class LetterboxCrop(Geometry):
    """Letterbox to N, then a centred C×C crop (GLoRIA: resize-and-pad 256, CenterCrop 224).

    The crop offset is torchvision ``CenterCrop``'s ``int(round((N - C) / 2))``.
    """

    def __init__(self, n: int, crop: int):
        self.n, self.crop = int(n), int(crop)
        if self.crop > self.n:
            raise ValueError(f"crop {self.crop} larger than letterbox {self.n}")
        self.offset = int(round((self.n - self.crop) / 2.0))
        self.spec = f"letterbox_crop:{self.n}:{self.crop}"
        self._box = Letterbox(self.n)

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        return (self.crop, self.crop)

    def affine(self, image_size: Sequence[int]) -> Affine:
        a = self._box.affine(image_size)
        return Affine(a.sy, a.ty - self.offset, a.sx, a.tx - self.offset)

    def _window(self, arr: np.ndarray) -> np.ndarray:
        o, c = self.offset, self.crop
        return arr[o:o + c, o:o + c].copy()

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        return self._window(self._box.image_to_frame(img))

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        return self._window(self._box._area_to_frame(omap, image_size))


class Resize(Geometry):
    """Plain resize to H×W (aspect ratio not kept)."""

    def __init__(self, h: int, w: int, interpolation: str = "area"):
        self.h, self.w = int(h), int(w)
        self.interpolation = interpolation
        self.spec = f"resize:{self.h}x{self.w}"

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        return (self.h, self.w)

    def affine(self, image_size: Sequence[int]) -> Affine:
        return Affine(self.h / image_size[0], 0.0, self.w / image_size[1], 0.0)

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        import cv2

        flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                "cubic": cv2.INTER_CUBIC}[self.interpolation]
        return cv2.resize(img, (self.w, self.h), interpolation=flag)

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        import cv2

        return cv2.resize(omap, (self.w, self.h), interpolation=cv2.INTER_AREA).astype(np.float32)

    def grid_to_original(self, grid: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        # Frame and image coincide up to scale: one F.interpolate to (H, W), as CheXlocalize.
        return bilinear_resize(grid, (int(image_size[0]), int(image_size[1])))


class ResizeCrop(Geometry):
    """Shorter side to R, centred C×C crop (BioViL). Footprint placement follows hi-ml."""

    def __init__(self, resize: int, crop: int, grid_mode: str = "bilinear"):
        self.resize, self.crop, self.grid_mode = int(resize), int(crop), grid_mode
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} larger than resize {self.resize}")
        if grid_mode not in ("bilinear", "nearest"):
            raise ValueError(f"grid interpolation must be bilinear or nearest, not {grid_mode!r}")
        self.spec = f"resize_crop:{self.resize}:{self.crop}" + ("" if grid_mode == "bilinear" else f":{grid_mode}")

    def crop_window(self, image_size: Sequence[int]) -> tuple[int, int, int]:
        """(top, left, side) of the crop in original pixels (hi-ml's arithmetic)."""
        h, w = int(image_size[0]), int(image_size[1])
        side = int(self.crop * min(h, w) / self.resize)
        return math.floor((h - side) / 2), math.floor((w - side) / 2), side

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        return (self.crop, self.crop)

    def affine(self, image_size: Sequence[int]) -> Affine:
        top, left, side = self.crop_window(image_size)
        s = self.crop / side
        return Affine(s, -top * s, s, -left * s)

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        """torchvision ``Resize(R)`` (PIL bilinear) then ``CenterCrop(C)``, as BioViL."""
        from PIL import Image

        h, w = img.shape[:2]
        if h <= w:
            new_h, new_w = self.resize, int(self.resize * w / h)
        else:
            new_h, new_w = int(self.resize * h / w), self.resize
        pil = Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR)
        arr = np.asarray(pil)
        top = int(round((new_h - self.crop) / 2.0))
        left = int(round((new_w - self.crop) / 2.0))
        return arr[top:top + self.crop, left:left + self.crop].copy()

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        import cv2

        top, left, side = self.crop_window(image_size)
        window = omap[top:top + side, left:left + side]
        return cv2.resize(window, (self.crop, self.crop), interpolation=cv2.INTER_AREA).astype(np.float32)

    def grid_to_original(self, grid: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        """hi-ml's ``convert_similarity_to_image_size``: interpolate to (s, s), NaN padding."""
        h, w = int(image_size[0]), int(image_size[1])
        top, left, side = self.crop_window(image_size)
        if self.grid_mode == "nearest":
            import torch
            import torch.nn.functional as F

            g = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
            inner = F.interpolate(g, size=(side, side), mode="nearest")[0, 0].numpy().astype(np.float64)
        else:
            inner = bilinear_resize(grid, (side, side)).astype(np.float64)
        out = np.full((h, w), np.nan, dtype=np.float64)
        out[top:top + side, left:left + side] = inner
        return out


class Native(Geometry):
    """The original image itself (no resizing)."""

    spec = "native"

    def frame_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        return (int(image_size[0]), int(image_size[1]))

    def affine(self, image_size: Sequence[int]) -> Affine:
        return Affine(1.0, 0.0, 1.0, 0.0)

    def image_to_frame(self, img: np.ndarray) -> np.ndarray:
        return img.copy()

    def _area_to_frame(self, omap: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
        return omap.astype(np.float32)


def transfer_map(fmap: np.ndarray, src: Geometry | str, dst: Geometry | str, image_size: Sequence[int]) -> np.ndarray:
    """Move a map (or a batch of maps) from one frame of an image to another frame of the same image.

    Each destination pixel centre is mapped to original coordinates and then into the
    source frame, where ``fmap`` is sampled bilinearly; NaN where the source frame does
    not cover it. Identity (a copy) when both geometries are equal.
    """
    src, dst = parse_geometry(src), parse_geometry(dst)
    if src == dst:
        return np.array(fmap, dtype=np.float64, copy=True)
    a, b = src.affine(image_size), dst.affine(image_size)
    sy, sx = a.sy / b.sy, a.sx / b.sx
    ty, tx = a.ty - sy * b.ty, a.tx - sx * b.tx
    return sample_bilinear(np.asarray(fmap), sy, ty, sx, tx, dst.frame_size(image_size))


_SPEC_RE = {
    "letterbox": re.compile(r"^letterbox:(\d+)$"),
    "resize": re.compile(r"^resize:(\d+)(?:x(\d+))?$"),
    "resize_crop": re.compile(r"^resize_crop:(\d+):(\d+)(?::(bilinear|nearest))?$"),
    "letterbox_crop": re.compile(r"^letterbox_crop:(\d+):(\d+)$"),
}


def parse_geometry(spec: str | Geometry) -> Geometry:
    """``letterbox:224`` / ``resize:224x224`` / ``resize:224`` / ``resize_crop:512:480`` / ``native``."""
    if isinstance(spec, Geometry):
        return spec
    s = str(spec).strip().lower()
    if s in ("native", "identity", "original"):
        return Native()
    if m := _SPEC_RE["letterbox"].match(s):
        return Letterbox(int(m.group(1)))
    if m := _SPEC_RE["resize"].match(s):
        h = int(m.group(1))
        return Resize(h, int(m.group(2)) if m.group(2) else h)
    if m := _SPEC_RE["resize_crop"].match(s):
        return ResizeCrop(int(m.group(1)), int(m.group(2)), m.group(3) or "bilinear")
    if m := _SPEC_RE["letterbox_crop"].match(s):
        return LetterboxCrop(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"unknown input geometry {spec!r}; expected 'letterbox:N', 'letterbox_crop:N:C', "
                     f"'resize:HxW', 'resize_crop:R:C[:nearest]' or 'native'")
