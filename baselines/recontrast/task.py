"""Training ReContrast on the shared trainer, on normal images only:
``afloc-bench train recontrast --dataset mimic_cxr --data-root PATH`` (``--dataset demo_mimic``: the demo).

Objective: ``baselines.recontrast.losses.recontrast_loss`` on the six crossed pairs of ``ReContrastNet``,
with hard-point mining whose ``alpha`` rises from -3 to 1 over the first 10% of ``model.loss.total_iters``
(default: ``max_steps``), counted in optimiser steps of the trainer. The trainable encoder gets its own
learning rate through ``lr_by_prefix`` (``encoder.``); ``encoder_freeze`` keeps the initial weights (the
ImageNet copy; the network's own random copy in the demo) and is never updated.

Input: the adapter's preprocessing (``pil-rgb``, PIL bilinear resize to ``image_size``, ImageNet
mean/std), as the official training reads its images with the test transform. Captions are ignored.

Checkpoint folder (``save``): ``model.safetensors`` (all four parts, the frozen encoder included) and
``config.json`` (format ``afloc-bench/recontrast``, the ``RDConfig``): ``--ckpt recontrast=FOLDER``.
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.common.reverse_distillation import ReverseDistillationTask, pil_resize_normalise
from baselines.recontrast.adapter import FOLDER_FORMAT
from baselines.recontrast.losses import hard_mining_alpha, recontrast_loss
from baselines.recontrast.model import ReContrastNet


class ReContrastTask(ReverseDistillationTask):
    """ReContrast's crossed reverse-distillation objective on ``ReContrastNet``."""

    name = "recontrast"
    metric_columns = ("alpha",)
    net_class = ReContrastNet
    folder_format = FOLDER_FORMAT
    decode = "pil-rgb"
    preprocess = staticmethod(pil_resize_normalise)

    def prepare(self, model: Any, cfg: Any) -> None:
        """The frozen encoder starts as a copy of the (possibly ImageNet) trainable one."""
        model.encoder_freeze.load_state_dict(model.encoder.state_dict())
        for p in model.encoder_freeze.parameters():
            p.requires_grad_(False)
        total = self.loss_cfg.get("total_iters") or cfg.max_steps
        if not total:
            raise ValueError("recontrast: the hard-mining schedule needs model.loss.total_iters or max_steps")
        self.total_iters = int(total)

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:
        alpha = hard_mining_alpha(self.global_step, self.total_iters)
        with autocast:
            enc, dec = model(batch["images"])
        loss = recontrast_loss([e.float() for e in enc], [d.float() for d in dec], alpha,
                               float(self.loss_cfg.get("factor", 0.0)))
        return {"loss": loss, "alpha": torch.tensor(alpha)}
