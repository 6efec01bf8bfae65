"""Baseline adapters (GLoRIA, BioViL, MedKLIP, ConVIRT, CheXzero) on tiny random-weight configs.

Golden outputs: every adapter is built with ``random_init`` at seed 0 on the tiny text configs
in ``tests/fixtures/baselines``; its heatmap grids and zero-shot probabilities for two fixed
images and prompts are compared with ``tests/fixtures/baselines/golden/<model>.npz``. Those files
hold this project's own outputs (regenerate deliberately with
``python tests/test_baselines_adapters.py --write`` after an intended change). Equality with the
official implementations is measured separately (docs/models.md, "Parity").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.adapter import Query

FIX = Path(__file__).parent / "fixtures" / "baselines"
GOLDEN = FIX / "golden"
WORDPIECE = FIX / "wordpiece"
BPE = FIX / "bpe"
PROMPTS = [Query("Findings suggesting pneumonia.", "Pneumonia"),
           Query("Small left pleural effusion", "Pleural Effusion")]
POS = [[Query("Atelectasis:mild subsegmental at the left lung base", "Atelectasis"),
        Query("Atelectasis:minimal bandlike", "Atelectasis")],
       [Query("Pleural Effusion:small left", "Pleural Effusion")]]
NEG = [[Query("no Atelectasis. ", "Atelectasis")], [Query("no Pleural Effusion. ", "Pleural Effusion")]]


def images() -> list[np.ndarray]:
    """Two deterministic smooth gray images of different aspect ratios."""
    out = []
    for seed, (h, w) in enumerate([(300, 260), (240, 320)]):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.sin(6 * xx + seed) * np.cos(4 * yy) + 0.3 * rng.standard_normal((h, w))
        img += 2.0 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.3 - 0.2 * seed) ** 2) / 0.02)
        out.append(np.clip((img - img.min()) / (img.max() - img.min()) * 255, 0, 255).astype(np.uint8))
    return out


def entity_descriptions(path: Path) -> Path:
    """A stand-in for MedKLIP's ``observation explanation.json`` (same keys and order, synthetic text)."""
    from baselines.medklip.model import ENTITIES

    keys = ["eumonia" if i == 20 else e for i, e in enumerate(ENTITIES)]
    path.write_text(json.dumps({k: f"the {k.replace('_', ' ')} finding seen on the chest radiograph" for k in keys}))
    return path


def build(name: str, tmp: Path):
    """The adapter ``name`` with seeded random weights and the tiny fixture configs."""
    from baselines.biovil.adapter import BioVilAdapter
    from baselines.chexzero.adapter import ChexzeroAdapter
    from baselines.convirt.adapter import ConvirtAdapter
    from baselines.gloria.adapter import GloriaAdapter
    from baselines.medklip.adapter import MedKlipAdapter

    opts = {"random_init": "true", "seed": 0, "text_encoder": str(WORDPIECE)}
    cls = {"gloria": GloriaAdapter, "gloria_dot": GloriaAdapter, "biovil": BioVilAdapter, "medklip": MedKlipAdapter,
           "convirt": ConvirtAdapter, "chexzero": ChexzeroAdapter}[name]
    if name == "gloria_dot":
        opts["heatmap"] = "dot"
    if name == "medklip":
        opts["entity_descriptions"] = str(entity_descriptions(tmp / "observation explanation.json"))
    if name == "convirt":
        opts.update(text_encoder=str(BPE), proj_dim=64)
    if name == "chexzero":
        opts = {"random_init": True, "seed": 0, "architecture": str(FIX / "clip_tiny.json")}
    a = cls(**opts)
    a.name = name
    a.load(None, "cpu")
    return a


def outputs(a, emb=None) -> dict[str, np.ndarray]:
    batch = a.collate([a.preprocess(i) for i in images()])
    emb = a.encode_images(batch) if emb is None else emb
    out = {"input_mean": np.asarray([float(batch.double().mean())])}
    if "grounding" in a.capabilities:
        out["maps"] = np.asarray(a.similarity_map(a.take(emb, [0, 1]), a.encode_texts(PROMPTS)))
    pos = a.concat([a.encode_prompt_ensemble(p) for p in POS])
    neg = a.concat([a.encode_prompt_ensemble(n) for n in NEG])
    out["scores"] = np.asarray(a.score(a.take(emb, [0, 1]), pos, neg))
    return out


