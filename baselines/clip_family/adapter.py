"""CLIP-family baselines of the histopathology comparison: CLIP, BiomedCLIP, PLIP, QuiltNet, CONCH.

The journal version of the paper compares AFLoc with these models on SICAPv2 localization and
zero-shot classification, localising with Grad-CAM "since it has been shown to improve their
localization". Here each model is built by ``open_clip`` from local files (``_clip`` documents
the accepted folder layouts; nothing is downloaded, the hub is switched offline while loading),
and:

- ``similarity_map``: Grad-CAM (``grad-cam`` library) of the cosine similarity between the image
  embedding and the paired prompt's embedding, on the last transformer block's input LayerNorm
  (patch tokens on the ViT grid: 7×7 for ViT-B/32 at 224, 14×14 for ViT-B/16); returned raw
  (``ReLU`` of the weighted sum, no min–max, no resize). Option ``cam_method``: ``gradcam``
  (default), ``gradcam++``, ``eigencam``; ``cam_output=library`` gives the library's [0, 1] map.
- ``score``: softmax of ``logit_scale · [cos(img, positive), cos(img, negative)]``, the first
  entry. Single-label multi-class protocols (SICAPv2 balanced accuracy) should use
  ``class_probabilities`` (softmax over all classes), as AFLoc's pathology evaluation does.
- Input geometry follows the checkpoint's own preprocessing (open_clip's ``preprocess_cfg``):
  ``shortest`` resize + centre crop → ``resize_crop:S:S``; ``squash`` → ``resize:SxS``;
  ``longest`` → ``letterbox:S``.

Options: ``arch`` (with a single weights file), ``cam_method``, ``cam_output``, ``cam_relu``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from baselines.clip_family import loader as clip_loader
from baselines.saliency import cam
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, Query, flag_option, query_texts
from benchmark.prompts import classification_prompts

log = logging.getLogger(__name__)


def geometry_of(preprocess_cfg: dict[str, Any]) -> str:
    """Benchmark geometry spec of an open_clip inference transform."""
    size = preprocess_cfg.get("size", 224)
    if isinstance(size, (list, tuple)):
        h, w = int(size[0]), int(size[1])
    else:
        h = w = int(size)
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode == "squash":
        return f"resize:{h}x{w}"
    if h != w:
        raise ValueError(f"non-square open_clip input {h}x{w} with resize mode {mode!r} is not supported")
    if mode == "longest":
        return f"letterbox:{w}"
    return f"resize_crop:{w}:{w}"


class _ClipAdapter(Adapter):
    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_geometry = "resize_crop:224:224"
    preprocessing_id = "open_clip-shortest-224-v1"
    decode = "pil"  # open_clip: preprocess(Image.open(path)), converted to RGB after the resize
    needs_checkpoint = True
    family = "clip"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.loaded = None

    def load(self, checkpoint: str | None, device: str) -> None:


        super().load(checkpoint, device)
        random_init = self.options.get("random_init")
        if not checkpoint and not self.runs_without_checkpoint(self.options):
            raise ValueError(f"{self.name or self.family}: needs a local checkpoint folder or file "
                             "(--ckpt MODEL=PATH; nothing is downloaded), or the option random_init=true for the "
                             "architecture at random weights")
        if checkpoint:
            loaded = clip_loader.load_clip(checkpoint, arch=self.options.get("arch"), family=self.family)
        else:
            loaded = clip_loader.random_clip(self.family, random_init, seed=int(self.options.get("seed", 0)))
        log.info("loaded %s", loaded.report.summary())
        loaded.model.to(torch.device(device)).eval()
        self.loaded = loaded
        self.input_geometry = geometry_of(loaded.preprocess_cfg)
        p = loaded.preprocess_cfg
        self.preprocessing_id = (f"open_clip-{self.input_geometry}-{p.get('interpolation', 'bicubic')}-"
                                 f"mean{','.join(f'{v:.4f}' for v in p.get('mean', ()))}-"
                                 f"std{','.join(f'{v:.4f}' for v in p.get('std', ()))}-v1")
        self._layer, self._reshape, self._layer_name = clip_loader.cam_target(self._visual())
        self._sim = clip_loader.PairedSimilarity(loaded.encode_image, loaded.model)

    @classmethod
    def runs_without_checkpoint(cls, options: dict[str, Any]) -> bool:
        """With ``random_init`` the architecture runs at random weights."""
        value = options.get("random_init")
        return value is not None and str(value).lower() not in ("0", "false", "no", "off")

    def _visual(self):
        return self.loaded.model.visual

    def vision_tower(self) -> dict[str, Any]:
        """The image tower for fine-tuning (``afloc-bench finetune cls``): the module, its input side
        and the normalisation its pretraining used (``preprocess_cfg``)."""
        self._require()
        p = self.loaded.preprocess_cfg
        size = p.get("size", 224)
        return {"module": self._visual(), "size": int(size[0] if isinstance(size, (list, tuple)) else size),
                "mean": [float(v) for v in p.get("mean", (0.48145466, 0.4578275, 0.40821073))],
                "std": [float(v) for v in p.get("std", (0.26862954, 0.26130258, 0.27577711))],
                "source": self.loaded.report.summary()}

    def _require(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"{self.name or self.family}: call load() first")

    def _device(self):
        return next(self.loaded.model.parameters()).device

    # -- the contract -------------------------------------------------------
    def preprocess(self, image: np.ndarray):

        self._require()
        return self.loaded.preprocess(Image.fromarray(np.ascontiguousarray(image)))

    def encode_images(self, batch) -> dict[str, Any]:

        self._require()
        x = batch.to(self._device())
        with torch.no_grad():
            emb = torch.nn.functional.normalize(self.loaded.encode_image(x), dim=-1)
        return {"x": x, "emb": emb}

    def encode_texts(self, queries: Sequence[Query]):

        self._require()
        tokens = self.loaded.tokenizer(query_texts(queries)).to(self._device())
        with torch.no_grad():
            return torch.nn.functional.normalize(self.loaded.encode_text(tokens), dim=-1)

    def encode_prompt_ensemble(self, queries: Sequence[Query]):
        """Mean of the normalised prompt embeddings, renormalised (the CLIP ensembling convention)."""

        emb = self.encode_texts(list(queries)).mean(0, keepdim=True)
        return torch.nn.functional.normalize(emb, dim=-1)

    def similarity_map(self, image_emb: dict[str, Any], text_emb) -> np.ndarray:

        self._require()
        method = str(self.options.get("cam_method", "gradcam"))
        output = str(self.options.get("cam_output", "raw"))
        x = image_emb["x"]
        self._sim.text = text_emb.detach().to(x.device)
        try:
            return cam.compute_cams(method, self._sim, self._layer, x, list(range(len(x))), output=output,
                                     relu=flag_option(self.options, "cam_relu", True),
                                     reshape_transform=self._reshape)
        finally:
            self._sim.text = None

    def score(self, image_emb: dict[str, Any], positive, negative) -> np.ndarray:

        img = image_emb["emb"]
        logits = self.loaded.logit_scale * torch.stack([(img * positive).sum(-1), (img * negative).sum(-1)], dim=1)
        return torch.softmax(logits, dim=1)[:, 0].detach().cpu().numpy().astype(np.float64)

    def class_logit(self, image_emb: dict[str, Any], positive) -> np.ndarray:
        """``logit_scale · cos(img, class)``: the logits ``class_probabilities`` softmaxes."""
        img = image_emb["emb"]
        return (self.loaded.logit_scale * (img * positive).sum(-1)).detach().double().cpu().numpy()

    def class_probabilities(self, image_emb: dict[str, Any], class_emb) -> np.ndarray:
        """Softmax over classes of ``logit_scale · cos(img, class)`` → ``[B, K]`` (single-label tasks)."""

        logits = self.loaded.logit_scale * image_emb["emb"] @ class_emb.t()
        return torch.softmax(logits, dim=1).detach().cpu().numpy().astype(np.float64)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["family"] = self.family
        d["cam_method"] = str(self.options.get("cam_method", "gradcam"))
        if self.loaded is not None:
            d["cam_layer"] = self._layer_name
            d["load_report"] = self.loaded.report.summary()
        return d


class CLIPAdapter(_ClipAdapter):
    """OpenAI CLIP (e.g. a local copy of ``timm/vit_base_patch32_clip_224.openai``)."""

    family = "clip"


class BiomedCLIPAdapter(_ClipAdapter):
    """BiomedCLIP: open_clip folder plus the PubMedBERT config/tokenizer in ``text/``."""

    family = "biomedclip"


class PLIPAdapter(_ClipAdapter):
    """PLIP: a transformers ``CLIPModel`` folder (``vinid/plip``) converted to open_clip."""

    family = "plip"


class QuiltNetAdapter(_ClipAdapter):
    """QuiltNet: open_clip folder (``wisdomik/QuiltNet-B-32``)."""

    family = "quiltnet"


class CONCHAdapter(_ClipAdapter):
    """CONCH: local ``MahmoodLab/CONCH`` folder (``pytorch_model.bin``), see ``baselines.clip_family.conch``."""

    family = "conch"


def zero_shot_probabilities(adapter: _ClipAdapter, image_emb: dict[str, Any], card: Any,
                            categories: Sequence[str]) -> np.ndarray:
    """Single-label zero-shot classification: softmax over ``categories`` → ``[B, K]``.

    ``card`` is the dataset's card (its prompt family and spelling). Each class is the
    (renormalised) mean embedding of its positive prompts from
    ``benchmark.prompts.classification_prompts`` (SICAPv2: "presence of CLASSNAME." with AFLoc's
    class names), as AFLoc's pathology evaluation scores classes: argmax over a softmax.
    """

    rows = [adapter.encode_prompt_ensemble([Query(t, c) for t in classification_prompts(card, c)[0]])
            for c in categories]
    return adapter.class_probabilities(image_emb, adapter.concat(rows))


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (the paper's pathology metric)."""

    return float(balanced_accuracy_score(np.asarray(y_true), np.asarray(y_pred)))
