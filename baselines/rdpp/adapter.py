"""RD++ (Tien, Nguyen, Tran, Huynh, Nguyen, Nguyen, Pham, Phung, Nguyen, Le, Ding. *Revisiting Reverse
Distillation for Anomaly Detection.* CVPR 2023; ``tientrandinh/Revisiting-Reverse-Distillation``) as a
benchmark model.

An unsupervised anomaly detector (trained on normal images only): the prompts are ignored, each image
has one anomaly map and one score. Map: the sum over the three scales of ``1 - cos(encoder map,
decoder map)``, each bilinearly upsampled (``align_corners=True``) to the 256×256 input, then
``scipy.ndimage.gaussian_filter(σ=4)``: the official ``evaluation_multi_proj`` map, on the native
256×256 grid (``input_geometry`` ``resize:256x256``). Score: the maximum of that map (the only one the
official code computes).

Preprocessing (``MVTecDataset_test``): decode ``cv2-rgb`` (``cv2.imread`` then BGR→RGB), ``/255.`` in
float64, ``cv2.resize(img, (256, 256))`` (bilinear on the float image), ImageNet mean/std in float64,
channels first, ``.float()``.

Checkpoint: what ``main.py`` saves, ``torch.save({'proj': ..., 'decoder': ..., 'bn': ...}, path)``
(``wres50_<class>.pth``), read with ``weights_only=True`` (or ``.safetensors`` with ``proj.*``,
``bn.*``, ``decoder.*`` keys). The encoder is not in that file: it is torchvision's ImageNet
WideResNet-50-2 (``wide_resnet50_2-95faca4d.pth``, the file the official code downloads), given with
``imagenet``; a file that carries an ``encoder`` entry needs none. A checkpoint folder of ``afloc-bench train rdpp``
(``config.json`` of format ``afloc-bench/rdpp`` with the network's size, ``model.safetensors`` with the
encoder too) is loaded whole (strict key report; its ``image_size`` is the default input size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from baselines.common.reverse_distillation import (
    IMAGENET_FILE,
    AnomalyMapAdapter,
    build_network,
    cv2_float_resize_normalise,
    folder_of,
    load_imagenet_trunk,
    read_weights,
)
from baselines.rdpp.model import N_PAIRS, RDPlusPlusNet
from benchmark.io.checkpoints import CheckpointError, load_checked

PUBLISHED = ("no released weights: train with the official main.py (github.com/tientrandinh/Revisiting-Reverse-"
             "Distillation), which saves {'proj', 'decoder', 'bn'} to wres50_<class>.pth")
FOLDER_FORMAT = "afloc-bench/rdpp"  # config.json "format" of a checkpoint folder written by the trainer
PARTS = {"proj": "proj", "bn": "bn", "decoder": "decoder", "encoder": "encoder"}
EXPECTED = "an RD++ checkpoint ({'proj', 'bn', 'decoder'} state dicts, as main.py saves them)"


class RdppAdapter(AnomalyMapAdapter):
    """RD++, WideResNet-50-2. Options: ``imagenet`` (path of torchvision's ``wide_resnet50_2-95faca4d.pth``,
    the encoder; required with an official checkpoint), ``sigma``, ``reduction``, ``image_size``,
    ``random_init``, ``seed``."""

    preprocessing_id = "rdpp-cv2rgb-float-cv2bilinear-resize256-imagenet-v1"
    decode = "cv2-rgb"  # cv2.imread(path), cv2.COLOR_BGR2RGB
    checkpoint_name = "wres50_<class>.pth ({'proj', 'decoder', 'bn'})"
    checkpoint_url = PUBLISHED
    n_pairs = N_PAIRS

    def load(self, checkpoint: str | None, device: str) -> None:
        if checkpoint is None and not self.opt_bool("random_init"):
            checkpoint = self.demo_checkpoint()  # the shipped demo model (trained on demo_mimic's normal images)
        self.checkpoint = checkpoint
        folder = None if self.opt_bool("random_init") else folder_of(checkpoint)
        if folder is not None:
            self.seed_init()
            self.model = self.place(self.load_trained_folder(folder, RDPlusPlusNet, FOLDER_FORMAT), device)
            return
        random_init = self.wants_random_init(checkpoint)
        imagenet = self.opt("imagenet")
        self.seed_init()
        sd = None if random_init else read_weights(checkpoint, PARTS, EXPECTED)
        model = build_network(RDPlusPlusNet, random_init)
        has_encoder = sd is not None and any(k.startswith("encoder.") for k in sd)
        ignore = [r"encoder\.(layer4|fc)\..*"]  # an encoder saved from the official ResNet keeps its unused layer4, fc
        if not has_encoder and imagenet:
            self.imagenet_key_report = load_imagenet_trunk(model.encoder, imagenet, "imagenet")
            ignore = [r"encoder\..*"]
        elif not has_encoder and sd is not None:
            raise CheckpointError(checkpoint, f"RD++ files hold no encoder: pass the ImageNet weights ({IMAGENET_FILE})"
                                              f" with --model-option {self.name or 'rdpp'}.imagenet=PATH")
        if sd is not None:
            self.key_report = load_checked(model, sd, source=checkpoint, expected=EXPECTED, ignore=ignore)
            if self.imagenet_key_report is not None:
                self.key_report.notes.append(f"encoder.* loaded from the ImageNet weights {imagenet} "
                                             "(imagenet_key_report)")
        self.model = self.place(model, device)

    def preprocess(self, image: np.ndarray) -> Any:
        """uint8 gray or RGB → float32 [3, 256, 256] (see the module docstring)."""
        return cv2_float_resize_normalise(image, self.image_size)

    def features(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.model(batch)
