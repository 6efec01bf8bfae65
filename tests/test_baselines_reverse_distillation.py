"""ReContrast (``recontrast``) and RD++ (``rdpp``): the anomaly-map definitions on hand-made features,
checkpoint import in the official layouts, the training losses, and a golden fixture of this project's
outputs on seeded random weights.

Equality with the official code (same keys, same preprocessing, features, maps, scores and losses on the
same random weights and files) was measured outside the repository; the figures are in docs/parity.md.
``tests/fixtures/reverse_distillation/`` holds this project's own outputs at a 64×64 input (regenerate
deliberately with ``python tests/test_baselines_reverse_distillation.py --write`` after an intended change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from baselines.common.reverse_distillation import (
    OFFICIAL_SIGMA,
    image_scores,
    raw_anomaly_map,
    read_weights,
    scale_distances,
    smooth_maps,
)
from benchmark.adapter import Query

FIX = Path(__file__).parent / "fixtures" / "reverse_distillation"
GOLDEN = FIX / "golden.npz"
KEYS = FIX / "keys.json"
SIZE = 64  # the fixture's input side (the official one is 256): WideResNet forwards stay fast on CPU
PROMPTS = [Query("Findings suggesting pneumonia.", "Pneumonia"), Query("Small left pleural effusion", None)]


def images() -> list[np.ndarray]:
    """A deterministic smooth gray image and a colour one, of different aspect ratios."""
    out = []
    for seed, (h, w) in enumerate([(300, 260), (240, 320)]):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.sin(6 * xx + seed) * np.cos(4 * yy) + 0.3 * rng.standard_normal((h, w))
        img += 2.0 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.3 - 0.2 * seed) ** 2) / 0.02)
        out.append(np.clip((img - img.min()) / np.ptp(img) * 255, 0, 255).astype(np.uint8))
    out[1] = np.stack([out[1], out[1][::-1], 255 - out[1]], axis=-1)
    return out


def _features(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- map and score definitions on hand-made features --------------------------------------------------
@pytest.mark.parametrize("pairs", [3, 6])
def test_identical_features_give_a_zero_map(pairs):
    enc = [_features(2, 8 * (i + 1), 4 * 2 ** (i % 3), 4 * 2 ** (i % 3), i) for i in range(pairs)]
    raw = raw_anomaly_map(enc, [e.clone() for e in enc], 32)
    assert raw.shape == (2, 32, 32) and raw.dtype == np.float64
    np.testing.assert_allclose(raw, 0.0, atol=1e-6)
    np.testing.assert_allclose(image_scores(smooth_maps(raw)), 0.0, atol=1e-6)


@pytest.mark.parametrize("pairs", [3, 6])
def test_orthogonal_features_count_one_per_pair_and_opposite_two(pairs):
    """1 - cos is 1 for orthogonal channel vectors and 2 for opposite ones, at every position; the map
    sums the pairs (3 scales for RD++, 6 crossed pairs for ReContrast) after upsampling."""
    enc, orth, opp = [], [], []
    for i in range(pairs):
        side = 16 // 2 ** (i % 3)
        e = torch.zeros(1, 4, side, side)
        e[:, 0] = torch.rand(side, side) + 0.5
        o = torch.zeros_like(e)
        o[:, 2] = torch.rand(side, side) + 0.5
        enc.append(e), orth.append(o), opp.append(-3 * e)
    np.testing.assert_allclose(raw_anomaly_map(enc, orth, 64), float(pairs), rtol=1e-6)
    np.testing.assert_allclose(raw_anomaly_map(enc, opp, 64), 2.0 * pairs, rtol=1e-6)
    # σ-4 smoothing (reflect borders) keeps a constant map constant, so the score is the constant
    np.testing.assert_allclose(image_scores(smooth_maps(raw_anomaly_map(enc, orth, 64))), [float(pairs)], rtol=1e-6)


def test_upsampling_is_bilinear_with_aligned_corners():
    """Each pair's distance map reaches the input size by ``F.interpolate(bilinear, align_corners=True)``:
    the grid's corner values land exactly on the map's corners, the centre of a 2×2 grid is their mean."""
    e = torch.zeros(1, 2, 2, 2)
    e[0, 0] = 1.0
    d = torch.zeros(1, 2, 2, 2)
    angles = torch.tensor([[0.0, 0.5], [1.0, 1.5]])  # 1 - cos(angle) per grid cell
    d[0, 0], d[0, 1] = torch.cos(angles), torch.sin(angles)
    (m,) = scale_distances([e], [d], 9)
    grid = 1 - torch.cos(angles)
    assert m.shape == (1, 9, 9)
    torch.testing.assert_close(m[0, [0, 0, -1, -1], [0, -1, 0, -1]], grid.flatten(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m[0, 4, 4], grid.mean(), rtol=0, atol=1e-6)
    ref = F.interpolate(grid[None, None], size=(9, 9), mode="bilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(m[0], ref, rtol=0, atol=1e-6)


def test_smoothing_is_scipys_gaussian_sigma_4():
    """``gaussian_filter(map, sigma=4)``: truncate 4 (radius 16), reflect borders, float64."""
    assert OFFICIAL_SIGMA == 4.0
    delta = np.zeros((1, 64, 64))
    delta[0, 32, 32] = 1.0
    sm = smooth_maps(delta)
    np.testing.assert_array_equal(sm[0], gaussian_filter(delta[0], sigma=4))
    assert sm[0, 32, 32 + 16] > 0 and sm[0, 32, 32 + 17] == 0  # radius int(4 * 4 + 0.5) = 16
    assert abs(sm.sum() - 1) < 1e-12
    x = np.arange(-16, 17)
    k = np.exp(-x ** 2 / 32.0)
    k /= k.sum()
    np.testing.assert_allclose(sm[0, 16:49, 16:49], np.outer(k, k), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(smooth_maps(delta, 0), delta)  # sigma 0: the raw map


def test_image_score_is_the_max_or_the_mean_of_the_map():
    maps = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 0.25)])
    np.testing.assert_array_equal(image_scores(maps), [15.0, 0.25])
    np.testing.assert_array_equal(image_scores(maps, "mean"), [7.5, 0.25])
    with pytest.raises(ValueError):
        image_scores(maps, "top10")


# -- structure --------------------------------------------------------------------------------------------
def _shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_keys_are_the_official_ones():
    """Key names and shapes equal the fixture, listed from these modules and found equal, key for key,
    to the official modules at the commits it names (docs/parity.md)."""
    from baselines.rdpp.model import RDPlusPlusNet
    from baselines.recontrast.model import ReContrastNet

    ref = json.loads(KEYS.read_text())
    with torch.device("meta"):
        rc, rd = _shapes(ReContrastNet()), _shapes(RDPlusPlusNet())
    assert rc == ref["recontrast"] and len(rc) == 864
    assert rd == ref["rdpp"]
    counts = {p: sum(k.startswith(p + ".") for k in rd) for p in ("encoder", "proj", "bn", "decoder")}
    assert counts == {"encoder": 258, "proj": 24, "bn": 84, "decoder": 252}
    assert not any(".layer4." in k or ".fc." in k for k in list(rc) + list(rd))


# -- adapters on seeded random weights ----------------------------------------------------------------------
_ADAPTERS: dict[str, tuple] = {}


def build(name: str):
    """(adapter with random weights at seed 0 and a 64×64 input, its outputs), built once per session."""
    if name not in _ADAPTERS:
        from baselines.rdpp.adapter import RdppAdapter
        from baselines.recontrast.adapter import ReContrastAdapter

        a = {"recontrast": ReContrastAdapter, "rdpp": RdppAdapter}[name](random_init="true", seed=0, image_size=SIZE)
        a.name = name
        a.load(None, "cpu")
        _ADAPTERS[name] = (a, outputs(a))
    return _ADAPTERS[name]


def outputs(a) -> dict[str, np.ndarray]:
    batch = a.collate([a.preprocess(i) for i in images()])
    emb = a.encode_images(batch)
    text = a.encode_texts(PROMPTS)
    return {"input_mean": np.asarray([float(batch.double().mean())]),
            "maps": np.asarray(a.similarity_map(a.take(emb, [0, 1]), text)),
            "scores": np.asarray(a.score(a.take(emb, [0, 1]), text, text))}


@pytest.mark.parametrize("name", ["recontrast", "rdpp"])
def test_outputs_match_the_golden_fixture(name):
    _, out = build(name)
    ref = np.load(GOLDEN)
    for k, v in out.items():
        want = ref[f"{name}_{k}"]
        atol = 1e-5 * max(1e-3, float(np.abs(want).max()))
        np.testing.assert_allclose(v, want, rtol=1e-4, atol=atol, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("name", ["recontrast", "rdpp"])
def test_adapter_contract(name):
    from benchmark.adapter import GROUNDING, ZEROSHOT_CLS
    from benchmark.geometry.frames import parse_geometry
    from benchmark.registry import models

    a, out = build(name)
    assert a.capabilities == (GROUNDING, ZEROSHOT_CLS) and not a.needs_checkpoint  # demo weights without --ckpt
    assert a.input_geometry == f"resize:{SIZE}x{SIZE}" and parse_geometry(a.input_geometry)
    assert type(a).input_geometry == "resize:256x256"
    assert a.decode == {"recontrast": "pil-rgb", "rdpp": "cv2-rgb"}[name]
    assert out["maps"].shape == (2, SIZE, SIZE) and out["maps"].dtype == np.float32
    assert np.isfinite(out["maps"]).all() and np.ptp(out["maps"][0]) > 0
    assert out["scores"].shape == (2,) and out["scores"].dtype == np.float64
    # the score is the max of the map; the map lies in [0, 2 per pair]
    np.testing.assert_allclose(out["scores"], out["maps"].reshape(2, -1).max(1), rtol=1e-6)
    assert out["maps"].min() >= -1e-6 and out["maps"].max() <= 2 * a.n_pairs
    # prompts are ignored: any prompt gives the same map and score
    emb = a.encode_images(a.collate([a.preprocess(images()[0])]))
    one, other = a.encode_texts([PROMPTS[0]]), a.encode_texts([Query("no finding at all", "No Finding")])
    np.testing.assert_array_equal(a.similarity_map(emb, one), a.similarity_map(emb, other))
    np.testing.assert_array_equal(a.score(emb, one, one), a.score(emb, other, None))
    d = a.describe()
    assert "ignored" in d["prompts"] and "max" in d["score"] and f"{SIZE}x{SIZE}" in d["map"]
    e = models.entry(name)
    assert not e.get("needs_checkpoint") and e.get("demo_weights") == f"{name}-demo-1"
    assert "anomaly" in e.tags and e.capabilities == a.capabilities


@pytest.mark.parametrize("name", ["recontrast", "rdpp"])
def test_gray_and_replicated_rgb_inputs_are_the_same(name):
    a, _ = build(name)
    gray = images()[0]
    x = a.preprocess(gray)
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, SIZE, SIZE)
    torch.testing.assert_close(x, a.preprocess(np.repeat(gray[:, :, None], 3, axis=2)), rtol=0, atol=0)


def test_batch_rows_are_independent():
    a, out = build("recontrast")  # the frozen and trainable halves share one batch inside the network
    alone = a.encode_images(a.collate([a.preprocess(images()[1])]))
    np.testing.assert_allclose(alone["map"][0].numpy(), out["maps"][1], rtol=1e-5, atol=1e-6)


def test_an_option_out_of_range_is_an_error():
    from baselines.rdpp.adapter import RdppAdapter

    with pytest.raises(ValueError):
        RdppAdapter(image_size=100)
    with pytest.raises(ValueError):
        RdppAdapter(reduction="median")


# -- checkpoint import in the official layouts --------------------------------------------------------------
def _tagged(shapes: dict[str, list[int]], start: int) -> dict[str, torch.Tensor]:
    """A distinct constant per key (stride-0 tensors: the files stay a few kB), to check key-for-key loading."""
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(start + i)
        else:
            out[k] = torch.tensor([float(start + i)]).expand(*shape)
    return out


def _assert_loaded(module, expected: dict[str, torch.Tensor]) -> None:
    sd = module.state_dict()
    for k, v in expected.items():
        got = sd[k]
        assert got.shape == v.shape and bool((got == v).all()), k


def _imagenet_file(tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file in torchvision's wide_resnet50_2 layout (layer4 and fc included)."""
    import torchvision

    with torch.device("meta"):
        tv = _shapes(torchvision.models.wide_resnet50_2())
    sd = _tagged(tv, 100_000)
    torch.save(sd, tmp / "wide_resnet50_2-95faca4d.pth")
    return tmp / "wide_resnet50_2-95faca4d.pth", sd


