"""Single-label (softmax) zero-shot classification, as the official pathology evaluation scores it:
one sample per (patch, class), each class's logit softmaxed over the patch's classes, balanced
accuracy of the argmax; models without class logits are skipped and counted, never scored."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_datasets_formats import write_sicap

from benchmark.cli.main import main


@pytest.fixture(scope="module")
def sicap_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("softmax")
    write_sicap(base / "sicapv2")
    out = base / "run"
    rc = main(["-q", "run", "--models", "afloc,random,uniform,medklip", "--datasets", "sicapv2",
               "--data-root", str(base / "{dataset}"), "--n-boot", "50", "--num-workers", "0", "--no-cache",
               "-o", str(out)])
    assert rc == 0
    return base, out, json.loads((out / "results.json").read_text())


def _cls(out, model):
    s = pd.read_parquet(out / "samples" / f"sicapv2__{model}.parquet")
    return s[s.task == "classification"].reset_index(drop=True)


def _ba(rows):
    return [r for r in rows if r["task"] == "classification" and r["metric"] == "balanced_accuracy"]


def test_every_patch_is_scored_over_its_four_classes(sicap_run):
    _, out, res = sicap_run
    for model in ("afloc", "random", "uniform"):
        rec = _cls(out, model)
        assert len(rec) == 16 and rec.groupby("image_id").size().eq(4).all()
        np.testing.assert_allclose(rec.groupby("image_id")["score"].sum(), 1.0, rtol=1e-12)
        ba = _ba(res["results"]["sicapv2"][model])
        assert len(ba) == 1 and ba[0]["n"] == 4  # every patch, none left out for a missing class score
        # the protocol's balanced accuracy is that of the argmax of the class logits
        from sklearn.metrics import balanced_accuracy_score

        truth = rec[rec.label == 1].set_index("image_id")["category"]
        best = rec.loc[rec.groupby("image_id")["logit"].idxmax()].set_index("image_id")["category"]
        assert ba[0]["point"] == pytest.approx(balanced_accuracy_score(truth, best[truth.index]), abs=1e-4)
    # tied logits: the argmax is the first class (Non-cancerous), right for 1 of the 4 classes
    assert _ba(res["results"]["sicapv2"]["uniform"])[0]["point"] == pytest.approx(0.25)
    assert res["protocol"]["id"].startswith("afloc-compat")


def test_a_model_without_class_logits_is_skipped_and_counted(sicap_run):
    _, out, res = sicap_run
    assert not _ba(res["results"]["sicapv2"]["medklip"])
    pair = json.loads((out / "pairs" / "sicapv2__medklip.json").read_text())
    reasons = [s["reason"] for s in pair["run_skipped"]]
    assert pair["n_run_skipped"] >= 16 and sum("class logits" in r for r in reasons) == 16
    assert pair["protocol_params"].get("classification", {}).get("softmax") is None  # nothing scored
    assert json.loads((out / "pairs" / "sicapv2__afloc.json").read_text())["protocol_params"][
        "classification"]["softmax"] is True


def test_afloc_probabilities_are_the_official_softmax_over_class_embeddings(sicap_run):
    """Official: ``fc`` weights = each class's mean raw prompt embedding, logits = raw dot products
    with the global image embedding, softmax over the classes."""
    import torch

    from benchmark.adapter import Query, build_adapter
    from benchmark.datasets.common import load_card
    from benchmark.io.images import read_image
    from benchmark.prompts import classification_prompts

    base, out, _ = sicap_run
    rec = _cls(out, "afloc")
    card = load_card("sicapv2")
    adapter = build_adapter("afloc", "pathology")  # what the run took on SICAPv2: the pathology demo weights
    adapter.load(None, "cpu")
    adapter.for_task("classification")
    cats = list(rec.category.unique())
    paths = list(dict.fromkeys(rec.sort_values("image_id").image_id))
    files = {p.stem: p for p in (base / "sicapv2" / "images").iterdir()}
    batch = adapter.collate([adapter.preprocess(read_image(str(files[i]), adapter.decode)) for i in paths])
    g = adapter.encode_images(batch)["global"].double()
    w = torch.stack([torch.as_tensor(np.asarray(adapter.encode_prompt_ensemble(
        [Query(t, c) for t in classification_prompts(card, c)[0]]))).reshape(-1) for c in cats]).double()
    probs = torch.softmax(g @ w.t(), dim=1).numpy()
    got = rec.pivot(index="image_id", columns="category", values="score").loc[paths, cats].to_numpy()
    np.testing.assert_allclose(got, probs, rtol=1e-4, atol=1e-6)
