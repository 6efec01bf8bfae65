"""Grad-CAM / Grad-CAM++ / Eigen-CAM adapters on DenseNet classifiers (through the grad-cam library)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from baselines.saliency import cam
from baselines.saliency import classifiers as C
from benchmark.adapter import Query, build_adapter
from benchmark.registry import models
from benchmark.training import demo_weights

METHOD_MODELS = {"gradcam": "gradcam:densenet121", "gradcam++": "gradcam++:densenet121",
                 "eigencam": "eigencam:densenet121"}
TINY = C.ClassifierSpec(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=16, bn_size=2,
                        input_geometry="resize:64x64")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model = C.build_classifier(TINY, seed=0)
    with torch.no_grad():  # spread the BatchNorm statistics so CAMs are not degenerate
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.bias.uniform_(-0.2, 0.2)
    return C.save_classifier(model.eval(), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _adapter(name, ckpt, **options):
    a = build_adapter(name)
    a.options.update(options)
    a.load(str(ckpt), "cpu")
    return a


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(80 + 7 * i, 100), dtype=np.uint8) for i in range(n)]


PROMPTS = [Query(f"Findings suggesting {f}.", f) for f in ("Cardiomegaly", "Airspace Opacity", "Pleural Effusion")]


def test_registered_with_tags_and_capabilities():
    for name in METHOD_MODELS.values():
        entry = models.entry(name)
        assert "saliency" in entry.tags
        assert set(entry.capabilities) == {"grounding", "zeroshot_cls"}
    assert set(METHOD_MODELS.values()) <= set(models.resolve(["saliency"]))


@pytest.mark.parametrize("method", sorted(METHOD_MODELS))
def test_map_shape_and_scores(method, tiny_ckpt):
    a = _adapter(METHOD_MODELS[method], tiny_ckpt)
    assert a.input_geometry == "resize:64x64"
    batch = a.collate([a.preprocess(im) for im in _images(3)])
    assert batch.shape == (3, 3, 64, 64)
    img = a.encode_images(batch)
    txt = a.encode_texts(PROMPTS)
    assert txt.tolist() == [2, 4, 10]
    maps = a.similarity_map(img, txt)
    assert maps.shape == (3, 2, 2) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all()
    probs = a.score(img, txt, a.encode_texts([Query("no cardiomegaly", "Cardiomegaly")] * 3))
    with torch.no_grad():
        expected = torch.sigmoid(a.model(batch)).numpy()[np.arange(3), [2, 4, 10]]
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    lib = a.__class__(cam_output="library")
    lib.load(str(tiny_ckpt), "cpu")
    lmaps = lib.similarity_map(lib.encode_images(batch), txt)
    assert lmaps.shape == (3, 64, 64) and lmaps.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_batched_targets_pair_row_by_row(method, tiny_ckpt):
    a = _adapter(METHOD_MODELS[method], tiny_ckpt)
    batch = a.collate([a.preprocess(im) for im in _images(3, seed=1)])
    img, txt = a.encode_images(batch), a.encode_texts(PROMPTS)
    together = a.similarity_map(img, txt)
    alone = np.concatenate([a.similarity_map(a.take(img, [i]), a.take(txt, [i])) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)
    swapped = a.similarity_map(img, a.take(txt, [1, 2, 0]))
    assert not np.allclose(together, swapped)  # the class really changes the map


@pytest.mark.parametrize("method", sorted(METHOD_MODELS))
def test_maps_from_features_equal_the_library_on_the_whole_model(method, tiny_ckpt):
    """The adapter extracts features once per image and runs the CAM on the head alone; the maps
    are the grad-cam library's on the whole classifier, bit for bit (images repeated per class)."""
    a = _adapter(METHOD_MODELS[method], tiny_ckpt)
    batch = a.collate([a.preprocess(im) for im in _images(2, seed=4)])
    img = a.encode_images(batch)
    assert set(img) == {"features", "prob"}
    rows, classes = [0, 0, 1, 1, 1], [2, 4, 2, 10, 0]
    ours = a.similarity_map(a.take(img, rows), torch.tensor(classes))
    whole = cam.compute_cams(method, a.model, a.model.cam_layer, batch[rows], classes)
    np.testing.assert_array_equal(ours, whole)


