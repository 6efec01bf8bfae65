"""The real material the phantoms are built from, read from the installed ``torchxrayvision`` package.

``torchxrayvision`` ships, in its ``data/`` folder, 3,955 OpenI radiology reports with MeSH
tags, 517 lung masks (v7labs) and the annotation tables of RSNA Pneumonia, SIIM-ACR,
NIH ChestX-ray14 (boxes) and VinDr-CXR. Nothing is copied into the project: every
generation reads them from the installed package. The package is located without being
imported (importing it would pull in torch).

Geometry is brought to one *canonical frame*: coordinates normalised by the image size of
the 1024x1024 tables (RSNA, NIH, SIIM). VinDr boxes come without image sizes; they are
mapped into the same frame by a per-axis linear calibration that aligns the median centre
and size of VinDr's cardiomegaly boxes with NIH's.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.dataset import DataError

LUNG_BANK_SIZE = 160  # side of the stored lung-pair masks (union bounding box, resampled)


# pandas 2 parses floats with a fast, inexact parser unless asked; pandas 3 parses them exactly by
# default and deprecates the option. The demo's box tables must read the same everywhere.
def _exact_floats() -> dict:
    import pandas as pd

    return {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def data_dir() -> Path:
    """The ``data/`` folder of the installed torchxrayvision package."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, "the demo generator needs the `torchxrayvision` package (pip install torchxrayvision): "
                              "its data/ folder holds the real reports, lung masks and annotation tables")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _source(name: str) -> Path:
    path = data_dir() / name
    if not path.is_file():
        raise DataError(path, "expected this file shipped in torchxrayvision's data/ folder")
    return path


# --------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Report:
    """One OpenI (Indiana University) report: its text sections and MeSH tags."""

    uid: str  # "CXR1000"
    findings: str
    impression: str
    indication: str
    comparison: str
    major: tuple[str, ...]  # e.g. "Opacity/lung/base/left"
    automatic: tuple[str, ...]

    @property
    def is_normal(self) -> bool:
        return not self.major or all(t.strip().lower() == "normal" for t in self.major)


@functools.lru_cache(maxsize=1)
def reports() -> tuple[Report, ...]:
    """All OpenI reports with an impression or findings section, ordered by their numeric id."""
    path = _source("NLMCXR_reports.tgz")
    out: list[Report] = []
    try:
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                if not member.isfile() or not member.name.endswith(".xml"):
                    continue
                root = ET.fromstring(tf.extractfile(member).read())
                sections = {e.get("Label"): (e.text or "").strip() for e in root.iter("AbstractText")}
                uid_el = root.find("uId")
                uid = uid_el.get("id") if uid_el is not None else Path(member.name).stem
                rep = Report(
                    uid=str(uid),
                    findings=sections.get("FINDINGS", ""),
                    impression=sections.get("IMPRESSION", ""),
                    indication=sections.get("INDICATION", ""),
                    comparison=sections.get("COMPARISON", ""),
                    major=tuple((e.text or "").strip() for e in root.iter("major") if (e.text or "").strip()),
                    automatic=tuple((e.text or "").strip() for e in root.iter("automatic") if (e.text or "").strip()),
                )
                if rep.findings or rep.impression:
                    out.append(rep)
    except (tarfile.TarError, ET.ParseError) as exc:
        raise DataError(path, f"cannot read the OpenI report archive ({exc})") from exc
    out.sort(key=lambda r: int("".join(ch for ch in r.uid if ch.isdigit()) or 0))
    return tuple(out)


# --------------------------------------------------------------------------- lung masks
@dataclass(frozen=True)
class LungShape:
    """A real lung pair: ``labels`` is ``LUNG_BANK_SIZE``² uint8 over the pair's bounding box
    (1 = image-left lung = patient's right, 2 = image-right lung = patient's left);
    ``aspect`` = height / width of that box in the source image; ``frame`` = the box in
    source-image-normalised coordinates ``(x0, y0, x1, y1)``."""

    name: str
    labels: np.ndarray
    aspect: float
    frame: tuple[float, float, float, float]


