"""Official-checkpoint import (safe unpickling, key mapping) and the project's own checkpoint format."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    tiny_model,
    write_vocab,
)

from afloc.checkpoint import (
    load_checkpoint,
    load_official,
    official_to_model_keys,
    read_lightning_checkpoint,
    save_checkpoint,
)
from benchmark.io.checkpoints import CheckpointError, InertRecord, safe_torch_load

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "afloc"

# --- the official key list, built from the module structure the reference note describes (§2, §3)
BERT_LAYER_SUFFIXES = [
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
    "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"]


def official_keys(n_bert_layers: int = 12) -> dict[str, tuple[int, ...]]:
    """``afloc.``-prefixed keys and shapes of the published model (ResNet-50 + BERT-base, fc = Identity)."""
    import torchvision

    keys: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        rn = torchvision.models.resnet50(weights=None)
    for k, v in rn.state_dict().items():
        if not k.startswith("fc."):
            keys[f"afloc.img_encoder.model.{k}"] = tuple(v.shape)
    keys["afloc.img_encoder.global_embedder.weight"] = (768, 2048)
    keys["afloc.img_encoder.global_embedder.bias"] = (768,)
    keys["afloc.img_encoder.local_embedder.weight"] = (768, 1024, 1, 1)
    keys["afloc.img_encoder.local2_embedder.weight"] = (768, 512, 1, 1)
    p = "afloc.text_encoder.model."
    keys[p + "embeddings.word_embeddings.weight"] = (28996, 768)
    keys[p + "embeddings.position_embeddings.weight"] = (512, 768)
    keys[p + "embeddings.token_type_embeddings.weight"] = (2, 768)
    keys[p + "embeddings.LayerNorm.weight"] = (768,)
    keys[p + "embeddings.LayerNorm.bias"] = (768,)
    keys[p + "embeddings.position_ids"] = (1, 512)
    for i in range(n_bert_layers):
        for s in BERT_LAYER_SUFFIXES:
            big = "intermediate.dense" in s and s.endswith("weight")
            out_dense = s.startswith("output.dense.weight")
            shape = (3072, 768) if big else (768, 3072) if out_dense else (3072,) if s == "intermediate.dense.bias" \
                else (768, 768) if s.endswith("weight") and "LayerNorm" not in s else (768,)
            keys[f"{p}encoder.layer.{i}.{s}"] = shape
    keys[p + "pooler.dense.weight"] = (768, 768)
    keys[p + "pooler.dense.bias"] = (768,)
    return keys


def test_official_keys_map_by_identity_onto_the_paper_model():
    from afloc import config
    from afloc.model import AFLoc

    with torch.device("meta"):
        model = AFLoc(config.paper())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    off = official_keys()
    mapped, dropped = official_to_model_keys({k: torch.empty(0) for k in off})
    assert dropped == ["afloc.text_encoder.model.embeddings.position_ids"]
    assert set(mapped) == set(ours)
    for k in mapped:
        assert ours[k] == off["afloc." + k], k


def test_lightning_file_written_with_omegaconf_2_0_5_is_read_without_omegaconf_code():
    ck = read_lightning_checkpoint(FIXTURES / "omegaconf205_lightning.ckpt")
    hp = ck.hyper_parameters
    assert hp["model"]["afloc"]["temp3"] == 10.0 and hp["model"]["text"]["last_n_layers"] == 4
    assert hp["data"]["text"]["word_num"] == 97 and hp["data"]["dataset"] == ["mimic"]
    assert hp["train"]["seeds"] == [1, 2] and hp["missing"] is None
    assert ck.meta["epoch"] == 4 and ck.meta["hparams_name"] == "cfg"
    torch.testing.assert_close(ck.state_dict["afloc.img_encoder.global_embedder.bias"], torch.arange(3.0))


def test_lightning_file_with_current_omegaconf_and_callback_class_keys(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": {"text": {"last_n_layers": 4, "aggregate_method": "sum"},
                                      "afloc": {"temp1": 4.0}}, "data": {"text": {"word_num": 97}},
                            "paths": ["a", {"b": 1}]})
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"afloc.w": torch.ones(2)}, "hyper_parameters": cfg, "hparams_type": type(cfg),
                "callbacks": {Path: {"best_model_path": Path("/x/y.ckpt")}}}, path)
    ck = read_lightning_checkpoint(path)
    assert ck.hyper_parameters == {"model": {"text": {"last_n_layers": 4, "aggregate_method": "sum"},
                                             "afloc": {"temp1": 4.0}}, "data": {"text": {"word_num": 97}},
                                   "paths": ["a", {"b": 1}]}


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle.*system"):
        safe_torch_load(path)
    assert not marker.exists()


class _BuildsDictConfig:
    def __reduce__(self):
        from omegaconf import DictConfig

        return (DictConfig, ({"a": 1},))


def test_allow_listed_classes_become_inert_records(tmp_path):
    path = tmp_path / "reduce.ckpt"
    torch.save({"state_dict": {}, "x": _BuildsDictConfig()}, path)
    raw = safe_torch_load(path)
    # the real DictConfig constructor never ran: the pickle only filled an inert record
    assert isinstance(raw["x"], InertRecord) and raw["x"].qualname == "omegaconf.dictconfig.DictConfig"
    assert raw["x"]._args == ({"a": 1},)


def test_wrong_files_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        read_lightning_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_lightning_checkpoint(tmp_path / "missing.ckpt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError,
                       match=r"expected an official AFLoc Lightning checkpoint.*'state_dict'.*weights"):
        read_lightning_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not an afloc-bench checkpoint folder"):
        load_checkpoint(tmp_path)


def _official_file(model, tmp_path: Path, drop: str | None = None, extra: dict | None = None,
                   image: dict | None = None) -> Path:
    from omegaconf import OmegaConf

    sd = {"afloc." + k: v for k, v in model.state_dict().items()}
    sd["afloc.text_encoder.model.embeddings.position_ids"] = torch.arange(128)[None]
    if drop:
        del sd[drop]
    sd.update(extra or {})
    cfg = OmegaConf.create({"phase": "pretrain",
                            "model": {"vision": {"model_name": "resnet_18"},
                                      "text": {"last_n_layers": 4, "aggregate_method": "sum", "norm": False},
                                      "afloc": {"temp1": 4.0, "temp2": 5.0, "temp3": 10.0}},
                            "data": {"text": {"word_num": 24}, **({"image": image} if image else {})}})
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": cfg, "epoch": 1}, path)
    return path


def _text_encoder_folder(model, tmp_path: Path) -> Path:
    folder = tmp_path / "bert"
    write_vocab(folder)
    model.text_encoder.model.config.to_json_file(str(folder / "config.json"))
    return folder


def test_official_import_reproduces_the_model_and_reports_key_problems(tmp_path):
    ref = tiny_model(tmp_path / "tok")
    te = _text_encoder_folder(ref, tmp_path)
    path = _official_file(ref, tmp_path)
    model, report = load_official(path, text_encoder=te)
    assert report.missing == [] and report.unexpected == []
    assert report.dropped == ["afloc.text_encoder.model.embeddings.position_ids"]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x).deep, ref.encode_image(x).deep)
        torch.testing.assert_close(model.report_embeddings(["left pleural effusion"]),
                                   ref.report_embeddings(["left pleural effusion"]))
    assert model.cfg.text.max_length == 24
    # a missing weight is an error naming it; an unexpected one is reported and ignored
    path = _official_file(ref, tmp_path, drop="afloc.img_encoder.local_embedder.weight")
    with pytest.raises(CheckpointError, match=re.escape("img_encoder.local_embedder.weight")):
        load_official(path, text_encoder=te)
    path = _official_file(ref, tmp_path, extra={"afloc.img_encoder.local_f_embedder.weight": torch.zeros(1)})
    model, report = load_official(path, text_encoder=te)
    assert report.unexpected == ["img_encoder.local_f_embedder.weight"]
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_official(path, text_encoder=None)


def test_own_format_round_trip(tmp_path):
    model = tiny_model(tmp_path / "tok")
    folder = save_checkpoint(tmp_path / "ck", model)
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "tokenizer"}
    loaded = load_checkpoint(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.tokenizer.vocab == model.tokenizer.vocab
    assert "torch" in sys.modules  # (sanity: the test did use torch)


def test_the_pathology_flag_of_an_official_file_makes_grounding_read_colour(tmp_path):
    """Official ``cfg.data.image.flag`` != 0 (``Pretrained_Path.ckpt``): ``cv2.imread(p, flag)``, channels
    as cv2 returns them (B, G, R); classification keeps the PIL RGB read of every model."""
    import cv2

    from afloc.adapter import AFLocAdapter
    from benchmark.io.images import read_image

    ref = tiny_model(tmp_path / "tok")
    te = _text_encoder_folder(ref, tmp_path)
    red = tmp_path / "red.png"
    img = np.zeros((40, 40, 3), np.uint8)
    img[..., 2] = 255  # cv2 writes B, G, R: a red file
    cv2.imwrite(str(red), img)

    def first_pixel(adapter):
        x = adapter.preprocess(read_image(str(red), adapter.decode))
        return [round(float(v), 3) for v in x[:, 20, 20]]

    chest = AFLocAdapter(text_encoder=str(te))
    chest.load(str(_official_file(ref, tmp_path)), "cpu")
    assert chest.decode == "cv2-gray" and chest.image_flag == 0
    path = _official_file(ref, tmp_path, image={"flag": 1, "imsize": 224})
    patho = AFLocAdapter(text_encoder=str(te))
    patho.load(str(path), "cpu")
    assert patho.image_flag == 1 and patho.decode == "cv2-bgr"
    assert first_pixel(patho) == [-1.0, -1.0, 1.0]  # blue, green, red: the model sees red last
    assert patho.preprocessing_id != chest.preprocessing_id  # cached apart
    rgb = AFLocAdapter(text_encoder=str(te), channels="rgb")
    rgb.load(str(path), "cpu")
    assert first_pixel(rgb) == [1.0, -1.0, -1.0]
    patho.for_task("classification")
    assert patho.decode == "pil-rgb" and first_pixel(patho) == [1.0, -1.0, -1.0]
    forced = AFLocAdapter(text_encoder=str(te), image_flag="0")
    forced.load(str(path), "cpu")
    assert forced.decode == "cv2-gray"
    with pytest.raises(ValueError, match="channels must be bgr or rgb"):
        AFLocAdapter(text_encoder=str(te), channels="gbr").load(str(path), "cpu")
