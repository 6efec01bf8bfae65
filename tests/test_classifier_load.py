"""DenseNet classifier checkpoints of every supported layout load into one module, with a key report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.saliency import classifiers as C
from benchmark.dataset import DataError


@pytest.fixture(scope="module")
def torchvision_densenet():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    # non-trivial BatchNorm statistics so that loading mistakes show in the outputs
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _same_logits(a, b, x):
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_torchvision_state_dict_with_prefix(tmp_path, torchvision_densenet):
    sd = {"module.model." + k: v for k, v in torchvision_densenet.state_dict().items()}
    path = tmp_path / "tv.pt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    model, report = C.load_classifier(path)
    assert report.prefix_stripped == "module.model."
    assert report.missing == [] and report.unexpected == []
    assert model.labels == list(C.CHEXPERT_TASKS)
    assert model.spec.in_channels == 3 and model.spec.block_config == (6, 12, 24, 16)
    assert _same_logits(model, torchvision_densenet, torch.randn(2, 3, 64, 64))


def test_chexnet_style_head_and_old_layer_names(tmp_path, torchvision_densenet):
    """CheXNet-style files: ``densenet121.`` prefix, ``norm.1`` names, ``classifier.0`` head."""
    sd = {}
    for k, v in torchvision_densenet.state_dict().items():
        k = k.replace("norm1", "norm.1").replace("conv1", "conv.1").replace("norm2", "norm.2").replace(
            "conv2", "conv.2").replace("relu1", "relu.1")
        k = k.replace("classifier.", "classifier.0.")
        sd["module.densenet121." + k] = v
    path = tmp_path / "chexnet.pth.tar"
    torch.save({"state_dict": sd}, path)
    model, report = C.load_classifier(path)
    assert report.prefix_stripped == "module.densenet121."
    assert report.renamed > 0 and report.missing == []
    assert _same_logits(model, torchvision_densenet, torch.randn(1, 3, 64, 64))


def test_missing_head_is_an_error_naming_the_keys(tmp_path, torchvision_densenet):
    sd = {k: v for k, v in torchvision_densenet.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "nohead.pt"
    torch.save(sd, path)
    with pytest.raises(DataError, match="classifier.weight"):
        C.load_classifier(path)


def test_unexpected_keys_are_reported(tmp_path, torchvision_densenet):
    sd = dict(torchvision_densenet.state_dict())
    sd["features.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    _, report = C.load_classifier(path)
    assert report.unexpected == ["features.extra.weight"]
    assert "1 unexpected: features.extra.weight" in report.summary()


@pytest.fixture(scope="module")
def xrv_densenet():
    import torchxrayvision as xrv

    torch.manual_seed(1)
    return xrv.models.DenseNet(weights=None).eval()


def test_torchxrayvision_state_dict(tmp_path, xrv_densenet):
    path = tmp_path / "xrv_sd.pt"
    torch.save(xrv_densenet.state_dict(), path)
    model, report = C.load_classifier(path, xrv_weights="densenet121-res224-all")
    assert report.missing == []
    assert model.spec.in_channels == 1 and model.spec.normalization == "xrv"
    assert model.spec.input_geometry == "resize_crop:224:224"
    assert len(model.labels) == 18 and "Lung Opacity" in model.labels
    assert _same_logits(model, xrv_densenet, torch.randn(2, 1, 64, 64) * 500)


def test_torchxrayvision_pickled_model_is_read_without_its_classes(tmp_path, xrv_densenet):
    """torchxrayvision's weight files are ``torch.save(model)``: read through inert stand-ins."""
    path = tmp_path / "xrv_full.pt"
    torch.save(xrv_densenet, path)
    model, report = C.load_classifier(path)
    assert report.source_format.startswith("torchxrayvision pickled model")
    assert report.missing == [] and report.unexpected == []
    assert model.labels == list(xrv_densenet.targets)
    assert _same_logits(model, xrv_densenet, torch.randn(1, 1, 64, 64) * 500)


class NotAModule:
    pass


def test_pickles_of_other_classes_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": NotAModule()}, path)
    with pytest.raises(DataError, match=r"outside the allow-list \(test_classifier_load.NotAModule\)"):
        C.load_classifier(path)


def test_afloc_bench_format_round_trip(tmp_path):
    spec = C.ClassifierSpec(labels=["Cardiomegaly", "Edema"], growth_rate=8, block_config=(1, 1, 1, 1),
                            num_init_features=16, bn_size=2, input_geometry="resize:64x64")
    model = C.build_classifier(spec, seed=3).eval()
    path = C.save_classifier(model, tmp_path / "c.pt", note="unit test")
    back, report = C.load_classifier(path)
    assert report.source_format == "afloc-bench classifier"
    assert back.spec == spec
    assert _same_logits(back, model, torch.randn(2, 3, 64, 64))


def test_seeded_random_classifier_is_reproducible():
    spec = C.ClassifierSpec(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=16, bn_size=2)
    a, b = C.build_classifier(spec, seed=5), C.build_classifier(spec, seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("finding,expected", [
    ("Airspace Opacity", "Airspace Opacity"),
    ("Enlarged Cardiomediastinum", "Enlarged Cardiomediastinum"),
    ("Pleural Effusion", "Pleural Effusion"),
    ("Lung Opacity", "Airspace Opacity"),
    ("Support Devices", "Support Devices"),
])
def test_finding_names_the_chexpert_output(finding, expected):
    assert C.CHEXPERT_TASKS[C.label_index(finding, C.CHEXPERT_TASKS)] == expected


def test_finding_mapping_on_torchxrayvision_names():
    import torchxrayvision as xrv

    labels = list(xrv.datasets.default_pathologies)
    assert labels[C.label_index("Airspace Opacity", labels)] == "Lung Opacity"
    assert labels[C.label_index("Pleural Effusion", labels)] == "Effusion"
    with pytest.raises(KeyError, match="no classifier output answers 'Support Devices'"):
        C.label_index("Support Devices", labels)
    # a classifier with its own Mass / Nodule / Infiltration outputs keeps them
    assert labels[C.label_index("Mass", labels)] == "Mass"
    assert labels[C.label_index("Nodule", labels)] == "Nodule"
    assert labels[C.label_index("Infiltration", labels)] == "Infiltration"


@pytest.mark.parametrize("finding,expected", [
    ("Mass", "Lung Lesion"),
    ("Nodule", "Lung Lesion"),
    ("Infiltration", "Airspace Opacity"),
])
def test_nih_names_fall_back_to_the_chexpert_observation(finding, expected):
    """CheXpert's labeler counts masses and nodules as Lung Lesion, infiltrates as Airspace Opacity."""
    assert C.CHEXPERT_TASKS[C.label_index(finding, C.CHEXPERT_TASKS)] == expected
    with pytest.raises(KeyError, match="no classifier output answers"):
        C.label_index(finding, ["Cardiomegaly", "Edema"])


def test_input_normalisation():
    frame = np.full((8, 8), 255, np.uint8)
    x = C.to_input_tensor(frame, C.ClassifierSpec())
    assert x.shape == (3, 8, 8)
    assert np.allclose(x[:, 0, 0].numpy(), (1 - np.array(C.IMAGENET_MEAN)) / np.array(C.IMAGENET_STD), atol=1e-6)
    xr = C.to_input_tensor(frame, C.ClassifierSpec(in_channels=1, normalization="xrv"))
    assert xr.shape == (1, 8, 8) and float(xr.max()) == pytest.approx(1024.0)
