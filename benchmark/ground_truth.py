"""Ground truth in each protocol's evaluation frame, for users who score their maps elsewhere.

``afloc-bench export-gt DATASET --protocol P -o OUT`` writes the masks a protocol scores against:

- ``afloc-compat@1``: chest X-rays in AFLoc's 224 letterbox frame by the official rules (boxes
  mapped and **summed**, so overlaps hold 2; masks resized with OpenCV; ``geometry.afloc``);
  histopathology at the image's own size;
- ``canonical@1``: the original image frame, boxes as their union;
- ``chexlocalize@1``: the original image frame, as CheXlocalize's ``eval.py`` reads it.

``OUT.npz`` (when every mask has one shape) holds ``masks`` uint8 [N, H, W], ``sample_id``,
``categories``, ``image_ids``, ``patient_ids`` and ``frame``: add your ``heatmaps`` [N, H, W] in
the same order and ``afloc-bench score --input`` scores them. Any other ``OUT`` is a folder of
one PNG per sample and ``index.csv`` (the only choice when masks differ in size). Samples whose
image cannot be read are counted and listed, not exported.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset import DataError


def protocol_frame(protocol_name: str, sample: Any) -> str:
    """The frame the protocol scores ``sample`` in: ``letterbox:224`` or ``native``."""
    from benchmark.protocols import common as C

    if protocol_name == "afloc-compat" and C.modality(sample) != C.PATHOLOGY:
        return "letterbox:224"
    return "native"


def protocol_mask(protocol_name: str, sample: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask ``protocol_name`` scores ``sample`` against, in ``protocol_frame``."""
    from benchmark.geometry.afloc import afloc_sample_mask
    from benchmark.geometry.rasterize import sample_mask

    if protocol_name not in ("afloc-compat", "canonical", "chexlocalize"):
        raise ValueError(f"--protocol: ground truth is defined for afloc-compat, canonical and chexlocalize, "
                         f"not {protocol_name!r}")
    if protocol_frame(protocol_name, sample) == "letterbox:224":
        return np.asarray(afloc_sample_mask(sample, 224, image_size), dtype=np.uint8)
    mode = {"box_mode": "union"} if protocol_name == "canonical" else {}
    return np.asarray(sample_mask(sample, image_size, **mode), dtype=np.uint8)


def export_ground_truth(dataset: str, protocol: str, out: str | Path, *, data_root: str | None = None,
                        split: str | None = None, limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Write the masks of ``dataset``'s localisation samples under ``protocol``; returns a summary."""
    from benchmark.dataset import build_dataset, is_demo
    from benchmark.io.images import image_size
    from benchmark.progress import Progress
    from benchmark.protocols.base import resolve_protocol
    from benchmark.records import atomic_write_bytes, atomic_write_text

    proto = resolve_protocol(protocol)
    if is_demo(dataset):
        from benchmark.demo import ensure_demo_data

        ensure_demo_data([dataset])
    ds = build_dataset(dataset, data_root, split=split)
    samples = [s for s in ds.samples() if s.has_localization]
    if limit is not None:
        samples = samples[:limit]
    masks, kept, skipped = [], [], []
    with Progress(len(samples), f"ground truth of {dataset}", unit="mask", enabled=progress) as bar:
        for s in samples:
            try:
                size = tuple(int(v) for v in (s.image_size or image_size(s.image_path)))
                masks.append(protocol_mask(proto.name, s, size))
                kept.append(s)
            except (DataError, OSError) as exc:
                skipped.append({"sample_id": s.sample_id, "path": s.image_path, "reason": str(exc)})
            bar.update(1)
    if not kept:
        raise DataError(ds.root, f"no localisation sample of {dataset} could be exported ({len(skipped)} unreadable)")
    out = Path(out)
    frames = [protocol_frame(proto.name, s) for s in kept]
    meta = {"sample_id": np.array([s.sample_id for s in kept]),
            "categories": np.array([s.category for s in kept]),
            "image_ids": np.array([str((s.meta or {}).get("image_id") or s.image_path) for s in kept]),
            "patient_ids": np.array([str(s.patient_id or s.image_path) for s in kept])}
    summary = {"dataset": dataset, "protocol": proto.id, "split": ds.split, "n": len(kept),
               "n_skipped": len(skipped), "skipped": skipped[:100], "output": str(out)}
    if out.suffix == ".npz":
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            raise DataError(out, f"masks of one shape for an .npz; {dataset} under {proto.id} has {len(shapes)} "
                                 "(native image sizes): give a folder instead")
        buf = io.BytesIO()
        np.savez_compressed(buf, masks=np.stack(masks), frame=np.array(frames[0]), **meta)
        atomic_write_bytes(out, buf.getvalue())
        return summary
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["position", "file", "sample_id", "category", "image_id", "patient_id", "frame", "height", "width"])
    for i, (s, m, f) in enumerate(zip(kept, masks, frames)):
        name = f"{i:06d}.png"
        ok, png = cv2.imencode(".png", m)
        if not ok:
            raise DataError(out / name, "a PNG encoding of the mask")
        atomic_write_bytes(out / name, png.tobytes())
        w.writerow([i, name, s.sample_id, s.category, meta["image_ids"][i], meta["patient_ids"][i], f, *m.shape])
    atomic_write_text(out / "index.csv", rows.getvalue())
    return summary
