"""The ``afloc`` model adapter (plugin module: nothing heavy is imported at module level).

Checkpoints (``--ckpt afloc=PATH``):
  * an official Lightning file (``Pretrained_CXR.ckpt``): needs the Bio_ClinicalBERT tokenizer
    folder, given as ``--model-option afloc.text_encoder=PATH``;
  * a folder written by ``afloc-bench train afloc`` (safetensors + JSON);
  * nothing: the demo weights (``demo_weights`` in ``afloc/manifest.yaml``; built on first use).

Options: ``text_encoder`` (tokenizer folder for official files), ``geometry`` (``official``, the
default: each task as the official code preprocesses it, grounding letterboxed from a
``cv2.imread(p, 0)`` read, zero-shot classification resized and centre-cropped from a PIL RGB read;
``letterbox`` or ``resize_crop``: that one for both tasks), ``text_batch`` (prompts per forward pass),
``image_flag`` and ``channels`` (below).

The pathology model (``Pretrained_Path.ckpt``) carries the official ``data.image.flag`` != 0: its
localization reads images in colour (``cv2.imread(p, flag)``, channels in cv2's B, G, R order, which
``PIL.Image.fromarray(x).convert("RGB")`` keeps) and does not resize them (the official SICAPv2 files
are pre-resized to 224; here the letterbox of a square patch is that resize). The flag is read from
the checkpoint (a folder written by ``afloc-bench train`` stores it as ``image_flag``);
``image_flag=0|1`` overrides it and ``channels=rgb`` feeds R, G, B instead. Zero-shot classification
reads every model's images with PIL in RGB, as the official ``classification.py``.

``similarity_map`` returns the raw 19×19 grid over the letterboxed 224 frame; the protocol
smooths, upsamples, masks and normalises it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afloc.checkpoint import load_model
from afloc.inference import DECODE_OF, GEOMETRIES, OFFICIAL_GEOMETRY, InferenceEngine, preprocess_image
from afloc.tokenizer import Tokenizer
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, Query, query_texts
from benchmark.cache import state_dict_sha256
from benchmark.training.config import load_train_config
from benchmark.training.task import get_task

PREPROCESSING_IDS = {
    "letterbox": "afloc-letterbox224-area-norm0.5-v1",
    "resize_crop": "afloc-resize224-centercrop224-norm0.5-v1",
}


class AFLocAdapter(Adapter):
    """AFLoc (official checkpoint, a trained folder, or the demo model)."""

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_family = "afloc"  # with ``afloc_untrained``: the same reading of each image
    input_geometry = "letterbox:224"
    preprocessing_id = PREPROCESSING_IDS["letterbox"]
    decode = DECODE_OF["letterbox"]
    geometry_choice = "official"
    colour_read: str | None = None  # the pathology model's grounding read (``image_flag`` != 0)

    def load(self, checkpoint: str | None, device: str) -> None:

        choice = str(self.options.get("geometry", "official"))
        if choice != "official" and choice not in GEOMETRIES:
            raise ValueError(f"afloc option geometry must be official or one of {sorted(GEOMETRIES)}, not {choice!r}")
        self.geometry_choice = choice
        self.for_task("grounding")
        if checkpoint is None:
            checkpoint = self.demo_checkpoint()
        model = load_model(checkpoint, text_encoder=self.options.get("text_encoder"), device="cpu")
        self._set_image_read(model)
        self.for_task("grounding")
        self.load_report = getattr(model, "load_report", None)
        if self.load_report is not None and (self.load_report.missing or self.load_report.unexpected):
            import logging

            logging.getLogger("afloc.adapter").warning("%s: %s", checkpoint, self.load_report)
        self.engine = InferenceEngine(model, device, text_batch=int(self.options.get("text_batch", 64)))
        self.checkpoint, self.device = str(checkpoint), device

    def for_task(self, task: str) -> None:
        """Grounding: letterbox from a ``cv2-gray`` read; classification: resize-crop from ``pil-rgb``
        (unless the ``geometry`` option fixes one for both)."""
        geometry = OFFICIAL_GEOMETRY.get(task, "letterbox") if self.geometry_choice == "official" \
            else self.geometry_choice
        self.geometry = geometry
        self.input_geometry = GEOMETRIES[geometry]
        self.preprocessing_id = PREPROCESSING_IDS[geometry]
        self.decode = DECODE_OF[geometry]
        if self.colour_read and geometry == "letterbox":  # the pathology model reads colour, not gray
            self.decode = self.colour_read
            self.preprocessing_id += f"-{self.colour_read}"

    def _set_image_read(self, model: Any) -> None:
        """The grounding read of the checkpoint's ``image_flag`` (official ``cfg.data.image.flag``;
        0: ``cv2.imread(p, 0)``; otherwise colour, as the pathology model), unless the options
        ``image_flag`` / ``channels`` (bgr, the official read as it comes; rgb) say otherwise."""
        flag = int(self.options.get("image_flag", getattr(model, "image_flag", 0) or 0))
        channels = str(self.options.get("channels", "bgr"))
        if channels not in ("bgr", "rgb"):
            raise ValueError(f"afloc option channels must be bgr or rgb, not {channels!r}")
        self.colour_read = f"cv2-{channels}" if flag else None
        self.image_flag = flag

    def preprocess(self, image: np.ndarray) -> Any:

        return preprocess_image(image, self.geometry)

    def encode_images(self, batch: Any) -> Any:
        return self.engine.encode_images(batch)

    def encode_texts(self, queries: Sequence[Query]) -> Any:
        return self.engine.encode_texts(query_texts(queries))

    def similarity_map(self, image_emb: Any, text_emb: Any) -> np.ndarray:
        return self.engine.similarity_map(image_emb, text_emb)

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        return self.engine.score(image_emb, positive, negative)

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        return self.engine.class_logit(image_emb, positive)


class UntrainedAFLocAdapter(AFLocAdapter):
    """The demo recipe's model at its seed weights (same preset, vocabulary and seed), before any
    training step, masked-LM or contrastive, so the demo checkpoint's gain over random features is
    measured, not assumed."""

    def load(self, checkpoint: str | None, device: str) -> None:

        if checkpoint is not None:
            raise ValueError("afloc_untrained takes no checkpoint (it is the demo model before training); "
                             "use --ckpt afloc=PATH for trained weights")
        self.geometry_choice = str(self.options.get("geometry", "official"))
        self.for_task("grounding")
        cfg = load_train_config("demo")
        task = get_task(cfg.task)
        if not self.demo_weights:  # made without the registry: its manifest entry names the recipe's weights
            from benchmark.registry import models

            entry = models.entry("afloc_untrained")
            self.demo_weights, self.train_target = entry.get("demo_weights"), entry.get("train")
        # the shipped demo model's vocabulary is the recipe's: nothing is built on first use
        tok = Tokenizer.from_path(Path(self.demo_checkpoint()) / "tokenizer")
        model, _ = task.build(cfg, tokenizer=tok)
        self.load_report = None
        self.engine = InferenceEngine(model.eval(), device, text_batch=int(self.options.get("text_batch", 64)))
        self.checkpoint, self.device = None, device
        arch = json.dumps(task.model_config(model), sort_keys=True, default=str)
        self._fingerprint = hashlib.sha256(f"{arch}|{state_dict_sha256(model.state_dict())}".encode()).hexdigest()

    def weights_fingerprint(self) -> str:
        """Hash of the model configuration and the seed weights: the demo recipe's model
        (``configs/demo.yaml``: input size, layers) may change while no checkpoint path does."""
        return self._fingerprint
