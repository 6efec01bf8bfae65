"""Diagnostics of a trained AFLoc model: unit-softmax saturation, readout contrast, prompt dependence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    tiny_model,
)

from afloc.diagnostics import contrast_to_noise, map_correlation, prompt_dependence, readout_contrast, unit_saturation


def test_unit_saturation_sees_a_dominant_unit_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    deep = torch.randn(2, 8, 3, 3, generator=g)
    units = torch.randn(2, 4, 8, generator=g) * 0.01
    lens = torch.tensor([3, 3])
    assert unit_saturation(deep, units, lens) == 0.0  # comparable small units: soft everywhere
    loud = units.clone()
    loud[:, 0] = deep.mean((2, 3)) * 100  # one unit aligned with the regions, large norm
    assert unit_saturation(deep, loud, lens) > 0.9
    pad = units.clone()
    pad[:, 3] = deep.mean((2, 3)) * 100  # a huge vector in a padded slot changes nothing
    assert unit_saturation(deep, pad, lens) == 0.0
    with pytest.raises(ValueError, match="pair up"):
        unit_saturation(deep, units[:1], lens[:1])


def test_contrast_to_noise_is_the_formula_and_sign_aware():
    m = torch.zeros(1, 4, 4)
    k = torch.zeros(1, 4, 4, dtype=torch.bool)
    k[0, :2, :2] = True
    m[0][k[0]] = torch.tensor([2.0, 2.0, 4.0, 4.0])
    i, o = m[0][k[0]], m[0][~k[0]]
    want = (i.mean() - o.mean()) / torch.sqrt(i.var(unbiased=False) + o.var(unbiased=False))
    torch.testing.assert_close(contrast_to_noise(m, k)[0], want)
    torch.testing.assert_close(contrast_to_noise(-m, k)[0], -want)
    with pytest.raises(ValueError, match="lesion and background"):
        contrast_to_noise(m, torch.zeros_like(k))


@pytest.mark.usefixtures("one_thread")
def test_readout_contrast_scores_the_official_heatmap_and_the_alternatives(tmp_path):
    from afloc.model import similarity_grid

    model = tiny_model(tmp_path, upsample=None).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    prompts = ["Findings suggesting pneumonia.", "There is a small left pleural effusion."]
    with torch.no_grad():
        deep = model.encode_image(images, shallow=False).deep
    masks = torch.zeros(2, *deep.shape[-2:], dtype=torch.bool)
    masks[:, :2, :2] = True
    got = readout_contrast(model, images, prompts, masks)
    assert set(got) == {"report", "cls", "sentence", "feature_norm"}
    with torch.no_grad():
        official = similarity_grid(deep, model.report_embeddings(prompts))
    assert got["report"] == pytest.approx(float(contrast_to_noise(official, masks).mean()), rel=1e-5)
    assert got["feature_norm"] == pytest.approx(float(contrast_to_noise(deep.norm(dim=1), masks).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="deep grid"):
        readout_contrast(model, images, prompts, torch.ones(2, 1, 1, dtype=torch.bool))


def test_map_correlation_is_the_mean_pearson_correlation_between_prompts():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 4, 4, generator=g)
    b = torch.randn(3, 4, 4, generator=g)
    same = torch.stack([a, 2 * a + 1], dim=1)  # an affine copy: the same map
    torch.testing.assert_close(map_correlation(same), torch.ones(3))
    torch.testing.assert_close(map_correlation(torch.stack([a, -a], dim=1)), -torch.ones(3))
    three = torch.stack([a, b, a], dim=1)
    x, y = a.flatten(1), b.flatten(1)
    r_ab = torch.stack([torch.corrcoef(torch.stack([x[i], y[i]]))[0, 1] for i in range(3)])
    torch.testing.assert_close(map_correlation(three), (2 * r_ab + 2 * r_ab + 2 * 1.0) / 6)
    with pytest.raises(ValueError, match="two prompts"):
        map_correlation(a[:, None])
    with pytest.raises(ValueError, match="constant"):
        map_correlation(torch.stack([a, torch.zeros_like(a)], dim=1))


@pytest.mark.usefixtures("one_thread")
def test_prompt_dependence_measures_the_official_heatmaps(tmp_path):
    from afloc.model import similarity_grid

    model = tiny_model(tmp_path, upsample=None).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    prompts = ["Findings suggesting pneumonia.", "There is a small left pleural effusion.", "cardiomegaly"]
    got = prompt_dependence(model, images, prompts)
    with torch.no_grad():
        deep = model.encode_image(images, shallow=False).deep
        reports = model.report_embeddings(prompts)
    maps = torch.stack([similarity_grid(deep, r.expand(2, -1)) for r in reports], dim=1)
    assert got["map_correlation"] == pytest.approx(float(map_correlation(maps).mean()), rel=1e-5)
    unit = torch.nn.functional.normalize(reports, dim=-1)
    want_cos = float((unit @ unit.T).sum() - 3) / 6
    assert got["embedding_cosine"] == pytest.approx(want_cos, rel=1e-5)
    assert prompt_dependence(model, images, [prompts[0], prompts[0]]) == pytest.approx(
        {"map_correlation": 1.0, "embedding_cosine": 1.0}, rel=1e-5)
    with pytest.raises(ValueError, match="two prompts"):
        prompt_dependence(model, images, prompts[:1])


def test_grid_cells_read_the_frame_mask_at_each_cell_centre():
    from afloc.diagnostics import grid_cells
    from benchmark.geometry.afloc import afloc_boxes_mask
    # a 4x4 grid over a 224 frame: cell centres at pixels 28, 84, 140, 196
    frames = np.stack([afloc_boxes_mask([[20, 80, 70, 10]], (224, 224), 224),
                       np.zeros((224, 224), np.uint8),
                       afloc_boxes_mask([[0, 0, 30, 30], [190, 190, 34, 34]], (224, 224), 224)])
    want = np.zeros((3, 4, 4), dtype=bool)
    want[0, 1, 0:2] = True  # rows 80..89 hold the centre 84; columns 20..89 hold 28 and 84
    want[2, 0, 0] = want[2, 3, 3] = True
    np.testing.assert_array_equal(grid_cells(frames, (4, 4)), want)


@pytest.mark.usefixtures("one_thread")
def test_diagnostics_command_reports_a_checkpoint(tmp_path, monkeypatch, capsys):
    import json

    from afloc.checkpoint import save_checkpoint
    from afloc.diagnostics import main
    from benchmark.demo import generate

    demo = tmp_path / "demo"
    generate(demo, n_train=8, n_test=8, datasets=["rsna_pneumonia", "ms_cxr"], progress=False, workers=1)
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(demo))
    ck = save_checkpoint(tmp_path / "ck", tiny_model(tmp_path / "tok", upsample=None))
    assert main([str(ck), "--findings", "pneumonia,cardiomegaly", "--limit", "8"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["checkpoint"] == str(ck) and got["box_images"] > 0
    assert set(got["readout_cnr"]) == {"report", "cls", "sentence", "feature_norm"}
    assert -1.0 <= got["prompt_dependence"]["map_correlation"] <= 1.0
    with pytest.raises(ValueError, match="no sample with a box"):
        main([str(ck), "--boxes", "demo_ms_cxr", "--prompt-images", "demo_ms_cxr", "--limit", "0"])
