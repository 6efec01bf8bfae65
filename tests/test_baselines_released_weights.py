"""The released baseline checkpoints load with a clean key report (``paper`` marker: needs the files).

Set ``AFLOC_BENCH_WEIGHTS`` to a folder holding any of (names as published):
``chexpert_resnet50.ckpt`` and ``Bio_ClinicalBERT/`` (GLoRIA; MedKLIP also needs
``checkpoint_final.pth`` and ``observation explanation.json``),
``biovil_image_resnet50_proj_size_128.pt`` and ``BiomedVLP-CXR-BERT-specialized/`` (BioViL),
``convirt-mimic/`` (ViLMedic zoo folder) and ``biomed_roberta_base/`` (ConVIRT),
``chexzero.pt`` (any CheXzero checkpoint, renamed). Missing files skip their test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.paper
ROOT = Path(os.environ.get("AFLOC_BENCH_WEIGHTS", "/nonexistent"))

CASES = {
    "gloria": ("chexpert_resnet50.ckpt", {"text_encoder": "Bio_ClinicalBERT"}),
    "biovil": ("biovil_image_resnet50_proj_size_128.pt", {"text_encoder": "BiomedVLP-CXR-BERT-specialized"}),
    "medklip": ("checkpoint_final.pth", {"text_encoder": "Bio_ClinicalBERT",
                                         "entity_descriptions": "observation explanation.json"}),
    "convirt": ("convirt-mimic", {"text_encoder": "biomed_roberta_base"}),
    "chexzero": ("chexzero.pt", {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_released_checkpoint_loads_cleanly(name):
    from benchmark.adapter import build_adapter

    ckpt, opts = CASES[name]
    needed = [ROOT / ckpt] + [ROOT / v for v in opts.values()]
    if not all(p.exists() for p in needed):
        pytest.skip(f"{name}: needs {', '.join(str(p) for p in needed)}")
    a = build_adapter(name)
    a.options.update({k: str(ROOT / v) for k, v in opts.items()})
    a.load(str(ROOT / ckpt), "cpu")
    assert a.key_report is not None and a.key_report.ok, a.key_report.summary()
    img = (np.random.default_rng(0).random((512, 480)) * 255).astype(np.uint8)
    emb = a.encode_images(a.collate([a.preprocess(img)]))
    pos, neg = (a.encode_prompt_ensemble(["Findings suggesting pneumonia."]),
                a.encode_prompt_ensemble(["no pneumonia. "]))
    p = a.score(emb, pos, neg)
    assert np.isfinite(p).all() and 0 <= float(p[0]) <= 1
    if "grounding" in a.capabilities:
        assert np.isfinite(a.similarity_map(emb, a.encode_texts(["Findings suggesting pneumonia."]))).all()
