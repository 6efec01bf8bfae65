"""Image preprocessing steps of the official baseline pipelines, reproduced step for step.

Each function takes and returns uint8 or float arrays and names the official step it copies,
because tiny differences (``int()`` versus ``round()``, INTER_AREA versus bilinear, antialias or
not) move results. Geometry for heatmaps (where the grid lies in the original image) is
declared by each adapter's ``input_geometry`` and handled by ``benchmark.geometry``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) from (H, W) or (H, W, 3|4) input (channels averaged as PIL ``L`` does for equal channels)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected a gray (H, W) or colour (H, W, 3) image, got shape {image.shape}")


def gloria_letterbox(img: np.ndarray, scale: int) -> np.ndarray:
    """GLoRIA's ``_resize_img``: longer side to ``scale`` (other side ``int()``-truncated) with
    INTER_AREA, then centred zero padding (floor before, ceil after) to ``scale``×``scale``."""

    h, w = img.shape[:2]
    if h >= w:  # taller (ties count as taller, as ``size.index(max)`` picks axis 0)
        size = (scale, int(float(w) * (scale / float(h))))
    else:
        size = (int(float(h) * (scale / float(w))), scale)
    resized = cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)
    if h >= w:
        pad = scale - resized.shape[1]
        pads = [(0, 0), (pad // 2, pad - pad // 2)]
    else:
        pad = scale - resized.shape[0]
        pads = [(pad // 2, pad - pad // 2), (0, 0)]
    return np.pad(resized, pads, mode="constant", constant_values=0)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``CenterCrop``: top/left offset ``int(round((H - size) / 2))`` (zero-padded if smaller)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = np.pad(img, [(ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2)] + [(0, 0)] * (img.ndim - 2))
        h, w = img.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img[top:top + size, left:left + size]


def pil_resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``Resize(size)`` on a PIL image: shorter side to ``size``, the other ``int(size*long/short)``,
    PIL bilinear (with PIL's antialiasing)."""

    h, w = img.shape[:2]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))


def pil_resize_exact(img: np.ndarray, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
    """torchvision ``Resize([h, w])`` on a PIL image (aspect ratio not kept)."""

    mode = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[resample]
    return np.asarray(Image.fromarray(img).resize((width, height), mode))


def to_tensor(img: np.ndarray, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, channels: int = 3):
    """``ToTensor`` (uint8 → [0, 1]) of a gray image replicated to ``channels``, then ``Normalize``."""

    x = torch.tensor(np.asarray(img), dtype=torch.float32).div(255.0)
    if x.ndim == 2:
        x = x.unsqueeze(0).expand(channels, -1, -1)
    else:
        x = x.permute(2, 0, 1)
    x = x.clone()
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        x = (x - m) / s
    return x


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
