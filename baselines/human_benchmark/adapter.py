"""CheXlocalize's human benchmark as a pseudo-model row.

CheXlocalize ships segmentations drawn by a second group of radiologists
(``CheXlocalize/hb_segmentations_test.json``, ``{cxr_id: {task: COCO RLE}}``) so that a
method can be compared with human performance through the same metric pipeline. This adapter
returns, for a sample, the human mask of its CXR and task as the "map": 1 inside, 0 outside,
at the image's native resolution (``input_geometry = "native"``). A mask is binary, so every
threshold in (0, 1) and Otsu give the mask back: the mIoU columns are the human mIoU.

The hit rate is not the argmax of that mask: the same readers marked salient points
(``hb_salient_pt_test.json``, ``{cxr_id: {task: [[x, y], ...]}}`` in native pixels), and
CheXlocalize counts a hit when any point falls inside the ground truth. The points are read
from the option ``hb_points`` (a path) or, when that is not given, from
``hb_salient_pt_test.json`` beside the segmentation file; ``salient_points_for_samples``
hands them to the runner, which replaces the map's hit with the protocol's
``points_record``. Without the file the hit stays the mask's argmax (``describe()`` says
which). A (CXR, task) absent from the points file gets no points (a miss when its ground
truth is positive) and is counted in ``points_unmatched``.

It needs the sample's identity, which the image/prompt contract does not carry; it therefore
implements the optional runner hooks ``similarity_map_for_samples(samples, image_sizes)``
(one native-size map per sample) and ``salient_points_for_samples(samples)``, and refuses the
plain ``similarity_map``. The CXR id is ``sample.meta["cxr_id"]`` (set by the CheXlocalize
loader) or derived from the image path (``.../patientX/studyY/viewZ.jpg``); the task is
``sample.category`` (aliases such as "Lung Opacity" are mapped to "Airspace Opacity"). A
(CXR, task) absent from the segmentation file gives an empty mask and is counted in
``unmatched`` (reported in ``describe()``), never dropped silently.

Registered with the tag ``hidden``: ``--models all`` skips it; name it to run it, with the
file as its checkpoint: ``--ckpt human_benchmark=/data/CheXlocalize/hb_segmentations_test.json``
(or the option ``hb_path``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.adapter import GROUNDING, Adapter
from benchmark.dataset import DataError
from benchmark.datasets.chexlocalize.loader import LOCALIZATION_TASKS, SCOPE, cxr_id_of, read_segmentations
from benchmark.geometry.rasterize import decode_rle
from benchmark.pathologies import canonical_name

log = logging.getLogger(__name__)

POINTS_FILE = "hb_salient_pt_test.json"
POINTS_FORMAT = "{cxr_id: {task: [[x, y], ...]}} with x, y finite numbers in native pixels"


def read_salient_points(path: str | Path) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """``hb_salient_pt_test.json`` → ``{(cxr_id, canonical task): [(x, y), ...]}``, every entry checked."""

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"expected a JSON file {POINTS_FORMAT} ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(path, f"expected {POINTS_FORMAT}; the top level is a {type(data).__name__}")
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for cid, tasks in data.items():
        if not isinstance(tasks, dict):
            raise DataError(path, f"cxr_id {cid}: expected a mapping task -> [[x, y], ...], "
                                  f"not a {type(tasks).__name__}")
        for task, pts in tasks.items():
            name = canonical_name(task, scope=SCOPE, source=path, row=f"cxr_id {cid}")
            if name not in LOCALIZATION_TASKS:
                raise DataError(path, f"cxr_id {cid}: {task!r} is not one of the 10 CheXlocalize tasks")
            if (cid, name) in out:
                raise DataError(path, f"cxr_id {cid}: task {name!r} is listed twice (as {task!r} and an alias)")
            if not isinstance(pts, list):
                raise DataError(path, f"cxr_id {cid}, task {task}: expected a list of [x, y] points, "
                                      f"not a {type(pts).__name__}")
            points = []
            for k, pt in enumerate(pts):
                ok = (isinstance(pt, (list, tuple)) and len(pt) == 2
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                              for v in pt))
                if not ok:
                    raise DataError(path, f"cxr_id {cid}, task {task}, point {k}: expected [x, y] with two finite "
                                          f"numbers, got {pt!r}")
                points.append((float(pt[0]), float(pt[1])))
            out[(cid, name)] = points
    return out


def _cxr_task(sample: Any) -> tuple[str, str]:
    """(CXR id, CheXlocalize task) of a sample: the keys of the human-benchmark files."""

    cid = (sample.meta or {}).get("cxr_id") or cxr_id_of(sample.image_path)
    return cid, canonical_name(sample.category, scope=SCOPE)


class HumanBenchmark(Adapter):
    """Radiologists' segmentations (CheXlocalize test set) as binary native-resolution maps."""

    capabilities = (GROUNDING,)
    input_geometry = "native"
    preprocessing_id = "chexlocalize-hb-segmentations-v1"
    needs_checkpoint = True
    per_sample_maps = True  # the map is the reader's segmentation of this sample, not an image/text product
    run_counters = ("n_unmatched", "unmatched", "n_points_unmatched", "points_unmatched", "n_points_outside_image")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.masks: dict[tuple[str, str], dict[str, Any]] | None = None
        self.unmatched: list[tuple[str, str]] = []
        self.points: dict[tuple[str, str], list[tuple[float, float]]] | None = None
        self.points_path: Path | None = None
        self.points_unmatched: list[tuple[str, str]] = []
        self.points_outside = 0

    def load(self, checkpoint: str | None, device: str) -> None:

        path = checkpoint or self.options.get("hb_path")
        if not path:
            raise DataError(None, "human_benchmark needs CheXlocalize's hb_segmentations_test.json: "
                                  "--ckpt human_benchmark=PATH (or the option hb_path)")
        super().load(str(path), device)
        path = Path(path).expanduser()
        if path.is_dir():  # a CheXlocalize root or its CheXlocalize/ folder
            cands = [path / "CheXlocalize" / "hb_segmentations_test.json", path / "hb_segmentations_test.json"]
            path = next((c for c in cands if c.is_file()), cands[0])
        if not path.is_file():
            raise DataError(path, "human-benchmark segmentations not found (hb_segmentations_test.json)")
        self.masks = {(cid, task): e["rle"] for cid, tasks in read_segmentations(path).items()
                      for task, e in tasks.items()}
        self.checkpoint = str(path)
        log.info("human benchmark: %d (cxr, task) segmentations from %s", len(self.masks), path)
        self._load_points(path)

    def _load_points(self, seg_path: Path) -> None:
        """Salient points from the option ``hb_points`` (must exist) or beside the segmentations (optional)."""
        explicit = self.options.get("hb_points")
        if explicit:
            points_path = Path(explicit).expanduser()
            if points_path.is_dir():
                points_path = points_path / POINTS_FILE
            if not points_path.is_file():
                raise DataError(points_path, f"human-benchmark salient points ({POINTS_FILE}) not found "
                                             "(option hb_points)")
        else:
            points_path = seg_path.parent / POINTS_FILE
            if not points_path.is_file():
                log.warning("human_benchmark: no %s beside %s; the hit rate falls back to the mask's argmax",
                            POINTS_FILE, seg_path)
                return
        self.points = read_salient_points(points_path)
        self.points_path = points_path
        log.info("human benchmark: salient points of %d (cxr, task) pairs from %s", len(self.points), points_path)

    # -- the optional sample-aware hook ---------------------------------------------
    def similarity_map_for_samples(self, samples: Sequence[Any],
                                   image_sizes: Sequence[tuple[int, int] | None] | None = None) -> list[np.ndarray]:
        """One float32 map per sample at the image's native size: the human mask (1 in, 0 out)."""
        if self.masks is None:
            raise RuntimeError("human_benchmark: call load() first")
        sizes = list(image_sizes) if image_sizes is not None else [None] * len(samples)
        out = []
        for s, size in zip(samples, sizes, strict=True):
            cid, task = _cxr_task(s)
            size = size or s.image_size
            rle = self.masks.get((cid, task))
            if rle is None:
                self.unmatched.append((cid, task))
                if size is None:
                    raise DataError(s.image_path, f"no human-benchmark entry for {cid}/{task} and no image size")
                out.append(np.zeros(tuple(int(v) for v in size), dtype=np.float32))
                continue
            mask = decode_rle(rle, size)
            out.append(mask.astype(np.float32))
        if self.unmatched:
            log.warning("human_benchmark: %d (cxr, task) pairs not in the file so far (empty masks)",
                        len(self.unmatched))
        return out

    def salient_points_for_samples(self, samples: Sequence[Any]) -> list[list[tuple[float, float]] | None]:
        """The readers' ``(x, y)`` points per sample; ``None`` each when no points file was found.

        A (CXR, task) absent from the file gives ``[]`` (no point: a miss on a positive
        ground truth) and is counted in ``points_unmatched``; points outside a sample's known
        image size are counted in ``points_outside`` (they cannot hit).
        """
        if self.masks is None:
            raise RuntimeError("human_benchmark: call load() first")
        if self.points is None:
            return [None] * len(samples)
        out: list[list[tuple[float, float]] | None] = []
        for s in samples:
            cid, task = _cxr_task(s)
            pts = self.points.get((cid, task))
            if pts is None:
                self.points_unmatched.append((cid, task))
                pts = []
            if s.image_size is not None:
                h, w = (int(v) for v in s.image_size)
                self.points_outside += sum(1 for x, y in pts if not (0 <= int(x) < w and 0 <= int(y) < h))
            out.append(list(pts))
        return out

    # -- the image/prompt contract cannot identify a CXR --------------------------------
    @staticmethod
    def _needs_samples(*_args: Any) -> None:
        raise NotImplementedError("human_benchmark maps need the sample identity: the runner must call "
                                  "similarity_map_for_samples(samples, image_sizes)")

    def preprocess(self, image: np.ndarray):
        self._needs_samples()

    def encode_images(self, batch):
        self._needs_samples()

    def encode_texts(self, queries):
        self._needs_samples()

    def similarity_map(self, image_emb, text_emb):
        self._needs_samples()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["n_segmentations"] = None if self.masks is None else len(self.masks)
        d["n_unmatched"] = len(self.unmatched)
        d["unmatched"] = [f"{c}/{t}" for c, t in self.unmatched[:50]]
        d["hit_from"] = "salient points" if self.points is not None else "mask argmax"
        d["points_file"] = None if self.points_path is None else str(self.points_path)
        d["n_point_entries"] = None if self.points is None else len(self.points)
        d["n_points_unmatched"] = len(self.points_unmatched)
        d["points_unmatched"] = [f"{c}/{t}" for c, t in self.points_unmatched[:50]]
        d["n_points_outside_image"] = self.points_outside
        return d
