"""The canonical sample every loader yields.

Ground truth stays in **original pixel coordinates**; loaders never resize. Geometry
(``benchmark.geometry``) turns it into whatever frame a protocol scores in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One (image, finding) pair to score.

    Attributes
    ----------
    sample_id: namespaced and stable across runs, e.g. ``rsna_pneumonia/<patientId>/Pneumonia``.
    image_path: absolute path of the image file as distributed (DICOM, PNG, JPG).
    patient_id: resampling unit for patient-level bootstrap; ``None`` if the dataset has none.
    image_id: the image the sample belongs to (several samples may share one image).
    view: view position (``PA``, ``AP``, ``LATERAL``...) or ``None`` when unknown.
    split: ``train``, ``val``, ``test`` ...
    category: canonical pathology name (``benchmark.pathologies``).
    prompts: prompt texts by prompt-set name; at least ``simple``.
    label: 1 if the finding is present, 0 if absent (classification and negatives), None if unlabeled.
    image_size: ``(height, width)`` of the original image, or None when the loader did not read it.
    boxes: ``[x, y, w, h]`` boxes in original pixels (top-left corner, width, height).
    polygons: polygons as lists of ``[x, y]`` points in original pixels.
    rles: COCO RLE dicts ``{"size": [h, w], "counts": ...}`` (compressed or not).
    mask_paths: mask image files (nonzero = lesion) at the original image size.
    meta: anything else worth carrying (source row numbers, phrase ids ...).
    """

    sample_id: str
    image_path: str
    split: str
    category: str | None
    prompts: dict[str, str] = field(default_factory=dict)
    label: int | None = None
    patient_id: str | None = None
    image_id: str | None = None
    view: str | None = None
    image_size: tuple[int, int] | None = None
    boxes: list[list[float]] = field(default_factory=list)
    polygons: list[list[list[float]]] = field(default_factory=list)
    rles: list[dict[str, Any]] = field(default_factory=list)
    mask_paths: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_id is None:
            self.image_id = self.image_path
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @property
    def has_localization(self) -> bool:
        return bool(self.boxes or self.polygons or self.rles or self.mask_paths)

    def prompt(self, prompt_set: str = "simple") -> str:
        """The prompt of ``prompt_set``, falling back to ``simple`` when the set is absent."""
        if prompt_set in self.prompts:
            return self.prompts[prompt_set]
        if "simple" in self.prompts:
            return self.prompts["simple"]
        raise KeyError(f"sample {self.sample_id} has no prompt {prompt_set!r} and no 'simple' prompt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        return cls(**d)