def test_recontrast_imports_the_official_module_state_dict(tmp_path):
    """``torch.save(model.state_dict())`` of the official ReContrast module (here with ``module.`` keys, as
    a DataParallel run writes them): every key loaded, each into the tensor of the same name."""
    from baselines.recontrast.adapter import ReContrastAdapter

    shapes = json.loads(KEYS.read_text())["recontrast"]
    sd = _tagged(shapes, 1)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "recontrast.pth")
    a = ReContrastAdapter()
    a.load(str(tmp_path / "recontrast.pth"), "cpu")
    rep = a.key_report
    assert rep.ok and rep.loaded == rep.n_module == 864 and not rep.ignored
    _assert_loaded(a.model, sd)
    assert a.describe()["key_report"]["loaded"] == 864


def test_recontrast_without_the_frozen_encoder_takes_it_from_imagenet(tmp_path):
    from baselines.recontrast.adapter import ReContrastAdapter
    from benchmark.io.checkpoints import CheckpointError

    shapes = json.loads(KEYS.read_text())["recontrast"]
    parts = {"encoder": {}, "bn": {}, "decoder": {}}  # a dict of parts, the RD family's other layout
    sd = _tagged({k: v for k, v in shapes.items() if not k.startswith("encoder_freeze.")}, 1)
    for k, v in sd.items():
        head, rest = k.split(".", 1)
        parts["bn" if head == "bottleneck" else head][rest] = v
    torch.save(parts, tmp_path / "parts.pth")
    with pytest.raises(CheckpointError, match="imagenet"):
        ReContrastAdapter().load(str(tmp_path / "parts.pth"), "cpu")
    path, tv = _imagenet_file(tmp_path)
    a = ReContrastAdapter(imagenet=str(path))
    a.load(str(tmp_path / "parts.pth"), "cpu")
    assert a.key_report.ok and a.key_report.loaded == 864 - 258 and len(a.key_report.ignored) == 258
    assert a.imagenet_key_report.loaded == 258 and len(a.imagenet_key_report.ignored) == len(tv) - 258
    _assert_loaded(a.model, sd)
    _assert_loaded(a.model.encoder_freeze, {k: v for k, v in tv.items() if not k.startswith(("layer4.", "fc."))})
    assert "imagenet_key_report" in a.describe()


