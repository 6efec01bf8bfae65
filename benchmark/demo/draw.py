"""Drawing on float32 canvases, the same in every OpenCV version the project supports.

On a float canvas OpenCV ignores anti-aliasing and rasterises with integer code: filled
polygons, filled ellipses and circles and thick lines given in sub-pixel (``shift``) units come
out the same in every version and on every CPU. One-pixel lines do not (their rasteriser
changed between OpenCV 4.8 and 5.x), nor do thick lines with integer end points that cross the
border (their clipping changed). So thin strokes are drawn here, by sampling each segment once
per pixel along its major axis and rounding (what Bresenham's algorithm draws), and thick
lines always go to OpenCV in quarter pixels.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from benchmark.demo import detmath as dm


def polyline(canvas: np.ndarray, pts, thickness: float, value: float = 1.0) -> None:
    """An open polyline through float points ``(n, 2)`` (x, y), ``thickness`` rounded to pixels."""
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    t = max(1, int(round(thickness)))
    if t <= 1:
        _thin(canvas, p, value)
        return
    q = np.round(p * 4).astype(np.int32).reshape(-1, 1, 2)  # quarter pixels (shift = 2)
    cv2.polylines(canvas, [q], False, float(value), t, cv2.LINE_AA, shift=2)


def line(canvas: np.ndarray, p0, p1, value: float, thickness: int) -> None:
    """A segment between integer points (``cv2.line`` for thick ones)."""
    if int(thickness) <= 1:
        _thin(canvas, np.array([p0, p1], np.float64), value)
        return
    # in quarter pixels: OpenCV clips thick integer-coordinate lines at the border differently by version
    cv2.line(canvas, (4 * int(p0[0]), 4 * int(p0[1])), (4 * int(p1[0]), 4 * int(p1[1])), float(value), int(thickness),
             cv2.LINE_AA, 2)


def ellipse_outline(canvas: np.ndarray, center, axes, angle_deg: float, value: float, thickness: int) -> None:
    """The outline of a whole ellipse (integer centre and axes, as ``cv2.ellipse`` takes them)."""
    cx, cy = int(center[0]), int(center[1])
    ax, ay = int(axes[0]), int(axes[1])
    if int(thickness) > 1:
        cv2.ellipse(canvas, (cx, cy), (ax, ay), float(angle_deg), 0, 360, float(value), int(thickness), cv2.LINE_AA)
        return
    cos_t, sin_t = _unit_circle(max(8, 4 * int(math.ceil(math.pi * (ax + ay)))))  # under half a pixel apart
    a = math.radians(round(float(angle_deg)))  # OpenCV rounds the angle to whole degrees
    ca, sa = dm.cos_s(a), dm.sin_s(a)
    x, y = ax * cos_t, ay * sin_t
    _set(canvas, cx + (x * ca - y * sa), cy + (x * sa + y * ca), value)


def circle_outline(canvas: np.ndarray, center, radius: int, value: float, thickness: int) -> None:
    if int(thickness) > 1:
        cv2.circle(canvas, (int(center[0]), int(center[1])), int(radius), float(value), int(thickness), cv2.LINE_AA)
        return
    ellipse_outline(canvas, center, (radius, radius), 0.0, value, 1)


@functools.lru_cache(maxsize=64)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n, dtype=np.float64) * (2.0 * math.pi / n)
    return dm.cos(t), dm.sin(t)


def _thin(canvas: np.ndarray, p: np.ndarray, value) -> None:
    """One-pixel polyline through float points: each segment sampled at every step of its longer
    axis, points rounded half to even, those inside the canvas set to ``value``."""
    p = np.asarray(p, np.float64)
    if len(p) < 2:
        return
    d = p[1:] - p[:-1]
    n = np.ceil(np.maximum(np.abs(d[:, 0]), np.abs(d[:, 1]))).astype(np.int64) + 1  # samples per segment
    seg = np.repeat(np.arange(len(d)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # sample index within its segment
    t = k / np.maximum(n - 1, 1)[seg]
    _set(canvas, p[seg, 0] + d[seg, 0] * t, p[seg, 1] + d[seg, 1] * t, value)


def _set(canvas: np.ndarray, x: np.ndarray, y: np.ndarray, value) -> None:
    h, w = canvas.shape[:2]
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    canvas[yi[ok], xi[ok]] = value
