"""Official behaviours the project changes by default, each with a switch that gets it back.

- GLoRIA's official loader never calls ``.eval()``: ``gloria.train_mode=true`` keeps the image
  encoder's BatchNorm on batch statistics (outputs then depend on the batch).
- hi-ml upsamples BioViL's grid with ``nearest`` by default: ``biovil.interpolation=nearest``.
- CheXzero's repository pins torchvision 0.11, whose tensor ``Resize`` had no antialiasing: the
  project's input is the non-antialiased bicubic resize (no switch: that is the official behaviour).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from test_baselines_adapters import build, images
from torchvision import transforms as T


def test_gloria_train_mode_uses_batch_statistics_as_the_official_loader(tmp_path):
    official = build("gloria", tmp_path)  # eval mode by default
    assert not official.model.img_encoder.training
    a = type(official)(**{**official.options, "train_mode": "true"})
    a.name = "gloria"
    a.load(None, "cpu")
    assert a.model.img_encoder.training and not a.model.text_encoder.training
    batch = a.collate([a.preprocess(i) for i in images()])
    bn = next(m for m in a.model.img_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    g_train = a.encode_images(batch)["global"]
    assert not torch.equal(bn.running_mean, before)  # the official forward updates the running statistics
    g_eval = official.encode_images(batch)["global"]
    assert not torch.allclose(g_train, g_eval, atol=1e-4)
    # batch statistics: one image alone gives another embedding than inside the batch
    a2 = type(official)(**{**official.options, "train_mode": "true"})
    a2.name = "gloria"
    a2.load(None, "cpu")
    alone = a2.encode_images(batch[:1])["global"]
    assert not torch.allclose(alone[0], g_train[0], atol=1e-4)
    assert official.model_id != a.model_id  # the option is part of every cache key


def test_biovil_nearest_interpolation_is_hi_mls_default_upsampling():
    from benchmark.geometry.frames import parse_geometry

    grid = np.random.default_rng(0).standard_normal((15, 15)).astype(np.float32)
    h, w = 300, 380
    near = parse_geometry("resize_crop:512:480:nearest").grid_to_original(grid, (h, w))
    side = int(480 * min(h, w) / 512)  # hi-ml: the crop's size in original pixels, centred, NaN around
    up = F.interpolate(torch.from_numpy(grid)[None, None], size=(side, side), mode="nearest")[0, 0].numpy()
    top, left = (h - side) // 2, (w - side) // 2
    assert np.isnan(near[:top]).all() and np.isnan(near[:, :left]).all()
    assert np.array_equal(near[top:top + side, left:left + side], up.astype(np.float64))
    bilinear = parse_geometry("resize_crop:512:480").grid_to_original(grid, (h, w))
    assert np.nanmax(np.abs(bilinear - near)) > 0.1


def test_biovil_option_sets_the_grid_interpolation(tmp_path):
    a = build("biovil", tmp_path)
    assert a.input_geometry == "resize_crop:512:480"
    b = type(a)(**{**a.options, "interpolation": "nearest"})
    b.name = "biovil"
    b.load(None, "cpu")
    assert b.input_geometry == "resize_crop:512:480:nearest"


def test_chexzero_resize_is_bicubic_without_antialiasing_as_torchvision_0_11():
    from baselines.chexzero.model import letterbox_320, to_model_input

    square = letterbox_320(images()[0])
    x = torch.from_numpy(square.astype(np.float32))[None].repeat(3, 1, 1)
    x = T.Normalize([101.48761] * 3, [83.43944] * 3)(x)
    got = to_model_input(square)
    assert torch.equal(got, T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False)(x))
    antialiased = T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(x)
    assert float((got - antialiased).abs().max()) > 0.05  # the switch would matter: it is tested, not assumed