def test_rdpp_imports_the_official_file_and_the_imagenet_encoder(tmp_path):
    """``main.py``'s ``{'proj', 'decoder', 'bn'}`` file plus the ImageNet encoder: every key accounted for."""
    from baselines.rdpp.adapter import RdppAdapter
    from benchmark.io.checkpoints import CheckpointError

    shapes = json.loads(KEYS.read_text())["rdpp"]
    sd = _tagged({k: v for k, v in shapes.items() if not k.startswith("encoder.")}, 1)
    parts: dict[str, dict] = {"proj": {}, "decoder": {}, "bn": {}}
    for k, v in sd.items():
        head, rest = k.split(".", 1)
        parts[head][rest] = v
    torch.save(parts, tmp_path / "wres50_x.pth")
    with pytest.raises(CheckpointError, match="imagenet"):
        RdppAdapter().load(str(tmp_path / "wres50_x.pth"), "cpu")
    path, tv = _imagenet_file(tmp_path)
    a = RdppAdapter(imagenet=str(path))
    a.load(str(tmp_path / "wres50_x.pth"), "cpu")
    rep = a.key_report
    assert rep.ok and rep.loaded == 360 and rep.n_module == 618 and len(rep.ignored) == 258 and rep.notes
    assert a.imagenet_key_report.ok and a.imagenet_key_report.loaded == 258
    _assert_loaded(a.model, sd)
    _assert_loaded(a.model.encoder, {k: v for k, v in tv.items() if not k.startswith(("layer4.", "fc."))})