@functools.lru_cache(maxsize=1)
def lung_shapes() -> tuple[LungShape, ...]:
    """The v7labs masks that show two upright lungs, one per image half (about 400 of 517 pass).

    Decoding the archive takes seconds, so the selected shapes are kept in the cache folder,
    keyed by the archive's size and modification time and this module's selection version.
    """
    path = _source("semantic_masks_v7labs_lungs.zip")
    st = path.stat()
    cached = _cache_dir() / f"lungs-v{_LUNG_SELECTION_VERSION}-{st.st_size}-{int(st.st_mtime)}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return tuple(LungShape(name=str(n), labels=lbl, aspect=float(a), frame=tuple(float(v) for v in f))
                             for n, lbl, a, f in zip(z["names"], z["labels"], z["aspects"], z["frames"]))
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            pass
    shapes = _select_lung_shapes(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, names=np.array([s.name for s in shapes]),
                            labels=np.stack([s.labels for s in shapes]),
                            aspects=np.array([s.aspect for s in shapes]),
                            frames=np.array([s.frame for s in shapes]))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs time
    return shapes


_LUNG_SELECTION_VERSION = 2  # 2: integer block reduction and labelling (identical on every machine)


def _cache_dir() -> Path:
    from benchmark.dataset import cache_home

    return cache_home() / "demo" / "material"


MASK_SIDE = 400  # the masks are reduced to about this longest side (the shape is all that is kept)