def test_eigencam_is_class_agnostic(tiny_ckpt):
    a = _adapter("eigencam:densenet121", tiny_ckpt)
    img = a.encode_images(a.collate([a.preprocess(im) for im in _images(2)]))
    m1 = a.similarity_map(img, a.encode_texts(PROMPTS[:2]))
    m2 = a.similarity_map(img, a.encode_texts(PROMPTS[1:]))
    np.testing.assert_array_equal(m1, m2)


def test_targets_must_match_the_batch():
    model = C.build_classifier(TINY, seed=0).eval()
    with pytest.raises(ValueError, match="2 CAM targets for a batch of 3"):
        cam.compute_cams("gradcam", model, model.cam_layer, torch.randn(3, 3, 64, 64), [0, 1])


def test_unknown_finding_names_the_outputs_and_free_text_is_refused(tiny_ckpt):
    a = _adapter("gradcam:densenet121", tiny_ckpt)
    with pytest.raises(KeyError, match="Support Devices"):
        a.encode_texts([Query("Findings suggesting COVID-19.", "COVID-19")])
    with pytest.raises(ValueError, match="not free text"):
        a.encode_texts(["Findings suggesting Cardiomegaly."])  # no finding: the prompt's words are never read


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_raw_map_is_the_library_map_before_its_scaling(method):
    """library output = minmax(resize(minmax(raw))): raw mode only skips the library's normalisation."""
    model = C.build_classifier(TINY, seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    raw = cam.compute_cams(method, model, model.cam_layer, x, [3, 5], output="raw")
    lib = cam.compute_cams(method, model, model.cam_layer, x, [3, 5], output="library")

    def minmax(a):
        a = a - a.min()
        return a / (1e-7 + a.max())

    rebuilt = np.stack([minmax(cv2.resize(minmax(r), (64, 64))) for r in raw])
    np.testing.assert_allclose(lib, rebuilt, atol=1e-5)


def _manual_gradcam(features_fn, head_fn, x, cls):
    """Grad-CAM from first principles on a cloned activation (the value no later op can touch)."""
    act = features_fn(x).detach().clone().requires_grad_(True)
    logits = head_fn(act)
    logits[torch.arange(len(cls)), torch.tensor(cls)].sum().backward()
    w = act.grad.mean(dim=(2, 3))
    return torch.relu((w[:, :, None, None] * act).sum(1)).detach().numpy()


def test_inplace_relu_trap_and_the_chosen_layer():
    """torchvision's DenseNet ReLUs ``features`` in place: hooking ``features[-1]`` on CPU records the
    post-ReLU tensor with pre-ReLU gradients, unlike the unmutated activation (what a GPU copy keeps).
    Our target layer (a non-inplace ReLU after ``features``) matches its from-first-principles map."""
    import torchvision

    torch.manual_seed(0)  # a small torchvision DenseNet: same forward (in-place ReLU) as densenet121
    tv = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                                     num_classes=14).eval()
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.bias.uniform_(-0.3, 0.3)
    x = torch.randn(2, 3, 64, 64)
    cls = [2, 4]
    pool = lambda a: torch.flatten(torch.nn.functional.adaptive_avg_pool2d(a, 1), 1)  # noqa: E731

    naive = cam.compute_cams("gradcam", tv, tv.features[-1], x, cls)
    truth_norm5 = _manual_gradcam(tv.features, lambda a: tv.classifier(pool(torch.relu(a))), x, cls)
    assert np.abs(naive - truth_norm5).max() > 0.05 * np.abs(truth_norm5).max()

    ours_model = C.DenseNetClassifier(C.infer_spec(tv.state_dict()))
    ours_model.load_state_dict(tv.state_dict())
    ours_model.eval()
    ours = cam.compute_cams("gradcam", ours_model, ours_model.cam_layer, x, cls)
    truth_ours = _manual_gradcam(lambda t: torch.relu(ours_model.features(t)),
                                 lambda a: ours_model.classifier(pool(a)), x, cls)
    np.testing.assert_allclose(ours, truth_ours, rtol=1e-5, atol=1e-6)
    again = cam.compute_cams("gradcam", ours_model, ours_model.cam_layer, x, cls)
    np.testing.assert_array_equal(ours, again)
    with torch.no_grad():
        assert torch.allclose(ours_model(x), tv(x), atol=1e-5)  # same network, same outputs