def test_a_wrong_file_is_refused_by_name(tmp_path):
    from baselines.rdpp.adapter import RdppAdapter
    from benchmark.adapter import build_adapter
    from benchmark.io.checkpoints import CheckpointError

    torch.save({"proj": {"weight": torch.zeros(3)}}, tmp_path / "other.pth")
    imagenet, _ = _imagenet_file(tmp_path)
    with pytest.raises(CheckpointError, match="other.pth"):
        RdppAdapter(imagenet=str(imagenet)).load(str(tmp_path / "other.pth"), "cpu")
    with pytest.raises(CheckpointError, match="missing.pth"):
        RdppAdapter(imagenet=str(tmp_path / "missing.pth")).load(str(tmp_path / "other.pth"), "cpu")
    demo = build_adapter("rdpp")  # no checkpoint: the shipped demo model, not an error
    demo.load(None, "cpu")
    assert Path(demo.checkpoint).name == "rdpp_demo_1" and demo.image_size == 128


def test_read_weights_flattens_parts_and_flat_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"bn.conv1.weight": torch.ones(2), "module.decoder.x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    assert sorted(read_weights(tmp_path / "w.safetensors", {"bn": "bn"}, "x")) == ["bn.conv1.weight", "decoder.x"]
    torch.save({"bn": {"module.a": torch.ones(1)}, "epoch": 3}, tmp_path / "p.pth")
    assert list(read_weights(tmp_path / "p.pth", {"bn": "bottleneck"}, "x")) == ["bottleneck.a"]


