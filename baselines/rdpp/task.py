"""Training RD++ on the shared trainer, on normal images only:
``afloc-bench train rdpp --dataset mimic_cxr --data-root PATH`` (``--dataset demo_mimic``: the demo).

Objective (``baselines.rdpp.losses``): ``L_distill + weight_proj · L_proj``. Per step the frozen encoder
sees the batch and a noised copy; the multi-projection layer maps both, ``L_proj`` (optimal transport,
reconstruction, contrast) is computed on them and the bottleneck and decoder rebuild the encoder maps
from the projected normal ones (``L_distill``). The encoder is the teacher: never updated, BatchNorm in
eval mode. The projection layer gets its own learning rate through ``lr_by_prefix`` (``proj.``).

Noise (``noise_patch``): one rectangle per image, sides drawn in [10, size/8) pixels (scaled from the
256 input), filled with smooth fractal noise (6 octaves, persistence 0.6, lattice 32 pixels, amplitude
0.2 on the [0, 1] image) and added before the ImageNet normalisation, as the official training set
does with simplex noise. The noise here is our own value noise with those settings (not the official
simplex stream), drawn from torch's global generator (seeded by the trainer, saved on resume).

Input: the adapter's preprocessing (``cv2-rgb``, ``/255``, bilinear resize of the float image, ImageNet
mean/std): the official training and test transforms are the same. Captions are ignored.

Checkpoint folder (``save``): ``model.safetensors`` (encoder, proj, bn, decoder) and ``config.json``
(format ``afloc-bench/rdpp``, the ``RDConfig``): ``--ckpt rdpp=FOLDER`` needs no ImageNet file.
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.common.image_prep import IMAGENET_STD
from baselines.common.reverse_distillation import ReverseDistillationTask, cv2_float_resize_normalise
from baselines.rdpp.adapter import FOLDER_FORMAT
from baselines.rdpp.losses import WEIGHT_PROJ, distillation_loss, projection_loss_terms, rdpp_loss
from baselines.rdpp.model import RDPlusPlusNet

NOISE_AMPLITUDE, NOISE_OCTAVES, NOISE_PERSISTENCE, NOISE_FREQUENCY = 0.2, 6, 0.6, 32.0


def fractal_noise(shape: tuple[int, int, int], generator: torch.Generator | None = None, octaves: int = NOISE_OCTAVES,
                  persistence: float = NOISE_PERSISTENCE, frequency: float = NOISE_FREQUENCY) -> torch.Tensor:
    """Smooth 3-D value noise over (channel, y, x), summed over octaves: lattice spacing ``frequency``
    halving and amplitude × ``persistence`` per octave; values in about [-2.4, 2.4]. float32 ``shape``."""
    out = torch.zeros(shape)
    amp, freq = 1.0, float(frequency)
    for _ in range(octaves):
        coords = [torch.arange(n, dtype=torch.float32) / freq for n in shape]
        lo = [c.floor().long() for c in coords]
        w = [(c - c.floor()) for c in coords]
        w = [t * t * (3 - 2 * t) for t in w]  # smoothstep between lattice points
        lattice = torch.rand(*(int(i[-1]) + 2 for i in lo), generator=generator) * 2 - 1
        val = torch.zeros(shape)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    z, y, x = lo[0] + dz, lo[1] + dy, lo[2] + dx
                    corner = lattice[z[:, None, None], y[None, :, None], x[None, None, :]]
                    weight = ((w[0] if dz else 1 - w[0])[:, None, None] * (w[1] if dy else 1 - w[1])[None, :, None]
                              * (w[2] if dx else 1 - w[2])[None, None, :])
                    val += weight * corner
        out += amp * val
        amp, freq = amp * persistence, freq / 2
    return out


def noise_patch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` (ImageNet-normalised ``[B, 3, S, S]``) with one noise rectangle added per image (see the
    module docstring); the noise is divided by the channel's std, i.e. added to the [0, 1] image."""
    b, c, h, w = images.shape
    lo, hi = max(1, round(10 * h / 256)), max(2, h // 8)
    noise = torch.zeros(b, c, h, w)
    for i in range(b):
        nh, nw = (int(torch.randint(lo, hi, (1,), generator=generator)) for _ in range(2))
        y0 = int(torch.randint(1, max(2, h - nh), (1,), generator=generator))
        x0 = int(torch.randint(1, max(2, w - nw), (1,), generator=generator))
        noise[i, :, y0:y0 + nh, x0:x0 + nw] = NOISE_AMPLITUDE * fractal_noise((c, nh, nw), generator)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(1, -1, 1, 1)
    return images + (noise / std).to(images.device, images.dtype)


class RdppTask(ReverseDistillationTask):
    """RD++'s distillation + multi-projection objective on ``RDPlusPlusNet``."""

    name = "rdpp"
    metric_columns = ("distill", "proj", "ssot", "reconstruct", "contrast")
    net_class = RDPlusPlusNet
    folder_format = FOLDER_FORMAT
    decode = "cv2-rgb"
    preprocess = staticmethod(cv2_float_resize_normalise)

    def prepare(self, model: Any, cfg: Any) -> None:
        """The encoder is the fixed teacher: no gradient, no optimiser group."""
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        self.weight_proj = float(self.loss_cfg.get("weight_proj", WEIGHT_PROJ))

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:
        x = batch["images"]
        noised = noise_patch(x)
        with autocast:
            with torch.no_grad():
                feats, feats_noise = model.encoder(x), model.encoder(noised)
            projected, projected_noise = model.proj(feats), model.proj(feats_noise)
            decoded = model.decoder(model.bn(projected))
        f32 = lambda ts: [t.float() for t in ts]  # noqa: E731
        proj = projection_loss_terms(f32(feats_noise), f32(projected_noise), f32(projected))
        distill = distillation_loss(f32(feats), f32(decoded))
        return {"loss": rdpp_loss(distill, proj["total"], self.weight_proj), "distill": distill,
                "proj": proj["total"], "ssot": proj["ssot"], "reconstruct": proj["reconstruct"],
                "contrast": proj["contrast"]}