def test_official_zero_shot_ensembles_name_one_output(tiny_ckpt):
    """AFLoc's CXR ensembles ("airspace opacity:mild consolidation ...") resolve to the category's output."""
    from benchmark.datasets.common import load_card
    from benchmark.prompts import classification_prompts

    a = _adapter("gradcam:densenet121", tiny_ckpt)
    card = load_card("chexlocalize")
    for task in C.LOCALIZATION_TASKS + ("Pneumonia", "Fracture"):
        pos, neg = classification_prompts(card, task)
        assert C.CHEXPERT_TASKS[int(a.encode_prompt_ensemble([Query(p, task) for p in pos])[0])] == task
        assert C.CHEXPERT_TASKS[int(a.encode_prompt_ensemble([Query(n, task) for n in neg])[0])] == task


def test_signed_cam_option_and_empty_map_count(tiny_ckpt):
    """``cam_relu=false`` keeps the signed CAM; the ReLU'd map is its positive part; empties are counted."""
    a = _adapter("gradcam:densenet121", tiny_ckpt)
    s = _adapter("gradcam:densenet121", tiny_ckpt, cam_relu="false")
    batch = a.collate([a.preprocess(im) for im in _images(3, seed=2)])
    txt = a.encode_texts(PROMPTS)
    relu_maps = a.similarity_map(a.encode_images(batch), txt)
    signed = s.similarity_map(s.encode_images(batch), txt)
    np.testing.assert_allclose(relu_maps, np.maximum(signed, 0), rtol=1e-6, atol=1e-9)
    n_empty = int((signed.reshape(3, -1).max(1) <= 0).sum())
    assert a.describe()["maps"] == {"total": 3, "all_zero": n_empty}
    assert s.describe()["cam_relu"] is False


def test_without_checkpoint_the_demo_classifier_is_used(tiny_ckpt, monkeypatch, tmp_path):
    """No --ckpt: the adapters take the cached demo classifier (the shipped one)."""

    calls = []
    C.save_classifier(C.load_classifier(tiny_ckpt)[0], tmp_path / "classifier.safetensors")

    def fake_ensure(weights_id, target, quiet=True, config="demo"):
        calls.append((weights_id, target))
        return tmp_path

    monkeypatch.setattr(demo_weights, "ensure_demo_weights", fake_ensure)
    for name in METHOD_MODELS.values():
        assert not getattr(models.get(name), "needs_checkpoint", False), name
        a = build_adapter(name)
        a.load(None, "cpu")
        assert a.checkpoint == str(tmp_path / "classifier.safetensors")
        assert a.spec.input_geometry == TINY.input_geometry
    assert calls == [("classifier-demo-2", "classifier")] * len(METHOD_MODELS)
    r = build_adapter("gradcam:densenet121")
    r.options.update(random_init="true")
    r.load(None, "cpu")  # tests only: seeded random weights, no training
    assert r.checkpoint is None and len(calls) == len(METHOD_MODELS)


def test_demo_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    """The recipe is trained into a temporary folder, renamed into place, then reused."""
    from baselines.saliency import train as classifier_train
    from benchmark import demo

    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "ensure", lambda root, **_: root)
    seen = []

    def fake_train(dataset, root, out, **kw):
        seen.append((dataset, kw))
        out = Path(out)
        model = C.build_classifier(TINY, seed=0)
        C.save_classifier(model.eval(), out / "classifier.safetensors")
        (out / "last.pt").write_bytes(b"optimizer state")
        return {}

    monkeypatch.setattr(classifier_train, "train_classifier", fake_train)
    first = demo_weights.ensure_demo_weights("classifier-demo-test", "classifier") / "classifier.safetensors"
    second = demo_weights.ensure_demo_weights("classifier-demo-test", "classifier") / "classifier.safetensors"
    assert first == second == demo_weights.demo_weights_dir("classifier-demo-test") / "classifier.safetensors"
    assert first.is_file() and not (first.parent / "last.pt").exists()
    assert len(seen) == 1 and seen[0][0] == "demo_mimic"
    assert seen[0][1]["arch"] == "tiny" and seen[0][1]["split"] == "train"
    assert not [p for p in first.parent.parent.iterdir() if ".run-" in p.name]


def test_unsupported_finding_names_the_missing_output(tiny_ckpt):
    a = _adapter("gradcam:densenet121", tiny_ckpt)
    assert a.unsupported(Query("Findings suggesting Airspace Opacity.", "Airspace Opacity")) is None
    assert a.unsupported(Query("Findings suggesting Mass.", "Mass")) is None  # CheXpert's Lung Lesion
    reason = a.unsupported(Query("Findings suggesting Fibrosis.", "Fibrosis"))
    assert "Fibrosis" in reason and "Airspace Opacity" in reason