# -- training losses ----------------------------------------------------------------------------------------------
def _loss_outputs() -> dict[str, np.ndarray]:
    """Loss values on small seeded features (the fixture's ``loss_*`` entries)."""
    from baselines.rdpp.losses import projection_loss_terms, sinkhorn_divergence
    from baselines.recontrast.losses import recontrast_loss

    enc = [_features(2, c, s, s, 10 + i) for i, (c, s) in enumerate([(8, 8), (16, 4), (32, 2)] * 2)]
    dec = [(e + 0.7 * _features(*e.shape, 20 + i)).requires_grad_() for i, e in enumerate(enc)]
    loss = recontrast_loss(enc, dec, alpha=1.0)
    loss.backward()
    x = _features(1, 1, 5, 7, 30)[0, 0]
    y = _features(1, 1, 5, 7, 31)[0, 0]
    proj = [_features(3, c, s, s, 40 + i) for i, (c, s) in enumerate([(8, 8), (16, 4), (32, 2)])]
    noised = [p + 0.3 * _features(*p.shape, 50 + i) for i, p in enumerate(proj)]
    terms = projection_loss_terms(noised, [0.9 * n for n in noised], proj, perm=torch.tensor([2, 0, 1]))
    return {"loss_recontrast": np.asarray([float(loss.detach())]),
            "loss_recontrast_grad_abs_sum": np.asarray([float(d.grad.abs().sum()) for d in dec]),
            "loss_sinkhorn": np.asarray([float(sinkhorn_divergence(x, y))]),
            "loss_rdpp_proj": np.asarray([float(terms[k]) for k in ("ssot", "reconstruct", "contrast", "total")])}


def test_losses_match_the_golden_fixture():
    ref = np.load(GOLDEN)
    for k, v in _loss_outputs().items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-5, atol=1e-9, err_msg=k)


def test_hard_mining_keeps_the_gradient_of_hard_positions_only():
    from baselines.common.reverse_distillation import flat_cosine_loss
    from baselines.recontrast.losses import hard_mined_cosine_loss, hard_mining_alpha

    assert [hard_mining_alpha(i, 1000) for i in (0, 50, 100, 900)] == [-3.0, -1.0, 1.0, 1.0]
    e = _features(2, 6, 5, 5, 1)
    d1 = (e + _features(2, 6, 5, 5, 2)).requires_grad_()
    d2 = d1.detach().clone().requires_grad_()
    loss = hard_mined_cosine_loss([e], [d1], alpha=0.5)
    plain = flat_cosine_loss([e], [d2])
    assert float(loss.detach()) == float(plain.detach())  # the value is plain distillation; the gradient differs
    loss.backward()
    plain.backward()
    dist = 1 - F.cosine_similarity(e, d2.detach()).unsqueeze(1)
    easy = (dist < dist.mean() + 0.5 * dist.reshape(-1).std()).expand_as(d1)
    assert 0 < int(easy[:, 0].sum()) < easy[:, 0].numel()
    assert bool((d1.grad[easy] == 0).all())
    torch.testing.assert_close(d1.grad[~easy], d2.grad[~easy], rtol=0, atol=0)


def test_sinkhorn_divergence_is_zero_on_equal_clouds_and_positive_otherwise():
    from baselines.rdpp.losses import epsilon_schedule, sinkhorn_divergence

    sched = epsilon_schedule()
    assert sched[0] == 1e14 and sched[-1] == pytest.approx(0.0025) and len(sched) == 375
    x = _features(1, 1, 6, 4, 3)[0, 0]
    assert abs(float(sinkhorn_divergence(x, x.clone()))) < 1e-5
    assert float(sinkhorn_divergence(x, x + 1.0)) > 0.1


# -- the fixture -----------------------------------------------------------------------------------------------------
def _write_golden() -> None:  # pragma: no cover - run by hand
    from baselines.rdpp.model import RDPlusPlusNet
    from baselines.recontrast.model import ReContrastNet

    FIX.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}_{k}": v for name in ("recontrast", "rdpp") for k, v in build(name)[1].items()}
    arrays.update(_loss_outputs())
    np.savez_compressed(GOLDEN, **arrays)
    with torch.device("meta"):
        keys = {"recontrast": _shapes(ReContrastNet()), "rdpp": _shapes(RDPlusPlusNet())}
    keys["source"] = ("listed from baselines/recontrast/model.py and baselines/rdpp/model.py; equal, name for name "
                      "and shape for shape, to the official ReContrast module (guojiajeremy/ReContrast @381ef13) "
                      "and to RD++'s encoder (torchvision layout without layer4/fc), MultiProjectionLayer, BN_layer "
                      "and de_wide_resnet50_2 (tientrandinh/Revisiting-Reverse-Distillation @7f2ceb7)")
    KEYS.write_text(json.dumps(keys, indent=0) + "\n")
    print("wrote", GOLDEN, KEYS)


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        _write_golden()