MODELS = ["gloria", "gloria_dot", "biovil", "medklip", "convirt", "chexzero"]
GRID = {"gloria": (19, 19), "gloria_dot": (19, 19), "biovil": (15, 15), "medklip": (14, 14), "convirt": (7, 7)}
_CACHE: dict[str, tuple] = {}


def get(name: str, tmp_factory) -> tuple:
    """(adapter, batch, image embeddings, outputs), built once per test session (ResNet-50s are slow on CPU)."""
    if name not in _CACHE:
        if name == "gloria_dot" and "gloria" in _CACHE:  # same weights (same seed), other heatmap
            a = build("gloria", tmp_factory.mktemp(name))
            a.heatmap, a.name = "dot", "gloria_dot"
            batch, emb = _CACHE["gloria"][1], _CACHE["gloria"][2]
        else:
            a = build(name, tmp_factory.mktemp(name))
            batch = a.collate([a.preprocess(i) for i in images()])
            emb = a.encode_images(batch)
        _CACHE[name] = (a, batch, emb, outputs(a, emb))
    return _CACHE[name]


@pytest.fixture(scope="module", params=MODELS)
def model_and_outputs(request, tmp_path_factory):
    a, _, _, out = get(request.param, tmp_path_factory)
    return request.param, a, out


def test_golden_outputs_match(model_and_outputs):
    name, _, out = model_and_outputs
    ref = np.load(GOLDEN / f"{name}.npz")
    assert sorted(ref.files) == sorted(out)
    for k in ref.files:
        # atol on the array's own scale: other CPUs (AVX2 against AVX-512 kernels) move values
        # near zero by a few units of 1e-6 of the largest one, not by 1e-4 of themselves
        atol = 1e-5 * max(1e-3, float(np.abs(ref[k]).max())) if ref[k].size and ref[k].dtype.kind == "f" else 0
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=atol, err_msg=f"{name}: {k}")


