"""ReContrast (Guo, Lu, Jia, Sun, Wang. *ReContrast: Domain-Specific Anomaly Detection via Contrastive
Reconstruction.* NeurIPS 2023; ``guojiajeremy/ReContrast``) as a benchmark model.

An unsupervised anomaly detector (trained on normal images only): the prompts are ignored, each image
has one anomaly map and one score. Map: the sum over six encoder/decoder pairs (three scales × the
two crossed branches, ``baselines/recontrast/model.py``) of ``1 - cos``, each bilinearly upsampled
(``align_corners=True``) to the 256×256 input, then ``scipy.ndimage.gaussian_filter(σ=4)``: the
official ``evaluation_noseg`` map, on the native 256×256 grid (``input_geometry`` ``resize:256x256``).
Score: the maximum of that map (``reduction='max'``, the APTOS and OCT scripts; ``mean`` is the ISIC
script's).

Preprocessing (the medical scripts' ``get_data_transforms(256, 256)`` on ``Image.open(p).convert('RGB')``):
decode ``pil-rgb``, ``Resize((256, 256))`` (PIL bilinear), ``ToTensor``, ``CenterCrop(256)`` (a no-op),
ImageNet mean/std.

Checkpoint: the official scripts save no weights; a file of the official module is
``torch.save(model.state_dict(), path)`` of ``ReContrast`` (keys ``encoder.*``, ``encoder_freeze.*``,
``bottleneck.*``, ``decoder.*``), read with ``weights_only=True`` (or ``.safetensors``), ``module.``
prefixes removed. A file without the frozen encoder (``encoder_freeze`` is the unchanged ImageNet
network) takes it from ``imagenet``. A dict of parts (``{'encoder': ..., 'bn': ..., 'decoder': ...}``)
is read too. A checkpoint folder of ``afloc-bench train recontrast`` (``config.json`` of format
``afloc-bench/recontrast`` with the network's size, ``model.safetensors`` with all four parts) is loaded
whole (strict key report; its ``image_size`` is the default input size).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from baselines.common.reverse_distillation import (
    AnomalyMapAdapter,
    build_network,
    folder_of,
    load_imagenet_trunk,
    pil_resize_normalise,
    read_weights,
)
from baselines.recontrast.model import N_PAIRS, ReContrastNet
from benchmark.io.checkpoints import CheckpointError, load_checked

log = logging.getLogger(__name__)

PUBLISHED = ("no released weights: train with the official scripts (github.com/guojiajeremy/ReContrast, e.g. "
             "recontrast_aptos.py) and save torch.save(model.state_dict(), PATH)")
FOLDER_FORMAT = "afloc-bench/recontrast"  # config.json "format" of a checkpoint folder written by the trainer
PARTS = {"encoder": "encoder", "encoder_freeze": "encoder_freeze", "bottleneck": "bottleneck", "bn": "bottleneck",
         "decoder": "decoder"}
EXPECTED = "a ReContrast state dict (encoder.*, encoder_freeze.*, bottleneck.*, decoder.*)"


class ReContrastAdapter(AnomalyMapAdapter):
    """ReContrast, WideResNet-50-2. Options: ``imagenet`` (path of torchvision's
    ``wide_resnet50_2-95faca4d.pth``: the frozen encoder when the checkpoint lacks it; both encoders with
    ``random_init``), ``sigma``, ``reduction``, ``image_size``, ``random_init``, ``seed``."""

    preprocessing_id = "recontrast-pilrgb-pilbilinear-resize256-imagenet-v1"
    decode = "pil-rgb"  # MedicalDataset: Image.open(path).convert('RGB')
    checkpoint_name = "ReContrast model.state_dict() (.pth or .safetensors)"
    checkpoint_url = PUBLISHED
    n_pairs = N_PAIRS

    def load(self, checkpoint: str | None, device: str) -> None:
        if checkpoint is None and not self.opt_bool("random_init"):
            checkpoint = self.demo_checkpoint()  # the shipped demo model (trained on demo_mimic's normal images)
        self.checkpoint = checkpoint
        folder = None if self.opt_bool("random_init") else folder_of(checkpoint)
        if folder is not None:
            self.seed_init()
            self.model = self.place(self.load_trained_folder(folder, ReContrastNet, FOLDER_FORMAT), device)
            return
        random_init = self.wants_random_init(checkpoint)
        imagenet = self.opt("imagenet")
        self.seed_init()
        model = build_network(ReContrastNet, random_init)
        if random_init:
            if imagenet:  # the start of training: both encoders ImageNet, bottleneck and decoder random
                self.imagenet_key_report = load_imagenet_trunk(model.encoder, imagenet, "imagenet")
                model.encoder_freeze.load_state_dict(model.encoder.state_dict())
        else:
            sd = read_weights(checkpoint, PARTS, EXPECTED)
            ignore: list[str] = []
            if not any(k.startswith("encoder_freeze.") for k in sd):
                if not imagenet:
                    raise CheckpointError(checkpoint, "holds no encoder_freeze.* weights (the frozen ImageNet "
                                                      "encoder); pass them with --model-option "
                                                      f"{self.name or 'recontrast'}.imagenet=PATH")
                self.imagenet_key_report = load_imagenet_trunk(model.encoder_freeze, imagenet, "imagenet")
                ignore = [r"encoder_freeze\..*"]
            elif imagenet:
                log.info("%s: option imagenet not used, the checkpoint carries the frozen encoder", checkpoint)
            self.key_report = load_checked(model, sd, source=checkpoint, expected=EXPECTED, ignore=ignore)
            if ignore:
                self.key_report.notes.append(f"encoder_freeze.* loaded from the ImageNet weights {imagenet} "
                                             "(imagenet_key_report)")
        self.model = self.place(model, device)

    def preprocess(self, image: np.ndarray) -> Any:
        """uint8 gray or RGB → float32 [3, 256, 256] (see the module docstring)."""
        return pil_resize_normalise(image, self.image_size)

    def features(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.model(batch)
