"""Bring-your-own heatmaps as a model: maps computed elsewhere, keyed by sample id, scored by a run.

``afloc-bench run --models byo --ckpt byo=maps.npz --datasets ms_cxr`` (or ``afloc-bench score
--dataset ms_cxr --maps maps.npz``) loads the dataset with its own loader, takes each sample's map
from the file and scores it like any model's: the run folder it writes is an ordinary one, so
``compare``, ``build``, ``report`` and ``regress`` accept it.

The file is the format a run keeps its heatmaps in (``heatmaps/<dataset>__<model>.npz``), so a
run's saved maps can be scored again:

  sample_id       str   [N]        the dataset's sample ids (``afloc-bench validate`` lists them)
  grid            float [N, h, w]  one map per sample, any range (NaN: not evaluated)
  input_geometry  str   []         the frame the maps cover: ``native`` (the original image),
                                   ``letterbox:224``, ``resize:HxW``, ``resize_crop:R:C`` ...

Samples of the dataset without a map are skipped and counted (never scored as empty maps); ids
in the file that the dataset does not have are counted in ``describe()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.adapter import GROUNDING, Adapter
from benchmark.dataset import DataError

FORMAT = ("an .npz (numpy.savez, no pickled objects) with sample_id str [N], grid float [N, h, w] and "
          "input_geometry str (e.g. native, letterbox:224)")


class HeatmapFile(Adapter):
    """Maps read from a file, one per sample id."""

    capabilities = (GROUNDING,)
    preprocessing_id = "byo-heatmaps-v1"
    needs_checkpoint = True
    per_sample_maps = True  # the map belongs to the sample id, not to an image/text product
    run_counters = ("n_missing", "n_unused")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.maps: dict[str, np.ndarray] = {}
        self.input_geometry = "native"
        self.missing: list[str] = []
        self.used: set[str] = set()

    def load(self, checkpoint: str | None, device: str) -> None:
        from benchmark.geometry.frames import parse_geometry

        path = checkpoint or self.options.get("maps")
        if not path:
            raise DataError(None, f"byo needs its maps: --ckpt byo=maps.npz ({FORMAT})")
        super().load(str(path), device)
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(path, f"heatmap file not found; expected {FORMAT}")
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                missing = sorted({"sample_id", "grid", "input_geometry"} - names)
                if missing:
                    raise DataError(path, f"{FORMAT}; missing {missing}")
                ids, grid, geom = z["sample_id"], z["grid"], str(z["input_geometry"])
        except (OSError, ValueError) as exc:
            raise DataError(path, f"{FORMAT} ({' '.join(str(exc).split())})") from None
        if ids.ndim != 1 or ids.dtype.kind not in "US":
            raise DataError(path, f"'sample_id' as a string array [N], got {ids.dtype} {ids.shape}")
        if grid.ndim != 3 or len(grid) != len(ids) or grid.dtype.kind not in "fiu":
            raise DataError(path, f"'grid' as numbers [N={len(ids)}, h, w], got {grid.dtype} {grid.shape}")
        if np.isinf(grid.astype(np.float64)).any():
            raise DataError(path, "'grid' without infinite values (NaN marks a pixel that is not evaluated)")
        try:
            parse_geometry(geom)
        except ValueError as exc:
            raise DataError(path, f"'input_geometry': {exc}") from None
        uniq, counts = np.unique(ids, return_counts=True)
        dup = [str(i) for i in uniq[counts > 1][:5]]
        if dup:
            raise DataError(path, f"one map per sample id; repeated: {dup}")
        self.input_geometry = geom
        self.maps = {str(i): np.asarray(g, dtype=np.float32) for i, g in zip(ids, grid)}

    def similarity_map_for_samples(self, samples: Sequence[Any], image_sizes: Sequence[Any] | None = None
                                   ) -> list[np.ndarray | None]:
        """The sample's map, or None (the runner skips and counts it) when the file has none."""
        out: list[np.ndarray | None] = []
        for s in samples:
            grid = self.maps.get(s.sample_id)
            if grid is None:
                self.missing.append(s.sample_id)
            else:
                self.used.add(s.sample_id)
            out.append(grid)
        return out

    def missing_map_reason(self) -> str:
        return f"no map for this sample id in {self.checkpoint}"

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(maps=len(self.maps), input_geometry=self.input_geometry, n_missing=len(self.missing),
                 n_unused=len(set(self.maps) - self.used),
                 prompts="ignored: the maps were computed elsewhere, for the samples' own queries")
        return d