def test_shapes_and_ranges(model_and_outputs):
    name, a, out = model_and_outputs
    assert out["scores"].shape == (2,)
    assert np.all((out["scores"] > 0) & (out["scores"] < 1))
    if name in GRID:
        assert out["maps"].shape == (2,) + GRID[name]
        assert np.isfinite(out["maps"]).all()
        assert np.ptp(out["maps"][0]) > 0  # the map depends on the location
    if name == "gloria":  # attention maps are distributions over the 361 regions
        np.testing.assert_allclose(out["maps"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    if name in ("biovil", "convirt"):  # cosines
        assert np.abs(out["maps"]).max() <= 1 + 1e-6
    if name == "medklip":  # head/layer-averaged attention over 196 patches
        np.testing.assert_allclose(out["maps"].sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_declared_contract(model_and_outputs):
    name, a, _ = model_and_outputs
    from benchmark.adapter import GROUNDING, ZEROSHOT_CLS

    assert a.needs_checkpoint is (name == "chexzero")  # the others default to their demo-trained model
    assert ZEROSHOT_CLS in a.capabilities
    assert (GROUNDING in a.capabilities) == (name != "chexzero")
    assert a.preprocessing_id and a.input_geometry
    expected_geometry = {"gloria": "letterbox_crop:256:224", "gloria_dot": "letterbox_crop:256:224",
                         "biovil": "resize_crop:512:480", "medklip": "resize:224x224", "convirt": "resize:224x224",
                         "chexzero": "letterbox:320"}[name]
    assert a.input_geometry == expected_geometry
    batch = a.collate([a.preprocess(i) for i in images()])
    side = {"biovil": 480}.get(name, 224)
    assert tuple(batch.shape) == (2, 3, side, side)


def test_registered_with_tags():
    from benchmark.registry import models

    for name in MODELS:
        e = models.entry(name)
        assert "vlp" in e.tags, name
    assert "clip" in models.entry("chexzero").tags
    assert models.entry("chexzero").capabilities == ("zeroshot_cls",)
    assert set(MODELS) <= set(models.resolve("vlp"))
    assert models.entry("gloria_dot").options == {"heatmap": "dot"}


def test_declared_geometries_are_understood_by_the_harness():
    from baselines.biovil.adapter import BioVilAdapter
    from baselines.chexzero.adapter import ChexzeroAdapter
    from baselines.convirt.adapter import ConvirtAdapter
    from baselines.gloria.adapter import GloriaAdapter
    from baselines.medklip.adapter import MedKlipAdapter
    from benchmark.geometry import frames as geometry

    for cls in (BioVilAdapter, ChexzeroAdapter, ConvirtAdapter, MedKlipAdapter):
        geometry.parse_geometry(cls.input_geometry)
    try:
        geometry.parse_geometry(GloriaAdapter.input_geometry)
    except ValueError:
        pytest.skip("benchmark.geometry does not parse 'letterbox_crop:N:C' (GLoRIA's frame) yet")


@pytest.mark.parametrize("name", [
    "gloria",  # the official GLoRIA path leaves BatchNorm in train mode: here it must not matter
    pytest.param("biovil", marks=pytest.mark.slow), pytest.param("medklip", marks=pytest.mark.slow),
    pytest.param("convirt", marks=pytest.mark.slow), "chexzero"])
def test_paired_rows_are_independent(name, tmp_path_factory):
    """Row i of a batch gives the same output alone as inside the batch (no batch statistics leak)."""
    a, batch, _, out = get(name, tmp_path_factory)
    single = a.encode_images(batch[1:2])
    pos = a.encode_prompt_ensemble(POS[1])
    neg = a.encode_prompt_ensemble(NEG[1])
    np.testing.assert_allclose(a.score(single, pos, neg), out["scores"][1:], rtol=1e-4, atol=1e-6)
    if name in GRID:
        m = a.similarity_map(single, a.encode_texts(PROMPTS[1:]))
        np.testing.assert_allclose(m, out["maps"][1:], rtol=1e-4, atol=1e-6)


def test_gloria_ensembles_of_different_sizes_concat(tmp_path_factory):
    a, _, emb, _ = get("gloria", tmp_path_factory)
    e1, e2 = (a.encode_prompt_ensemble(["mild edema", "edema at the base", "pulmonary edema"]),
              a.encode_prompt_ensemble(["x y"]))
    both = a.concat([e1, e2])
    assert both["valid"].tolist() == [[True, True, True], [True, False, False]]
    s = a.similarities(emb, both)
    assert torch.isinf(s[1, 1:]).all() and torch.isfinite(s[0]).all()


def test_gloria_ensemble_rows_are_taken_without_copies(tmp_path_factory):
    """The runner pairs each image with its class's ensemble by ``take``: GLoRIA keeps the ensembles
    and an index (no copy of every prompt's word embeddings per pair), and scores as on copies."""
    a, _, emb, _ = get("gloria", tmp_path_factory)
    e1, e2 = (a.encode_prompt_ensemble(["mild edema", "edema at the base", "pulmonary edema"]),
              a.encode_prompt_ensemble(["small effusion", "effusion"]))
    both = a.concat([e1, e2])
    pos, neg = a.take((both, both), [1, 0, 1])
    assert pos["ensemble"]["words"].data_ptr() == both["words"].data_ptr() and pos["index"].tolist() == [1, 0, 1]
    assert a.take(pos, [2, 0])["index"].tolist() == [1, 1]
    images = a.take(emb, [0, 1, 1])
    copied = {k: v[torch.tensor([1, 0, 1])] for k, v in both.items()}
    assert torch.equal(a.similarities(images, pos), a.similarities(images, copied))
    np.testing.assert_array_equal(a.score(images, pos, neg), a.score(images, copied, copied))


def test_medklip_finding_mapping_and_free_text(tmp_path_factory):
    """The entity comes from the query's finding, never from the prompt's words; a query without a
    finding MedKLIP knows is an extra free-text query."""
    from baselines.medklip.adapter import ENTITY_OF, EXTRA
    from baselines.medklip.model import ENTITIES
    from benchmark.adapter import Query
    from benchmark.pathologies import CANONICAL

    assert set(ENTITY_OF) <= set(CANONICAL) and set(ENTITY_OF.values()) <= set(ENTITIES)
    assert ENTITY_OF["Pleural Effusion"] == "effusion" and ENTITY_OF["Enlarged Cardiomediastinum"] == "enlarge"
    a, _, mem, _ = get("medklip", tmp_path_factory)
    t = a.encode_texts([Query("Findings suggesting pneumonia.", "Pneumonia"), Query("a cavitating thing"),
                        Query("Small left effusion. Mild cardiomegaly", "Pleural Effusion")])
    assert t["weights"][0, ENTITIES.index("pneumonia")] == 1 and t["weights"][0].sum() == 1
    assert t["weights"][1, EXTRA] == 1 and t["extra"][1].abs().sum() > 0
    assert t["weights"][2, ENTITIES.index("effusion")] == 1 and t["weights"][2].sum() == 1  # cardiomegaly not read
    maps = a.similarity_map(mem, {k: v[:2] for k, v in t.items()})
    # the free-text query does not change the 75 standard outputs: the mapped row equals a lone run
    alone = a.similarity_map(mem[:1], a.encode_texts([Query("Findings suggesting pneumonia.", "Pneumonia")]))
    np.testing.assert_allclose(maps[:1], alone, rtol=1e-5)
    a.free_text = False
    try:
        with pytest.raises(ValueError, match="has no MedKLIP entity"):
            a.encode_texts([Query("a cavitating thing", "COVID-19")])
    finally:
        a.free_text = True


def test_chexzero_uses_its_own_pair_for_the_finding(tmp_path_factory):
    a, _, emb, _ = get("chexzero", tmp_path_factory)
    pos = a.concat([a.encode_prompt_ensemble([Query("Edema:mild", "Edema")])] * 2)
    neg = a.concat([a.encode_prompt_ensemble([Query("no Edema. ", "Edema")])] * 2)
    cz = a.score(emb, pos, neg)
    # CheXzero's own pair: softmax of cos(image, "Edema") and cos(image, "no Edema")
    t = a.encode_texts(["Edema", "no Edema"])
    cos = (emb @ t.T).double()
    expected = torch.softmax(cos, dim=1)[:, 0].numpy()
    np.testing.assert_allclose(cz, expected, rtol=1e-5)
    a.style = "given"
    try:
        assert not np.allclose(a.score(emb, pos, neg), cz)
    finally:
        a.style = "chexzero"


def test_biovil_rejects_special_tokens(tmp_path_factory):
    a = get("biovil", tmp_path_factory)[0]
    with pytest.raises(ValueError, match="special token"):
        a.encode_texts(["pneumonia [SEP] effusion"])
    # [MASK] is allowed, trailing punctuation is stripped
    e1, e2 = a.encode_texts(["left effusion [MASK]", "left effusion!?."]), a.encode_texts(["left effusion"])
    np.testing.assert_allclose(e1[1].numpy(), e2[0].numpy(), rtol=1e-4, atol=1e-6)


def _write_golden() -> None:  # pragma: no cover - run by hand
    import tempfile

    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for name in MODELS:
            out = outputs(build(name, Path(d)))
            np.savez(GOLDEN / f"{name}.npz", **out)
            print(name, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        _write_golden()


def test_medklip_decodes_an_image_paired_with_several_prompts_once():
    """Consecutive equal memory rows (one image, several prompts) are decoded once and spread back:
    the same probabilities and attention as decoding every row, and one decoder row per image."""
    import torch

    from baselines.medklip.adapter import _consecutive_unique_rows
    from benchmark.adapter import build_adapter

    a = build_adapter("medklip")
    a.load(None, "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        mem = a.encode_images(torch.randn(4, 3, 224, 224))
    idx = torch.tensor([0, 0, 0, 1, 2, 2, 3, 0])
    unique, group = _consecutive_unique_rows(mem[idx])
    assert unique.shape[0] == 5 and group.tolist() == [0, 0, 0, 1, 2, 2, 3, 4]
    assert _consecutive_unique_rows(mem)[1] is None
    seen = []
    real = a.model.decode
    a.model.decode = lambda m, q: seen.append(m.shape[0]) or real(m, q)
    text = a.encode_texts([Query("pneumonia", "Pneumonia")] * len(idx))
    prob, attn = a._decode(mem[idx], text)
    assert seen == [5]
    with torch.no_grad():
        logits, at = real(mem[idx], a.entity_book)
    assert torch.equal(prob[:, :75], torch.softmax(logits, dim=-1)[..., 1].double())
    assert torch.equal(attn[:, :75], at.double())
