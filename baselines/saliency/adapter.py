"""Saliency baselines of CheXlocalize (Grad-CAM, Grad-CAM++, Eigen-CAM) on DenseNet121 classifiers.

The paper compares AFLoc with these methods on CheXlocalize (Extended Data Table 5). A saliency
"model" is a multi-label classifier plus a CAM method: the query's finding names the class, the CAM
of that class's logit is the map, and the class probability (sigmoid of the logit) is the score that
CheXlocalize's per-task probability cut-offs use.

Choices, each for a reason:
- Finding → class: the output whose label is the query's finding (canonical names, so "Effusion"
  answers "Pleural Effusion"; CheXpert's "Lung Opacity" answers "Airspace Opacity"; "Mass" and
  "Nodule" fall back to "Lung Lesion" where the classifier has no output of their own). A finding
  without an output is skipped and counted by the runner (``unsupported``).
- Target layer: the output of a non-inplace ReLU placed after ``features`` (torchvision's
  DenseNet applies ``F.relu(features, inplace=True)``, which on CPU rewrites the activation the
  library stored from ``features[-1]`` but not on GPU). Maps are therefore the same on both.
- Geometry: ``resize:320x320`` (CheXpert/CheXlocalize classifiers take 320×320 resized images;
  CheXlocalize's released maps are 320×320) for torchvision-layout checkpoints;
  ``resize_crop:224:224`` (centre square, then 224) for torchxrayvision DenseNets.
- Output: the raw CAM (``ReLU`` of the weighted activation sum) on the 10×10 grid of a 320 input;
  the library's min–max scaling and bilinear resize are left to the protocol. Option
  ``cam_output=library`` returns the library's [0, 1] map at 320×320 instead.
- Eigen-CAM is class-agnostic and its sign is the SVD's (not corrected), exactly as the library
  computes it; an inverted component gives an empty map after the ReLU.

Options: ``labels`` (comma-separated output names), ``xrv_weights`` (a torchxrayvision weights
name, to take its output names), ``random_init`` (seeded random weights when no checkpoint is
given, for tests only; otherwise no checkpoint means the demo classifier, trained on first use
and cached, ``afloc-bench train classifier``), ``cam_output`` (``raw`` | ``library``), ``cam_relu`` (default
true; false keeps the signed CAM, useful when a class's CAM is negative everywhere and the ReLU
would leave an all-zero map — ``describe()["maps"]`` counts those), ``seed`` (of the random weights).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.saliency import cam
from baselines.saliency import classifiers as C
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, Query, as_queries, flag_option
from benchmark.geometry.frames import parse_geometry

log = logging.getLogger(__name__)


def frame(image: np.ndarray, geometry: str) -> np.ndarray:
    """The image in the classifier's input frame, by the benchmark's geometry module."""
    return parse_geometry(geometry).image_to_frame(np.ascontiguousarray(image))


class _SaliencyAdapter(Adapter):
    """DenseNet121 classifier + one CAM method (set by the subclass)."""

    # the three CAMs of one classifier share its probabilities (the CAM options change maps only)
    score_family = "densenet-classifier"
    grounding_only_options = ("cam_relu", "cam_output")
    run_counters = ("maps",)

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_geometry = "resize:320x320"
    preprocessing_id = "densenet-chexpert-resize320-imagenet-v1"
    method = "gradcam"
    # ``score(image, positive, positive)`` is the classifier's probability for the map's class, which
    # CheXlocalize's per-task probability cut-offs need next to each grounding record (``prob``).
    grounding_probability = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.model = None
        self.load_report = None
        self.n_maps = 0
        self.n_empty_maps = 0

    # -- lifecycle ----------------------------------------------------------
    def load(self, checkpoint: str | None, device: str) -> None:


        if not checkpoint and not flag_option(self.options, "random_init"):
            checkpoint = str(Path(self.demo_checkpoint()) / "classifier.safetensors")
            log.info("%s: no checkpoint given, using the demo classifier %s", self.name or self.method, checkpoint)
        super().load(checkpoint, device)
        labels = self.options.get("labels")
        if isinstance(labels, str):
            labels = [s.strip() for s in labels.split(",") if s.strip()]
        if checkpoint:
            model, report = C.load_classifier(checkpoint, labels=labels, xrv_weights=self.options.get("xrv_weights"))
            self.load_report = report
            log.info("loaded %s", report.summary())
        else:
            log.warning("%s: random_init, using seeded random weights (tests only)", self.name or self.method)
            spec = C.ClassifierSpec(labels=list(labels) if labels else list(C.CHEXPERT_TASKS))
            model = C.build_classifier(spec, seed=int(self.options.get("seed", 0)))
        self.model = model.to(torch.device(device)).eval()
        self.spec = model.spec
        self.input_geometry = model.spec.input_geometry
        self.preprocessing_id = (f"densenet-{model.spec.normalization}-{model.spec.input_geometry}"
                                 f"-c{model.spec.in_channels}-v1")

    def _require(self) -> None:
        if self.model is None:
            raise RuntimeError(f"{self.name or type(self).__name__}: call load() first")

    # -- the contract -------------------------------------------------------
    def preprocess(self, image: np.ndarray):

        self._require()
        return C.to_input_tensor(frame(image, self.input_geometry), self.spec)

    def encode_images(self, batch) -> dict[str, Any]:
        """The feature map before the CAM layer, once per image (each map then runs the head alone,
        forward and backward: the CAM layer's activations and gradients are the whole model's),
        plus the class probabilities. ``cam_output=library`` keeps the input batch instead, as the
        library's resize to the input size needs it."""

        self._require()
        x = batch.to(next(self.model.parameters()).device)
        with torch.no_grad():
            features = self.model.features(x)
            prob = torch.sigmoid(self.model.head(features))
        if self._output() == "library":
            return {"x": x, "prob": prob}
        return {"features": features, "prob": prob}

    def _output(self) -> str:
        return str(self.options.get("cam_output", "raw"))

    def encode_texts(self, queries: Sequence[Query]):
        """Query → index of the classifier output that answers its finding."""

        self._require()
        return torch.tensor([C.label_index(self._finding(q), self.spec.labels) for q in as_queries(queries)],
                            dtype=torch.long)

    @staticmethod
    def _finding(query: Query) -> str:
        if not query.finding:
            raise ValueError(f"a classifier answers findings, not free text: {query.text!r} names none")
        return query.finding

    def unsupported(self, query: Query) -> str | None:
        """Why this classifier cannot answer ``query`` (no output for its finding), else None."""

        self._require()
        try:
            C.label_index(self._finding(query), self.spec.labels)
        except (KeyError, ValueError) as exc:
            return str(exc.args[0])
        return None

    def encode_prompt_ensemble(self, queries: Sequence[Query]):
        idx = self.encode_texts(list(queries))
        if len(set(idx.tolist())) != 1:
            names = sorted({self.spec.labels[i] for i in idx.tolist()})
            raise ValueError(f"queries of several findings in one ensemble answer several outputs: {names}")
        return idx[:1]

    def similarity_map(self, image_emb: dict[str, Any], text_emb) -> np.ndarray:

        self._require()
        output = self._output()
        cls = [int(k) for k in text_emb.tolist()]
        relu = flag_option(self.options, "cam_relu", True)
        if "features" in image_emb:
            head = self.model.head_module()
            maps = cam.compute_cams(self.method, head, head.final_relu, image_emb["features"], cls, output=output,
                                     relu=relu, input_requires_grad=True)
        else:
            maps = cam.compute_cams(self.method, self.model, self.model.cam_layer, image_emb["x"], cls,
                                     output=output, relu=relu)
        self.n_maps += len(maps)
        empty = cam.count_empty(maps)
        if empty:
            self.n_empty_maps += empty
            log.debug("%s: %d of %d CAMs are all zero (negative everywhere before the ReLU)",
                      self.name or self.method, empty, len(maps))
        return maps

    def score(self, image_emb: dict[str, Any], positive, negative) -> np.ndarray:
        """Sigmoid probability of the named output; the negative prompt is not used."""
        prob = image_emb["prob"].detach().cpu().numpy()
        idx = np.asarray(positive.tolist(), dtype=np.int64).reshape(-1)
        return prob[np.arange(len(idx)), idx].astype(np.float64)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["cam_method"] = self.method
        d["cam_layer"] = "final_relu (non-inplace ReLU after features)"
        d["cam_relu"] = flag_option(self.options, "cam_relu", True)
        d["maps"] = {"total": self.n_maps, "all_zero": self.n_empty_maps}
        if self.load_report is not None:
            d["load_report"] = self.load_report.summary()
        return d


class GradCAMDenseNet(_SaliencyAdapter):
    """Grad-CAM of the named class logit on DenseNet121's last feature map."""

    method = "gradcam"


class GradCAMPlusPlusDenseNet(_SaliencyAdapter):
    """Grad-CAM++ of the named class logit on DenseNet121's last feature map."""

    method = "gradcam++"


class EigenCAMDenseNet(_SaliencyAdapter):
    """Eigen-CAM of DenseNet121's last feature map; the probability still comes from the named class."""

    method = "eigencam"
