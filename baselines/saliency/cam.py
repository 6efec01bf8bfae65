"""Class activation maps through the ``grad-cam`` library, in raw (unnormalised) form.

The library's ``cam(input, targets)`` returns, per image, ``ReLU(cam)`` min–max scaled to
[0, 1] and resized (bilinear, cv2) to the input tensor's size. Normalisation and upsampling
belong to the benchmark's protocols, so ``compute_cams(..., output="raw")`` keeps the
library's forward pass, targets, backward pass and per-method weighting (``get_cam_image``)
and stops before ``scale_cam_image``: it returns ``ReLU(cam)`` on the target layer's native
grid. When a class's CAM is negative everywhere the ReLU leaves an all-zero map (grad-cam issue
#214), which carries no location; ``relu=False`` returns the signed map instead, and
``count_empty`` lets adapters report how often that happened. ``output="library"`` returns the library's \
own normalised maps (used for parity tests
and for users who want the library's exact output).

Targets: one ``ClassifierOutputTarget(k)`` per image (the raw logit or similarity of the
wanted class), so a batch mixes classes freely; the library sums ``target(output)`` over
``zip(targets, outputs)`` and would silently drop images if the lists differed in length,
hence the length check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

METHODS = ("gradcam", "gradcam++", "eigencam")
OUTPUTS = ("raw", "library")


def cam_class(method: str):
    """The library class implementing ``method``."""

    table = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
    if method not in table:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    return table[method]


_RAW_CLASSES: dict[tuple[type, bool], type] = {}


def _raw_class(base: type, relu: bool) -> type:
    """Subclass of a library CAM that skips the per-image min–max scaling and the resize."""
    if (base, relu) not in _RAW_CLASSES:

        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            out = []
            for i, layer in enumerate(self.target_layers):
                a = acts[i] if i < len(acts) else None
                g = grads[i] if i < len(grads) else None
                cam = self.get_cam_image(input_tensor, layer, targets, a, g, eigen_smooth)
                out.append((np.maximum(cam, 0) if relu else cam)[:, None])  # the library's ReLU, optional
            return out

        def aggregate_multi_layers(self, cam_per_target_layer):
            return np.mean(np.concatenate(cam_per_target_layer, axis=1), axis=1)

        _RAW_CLASSES[(base, relu)] = type(("Raw" if relu else "Signed") + base.__name__, (base,), {
            "compute_cam_per_layer": compute_cam_per_layer,
            "aggregate_multi_layers": aggregate_multi_layers,
        })
    return _RAW_CLASSES[(base, relu)]


def compute_cams(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor,
                 class_index: Sequence[int], *, output: str = "raw", relu: bool = True,
                 reshape_transform: Callable | None = None, input_requires_grad: bool = False) -> np.ndarray:
    """CAMs of ``model`` on batch ``x`` for one class per image → float32 ``[B, h, w]``.

    ``x`` may also be features entering a head module that holds ``layer``
    (``input_requires_grad=True``, as the layer's gradient hook needs autograd there).

    ``output="raw"``: ``ReLU(cam)`` on the layer's grid (``relu=False`` keeps the signed
    weighted sum, which still ranks regions when every value is negative); ``"library"``: the
    library's [0, 1] map at the input size.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")

    targets = [ClassifierOutputTarget(int(k)) for k in class_index]
    if len(targets) != int(x.shape[0]):
        raise ValueError(f"{len(targets)} CAM targets for a batch of {int(x.shape[0])} images")
    base = cam_class(method)
    cls = base if output == "library" else _raw_class(base, relu)
    # CAMs need autograd even when the caller runs under no_grad/inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        # a feature map given to a head module must carry autograd for the layer's gradient hook
        x = x.clone().requires_grad_(input_requires_grad)
        with cls(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
            maps = cam(input_tensor=x, targets=targets)
        model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def vit_reshape(grid: tuple[int, int], prefix_tokens: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """Token sequence ``[B, prefix + h*w, D]`` → feature map ``[B, D, h, w]`` (drops CLS)."""
    h, w = grid

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            raise ValueError(f"expected tokens [B, N, D], got shape {tuple(t.shape)}")
        tokens = t[:, prefix_tokens:, :]
        if tokens.shape[1] != h * w:
            raise ValueError(f"{tokens.shape[1]} patch tokens do not fill a {h}x{w} grid")
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def count_empty(maps: np.ndarray) -> int:
    """Number of maps with no positive value (all-zero after the ReLU: nothing to localise)."""
    m = np.asarray(maps)
    return int((m.reshape(len(m), -1).max(axis=1) <= 0).sum()) if len(m) else 0