def _select_lung_shapes(path: Path) -> tuple[LungShape, ...]:
    """Decode every mask (PNG: lossless), threshold it and reduce it by an integer factor with
    integer counts (a block is lung when most of its pixels are): no floating point, so the
    selection is the same on every machine and library version."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from benchmark.parallel import usable_cores

    def select(item: tuple[str, bytes]) -> LungShape | None:  # decoding and labelling release the GIL
        arr = cv2.imdecode(np.frombuffer(item[1], np.uint8), cv2.IMREAD_GRAYSCALE)
        return None if arr is None else _lung_pair(_reduce_mask(arr > 127), item[0])

    with zipfile.ZipFile(path) as zf:
        items = [(n, zf.read(n)) for n in sorted(n for n in zf.namelist() if not n.endswith("/"))]
    with ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="afloc-lungs") as pool:
        out = [shape for shape in pool.map(select, items) if shape is not None]  # in name order
    if len(out) < 50:
        raise DataError(path, f"expected hundreds of two-lung masks, found {len(out)}")
    return tuple(out)


def _reduce_mask(mask: np.ndarray) -> np.ndarray:
    """A bool mask reduced by the integer factor that brings its longest side to ``MASK_SIDE`` or
    less: a block is set when more than half of its pixels are (the ragged edge is dropped)."""
    f = -(-max(mask.shape) // MASK_SIDE)
    if f <= 1:
        return mask
    h, w = mask.shape[0] // f, mask.shape[1] // f
    counts = mask[:h * f, :w * f].reshape(h, f, w, f).sum(axis=(1, 3), dtype=np.int32)
    return counts * 2 > f * f


def _lung_pair(mask: np.ndarray, name: str) -> LungShape | None:
    from scipy import ndimage

    h, w = mask.shape
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))  # 8-connected, labels in raster order
    if n < 2:
        return None
    area = np.bincount(lab.ravel(), minlength=n + 1)
    comps = [i for i in range(1, n + 1) if area[i] > 0.01 * h * w]
    if len(comps) != 2:
        return None
    ys, xs = np.nonzero(lab)
    sx = np.bincount(lab[ys, xs], weights=xs, minlength=n + 1)  # integer coordinates: exact sums
    cent = {i: float(sx[i]) / int(area[i]) for i in comps}
    comps.sort(key=lambda i: cent[i])
    a, b = comps
    if not (cent[a] < w / 2 < cent[b]):
        return None
    boxes = ndimage.find_objects(lab)

    def box(i):
        sy, sx_ = boxes[i - 1]
        return sx_.start, sy.start, sx_.stop - sx_.start, sy.stop - sy.start

    xa, ya, wa, ha = box(a)
    xb, yb, wb, hb = box(b)
    if max(ha, hb) > 1.6 * min(ha, hb) or abs((ya + ha / 2) - (yb + hb / 2)) > 0.25 * max(ha, hb):
        return None
    x0, y0 = min(xa, xb), min(ya, yb)
    x1, y1 = max(xa + wa, xb + wb), max(ya + ha, yb + hb)
    bw, bh = x1 - x0, y1 - y0
    aspect = bh / bw
    if not (0.65 <= aspect <= 1.25) or bw < 0.35 * w:
        return None
    # upright: each lung is wider near its base than near its apex
    for i, (cx, cy, cw, ch) in ((a, (xa, ya, wa, ha)), (b, (xb, yb, wb, hb))):
        comp = lab[cy:cy + ch, cx:cx + cw] == i
        top = comp[int(0.15 * ch)].sum()
        low = comp[int(0.75 * ch)].sum()
        if top >= low:
            return None
    crop = lab[y0:y1, x0:x1]
    labels = np.zeros(crop.shape, np.uint8)
    labels[crop == a] = 1
    labels[crop == b] = 2
    labels = labels[_nearest(crop.shape[0], LUNG_BANK_SIZE)][:, _nearest(crop.shape[1], LUNG_BANK_SIZE)]
    return LungShape(name=name.split("/")[-1], labels=labels, aspect=float(aspect),
                     frame=(x0 / w, y0 / h, x1 / w, y1 / h))


def _nearest(n_src: int, n_dst: int) -> np.ndarray:
    """Nearest-neighbour source index of each destination index (pixel centres aligned, integers only)."""
    return ((2 * np.arange(n_dst, dtype=np.int64) + 1) * n_src) // (2 * n_dst)


@functools.lru_cache(maxsize=1)
def canonical_lung_frame() -> tuple[float, float, float, float]:
    """Median lung-pair box, in image-normalised coordinates, over masks of whole radiographs.

    Lesion geometry from the 1024² tables is mapped from this box onto each phantom's lungs.
    """
    frames = np.array([s.frame for s in lung_shapes()])
    widths = frames[:, 2] - frames[:, 0]
    keep = frames[(widths > 0.6) & (widths < 0.9) & (frames[:, 1] > 0.03) & (frames[:, 3] < 0.97)]
    if len(keep) < 20:
        keep = frames
    from benchmark.demo.detmath import median

    return tuple(median(keep[:, j]) for j in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------- box tables
@functools.lru_cache(maxsize=1)
def boxes() -> dict[str, np.ndarray]:
    """Real boxes per source class, canonical ``[x0, y0, x1, y1]`` rows (float64).

    Keys: ``rsna:Lung Opacity``, ``nih:<Finding Label>``, ``vindr:<class_name>``.
    """
    import pandas as pd

    out: dict[str, np.ndarray] = {}
    path = _source("kaggle_stage_2_train_labels.csv.zip")
    rsna = pd.read_csv(path, **_exact_floats()).dropna(subset=["x", "y", "width", "height"])
    xy = rsna[["x", "y", "width", "height"]].to_numpy(float) / 1024.0
    out["rsna:Lung Opacity"] = np.c_[xy[:, 0], xy[:, 1], xy[:, 0] + xy[:, 2], xy[:, 1] + xy[:, 3]]

    path = _source("BBox_List_2017.csv.gz")
    nih = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), **_exact_floats(),
                      names=["image", "label", "x", "y", "w", "h"])
    for label, grp in nih.groupby("label", sort=True):
        v = grp[["x", "y", "w", "h"]].to_numpy(float) / 1024.0
        out[f"nih:{label}"] = np.c_[v[:, 0], v[:, 1], v[:, 0] + v[:, 2], v[:, 1] + v[:, 3]]

    path = _source("vinbigdata-train.csv.gz")
    vin = pd.read_csv(path, **_exact_floats()).dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    cal = _vindr_calibration(vin, out["nih:Cardiomegaly"])
    for label, grp in vin.groupby("class_name", sort=True):
        v = grp[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        v = np.c_[v[:, [0, 2]] * cal[0] + cal[1], v[:, [1, 3]] * cal[2] + cal[3]][:, [0, 2, 1, 3]]
        v = np.clip(v, 0.0, 1.0)
        v = v[(v[:, 2] - v[:, 0] > 0.004) & (v[:, 3] - v[:, 1] > 0.004)]
        out[f"vindr:{label}"] = v
    return out


@functools.lru_cache(maxsize=1)
def rsna_box_sets() -> tuple[np.ndarray, ...]:
    """Canonical boxes ``[x0, y0, x1, y1]`` of each RSNA positive patient (1 to 4 boxes each)."""
    import pandas as pd

    rsna = pd.read_csv(_source("kaggle_stage_2_train_labels.csv.zip"), **_exact_floats())
    rsna = rsna.dropna(subset=["x", "y", "width", "height"])
    rsna = rsna.sort_values("patientId", kind="stable")
    v = rsna[["x", "y", "width", "height"]].to_numpy(float) / 1024.0
    v = np.c_[v[:, 0], v[:, 1], v[:, 0] + v[:, 2], v[:, 1] + v[:, 3]]
    ids = rsna["patientId"].to_numpy()
    starts = np.r_[0, np.nonzero(ids[1:] != ids[:-1])[0] + 1, len(ids)]
    return tuple(v[a:b] for a, b in zip(starts[:-1], starts[1:]))


def _vindr_calibration(vin, nih_cardio: np.ndarray) -> tuple[float, float, float, float]:
    """``(ax, bx, ay, by)`` with canonical = a * pixel + b, aligning cardiomegaly boxes."""
    from benchmark.demo.detmath import median

    c = vin[vin["class_name"] == "Cardiomegaly"][["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    vw, vh = median(c[:, 2] - c[:, 0]), median(c[:, 3] - c[:, 1])
    vcx, vcy = median((c[:, 0] + c[:, 2]) / 2), median((c[:, 1] + c[:, 3]) / 2)
    n = nih_cardio
    nw, nh = median(n[:, 2] - n[:, 0]), median(n[:, 3] - n[:, 1])
    ncx, ncy = median((n[:, 0] + n[:, 2]) / 2), median((n[:, 1] + n[:, 3]) / 2)
    ax, ay = nw / vw, nh / vh
    return float(ax), float(ncx - ax * vcx), float(ay), float(ncy - ay * vcy)


# --------------------------------------------------------------------------- SIIM masks
@functools.lru_cache(maxsize=1)
def siim_positive_rles() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(ImageId, (rle, ...))`` for every SIIM-ACR image with at least one pneumothorax row."""
    import pandas as pd

    path = _source("siim-pneumothorax-train-rle.csv.gz")
    with gzip.open(path, "rt") as fh:
        df = pd.read_csv(io.StringIO(fh.read()))
    col = [c for c in df.columns if c.strip() == "EncodedPixels"]
    if not col:
        raise DataError(path, "expected columns `ImageId, EncodedPixels`")
    df = df.rename(columns={col[0]: "rle"})
    df["rle"] = df["rle"].astype(str).str.strip()
    df = df[df["rle"] != "-1"]
    return tuple((img, tuple(grp["rle"])) for img, grp in df.groupby("ImageId", sort=True))


def decode_relative_rle(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """SIIM-ACR relative column-major RLE → bool ``(height, width)``."""
    flat = np.zeros(height * width, dtype=bool)
    vals = np.asarray(rle.split(), dtype=np.int64)
    pos = 0
    for gap, length in zip(vals[0::2], vals[1::2]):
        pos += int(gap)
        flat[pos:pos + int(length)] = True
        pos += int(length)
    return flat.reshape(width, height).T


@functools.lru_cache(maxsize=4096)
def siim_mask(index: int, size: int = 256) -> np.ndarray:
    """Union of the real pneumothorax masks of positive SIIM image ``index``, at ``size``² (float32
    0..1: the fraction of each block that is pneumothorax, from integer counts)."""
    items = siim_positive_rles()
    _, rles = items[index % len(items)]
    m = np.zeros((1024, 1024), bool)
    for r in rles:
        m |= decode_relative_rle(r)
    f = 1024 // size
    if f * size != 1024:
        raise ValueError(f"size must divide 1024, not {size}")
    counts = m.reshape(size, f, size, f).sum(axis=(1, 3), dtype=np.int32)
    return counts.astype(np.float32) * np.float32(1.0 / (f * f))
