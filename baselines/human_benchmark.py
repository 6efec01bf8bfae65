"""CheXlocalize's human benchmark as a pseudo-model row.

CheXlocalize ships segmentations drawn by a second group of radiologists
(``CheXlocalize/hb_segmentations_test.json``, ``{cxr_id: {task: COCO RLE}}``) so that a
method can be compared with human performance through the same metric pipeline. This adapter
returns, for a sample, the human mask of its CXR and task as the "map": 1 inside, 0 outside,
at the image's native resolution (``input_geometry = "native"``). A mask is binary, so every
threshold in (0, 1) and Otsu give the mask back.

It needs the sample's identity, which the image/prompt contract does not carry; it therefore
implements the optional runner hook ``similarity_map_for_samples(samples, image_sizes)``
(one native-size map per sample) and refuses the plain ``similarity_map``. The CXR id is
``sample.meta["cxr_id"]`` (set by the CheXlocalize loader) or derived from the image path
(``.../patientX/studyY/viewZ.jpg``); the task is ``sample.category`` (aliases such as "Lung
Opacity" are mapped to "Airspace Opacity"). A (CXR, task) absent from the file gives an empty
mask and is counted in ``unmatched`` (reported in ``describe()``), never dropped silently.

Registered with the tag ``hidden``: ``--models all`` skips it; name it to run it, with the
file as its checkpoint: ``--ckpt human_benchmark=/data/CheXlocalize/hb_segmentations_test.json``
(or the option ``hb_path``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmark.adapter import GROUNDING, Adapter, register_model
from benchmark.dataset import DataError

log = logging.getLogger(__name__)


@register_model("human_benchmark", tags=("hidden",),
                description="CheXlocalize human-benchmark segmentations scored as a model (needs the hb json)")
class HumanBenchmark(Adapter):
    """Radiologists' segmentations (CheXlocalize test set) as binary native-resolution maps."""

    capabilities = (GROUNDING,)
    input_geometry = "native"
    preprocessing_id = "chexlocalize-hb-segmentations-v1"
    color = "gray"
    needs_checkpoint = True
    binary_maps = True  # protocols may skip thresholding: the map is already a segmentation

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.masks: dict[tuple[str, str], dict[str, Any]] | None = None
        self.unmatched: list[tuple[str, str]] = []

    def load(self, checkpoint: str | None, device: str) -> None:
        from benchmark.datasets.chexlocalize import read_segmentations

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

    # -- the optional sample-aware hook ---------------------------------------------
    def similarity_map_for_samples(self, samples: Sequence[Any],
                                   image_sizes: Sequence[tuple[int, int] | None] | None = None) -> list[np.ndarray]:
        """One float32 map per sample at the image's native size: the human mask (1 in, 0 out)."""
        from benchmark.datasets.chexlocalize import SCOPE, cxr_id_of
        from benchmark.geometry import decode_rle
        from benchmark.pathologies import canonical_name

        if self.masks is None:
            raise RuntimeError("human_benchmark: call load() first")
        sizes = list(image_sizes) if image_sizes is not None else [None] * len(samples)
        out = []
        for s, size in zip(samples, sizes, strict=True):
            cid = (s.meta or {}).get("cxr_id") or cxr_id_of(s.image_path)
            task = canonical_name(s.category, scope=SCOPE)
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

    # -- the image/prompt contract cannot identify a CXR --------------------------------
    @staticmethod
    def _needs_samples(*_args: Any) -> None:
        raise NotImplementedError("human_benchmark maps need the sample identity: the runner must call "
                                  "similarity_map_for_samples(samples, image_sizes)")

    def preprocess(self, image: np.ndarray):
        self._needs_samples()

    def encode_images(self, batch):
        self._needs_samples()

    def encode_texts(self, prompts):
        self._needs_samples()

    def similarity_map(self, image_emb, text_emb):
        self._needs_samples()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["n_segmentations"] = None if self.masks is None else len(self.masks)
        d["n_unmatched"] = len(self.unmatched)
        d["unmatched"] = [f"{c}/{t}" for c, t in self.unmatched[:50]]
        return d
