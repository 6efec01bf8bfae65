"""Checkpoint import of the baselines: official file layouts load with a key report, wrong or unsafe
files fail with an error naming the file, and no pickled code ever runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

FIX = Path(__file__).parent / "fixtures" / "baselines"
WORDPIECE = FIX / "wordpiece"
BPE = FIX / "bpe"


def _adapter(name: str, **opts):
    from baselines.biovil.adapter import BioVilAdapter
    from baselines.chexzero.adapter import ChexzeroAdapter
    from baselines.convirt.adapter import ConvirtAdapter
    from baselines.gloria.adapter import GloriaAdapter
    from baselines.medklip.adapter import MedKlipAdapter

    cls = {"gloria": GloriaAdapter, "biovil": BioVilAdapter, "medklip": MedKlipAdapter, "convirt": ConvirtAdapter,
           "chexzero": ChexzeroAdapter}[name]
    a = cls(**opts)
    a.name = name
    return a


def _descriptions(tmp: Path) -> str:
    from baselines.medklip.model import ENTITIES

    p = tmp / "observation explanation.json"
    p.write_text(json.dumps({("eumonia" if i == 20 else e): f"about {e}" for i, e in enumerate(ENTITIES)}))
    return str(p)


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class _Evil:
    """Unpickling this runs ``os.system`` — it must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- refusing unsafe files -------------------------------------------------------------------
def test_malicious_pickle_is_refused_everywhere(tmp_path):
    from benchmark.io.checkpoints import CheckpointError, load_lightning_checkpoint, safe_torch_load

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"gloria.x": torch.zeros(1)}, "hyper_parameters": _Evil(marker)}, bad)
    with pytest.raises(CheckpointError, match=r"refus\w+ to unpickle.*system"):
        load_lightning_checkpoint(bad)
    with pytest.raises(CheckpointError, match=r"refus\w+ to unpickle"):
        safe_torch_load(bad)
    a = _adapter("gloria", text_encoder=str(WORDPIECE))
    with pytest.raises(CheckpointError, match=str(bad)):
        a.load(str(bad), "cpu")
    assert not marker.exists()


def test_lightning_checkpoint_pickled_by_omegaconf_2_0_5_is_read_as_plain_data():
    """The fixture was written by torch.save of a Lightning-1.1-style dict whose hyper_parameters is an
    omegaconf 2.0.5 DictConfig of GLoRIA's repository config, with callback classes as keys."""
    from benchmark.io.checkpoints import load_lightning_checkpoint

    ck = load_lightning_checkpoint(FIX / "lightning_omegaconf205.ckpt")
    hp = ck["hyper_parameters"]
    assert type(hp) is dict and type(hp["model"]["text"]) is dict
    assert hp["data"]["text"]["word_num"] == 97 and hp["data"]["image"]["imsize"] == 256
    assert hp["transforms"] == {"norm": "half", "random_crop": {"crop_size": 224}}
    assert hp["model"]["gloria"]["temp1"] == 4.0 and hp["model"]["vision"]["model_name"] == "resnet_50"
    assert sorted(ck["callbacks"]) == ["pytorch_lightning.callbacks.early_stopping.EarlyStopping",
                                       "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    assert list(ck["state_dict"]) == ["gloria.img_encoder.global_embedder.bias"]
    assert ck["optimizer_states"][0]["param_groups"][0]["betas"] == (0.5, 0.999)


def test_lightning_checkpoint_from_current_omegaconf(tmp_path):
    import omegaconf

    from benchmark.io.checkpoints import load_lightning_checkpoint

    cfg = omegaconf.OmegaConf.create({"data": {"text": {"word_num": 50}, "image": {"imsize": 128}},
                                      "model": {"text": {"last_n_layers": 4}}, "lst": [1, "a", None]})
    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"gloria.a": torch.ones(1)}, "hyper_parameters": cfg, "hparams_type": type(cfg)}, p)
    hp = load_lightning_checkpoint(p)["hyper_parameters"]
    assert hp == {"data": {"text": {"word_num": 50}, "image": {"imsize": 128}}, "model": {"text": {"last_n_layers": 4}},
                  "lst": [1, "a", None]}


# -- missing and wrong files -------------------------------------------------------------------
@pytest.mark.parametrize("name,fname", [("gloria", "chexpert_resnet50.ckpt"),
                                        ("biovil", "biovil_image_resnet50_proj_size_128.pt"),
                                        ("medklip", "checkpoint_final.pth"), ("convirt", "convirt-mimic"),
                                        ("chexzero", "CheXzero")])
def test_no_checkpoint_names_the_file_and_where_it_is_published(name, fname, tmp_path):
    from benchmark.io.checkpoints import CheckpointError

    opts = {"text_encoder": str(BPE if name == "convirt" else WORDPIECE)}
    if name == "medklip":
        opts["entity_descriptions"] = _descriptions(tmp_path)
    a = _adapter(name, **opts)
    # the four re-implemented baselines fall back to their demo-trained model without --ckpt
    # (tests/test_baselines_train_*.py); CheXzero has no training objective and needs its file
    assert a.needs_checkpoint is (name == "chexzero")
    if a.needs_checkpoint:
        with pytest.raises(CheckpointError) as err:
            a.load(None, "cpu")
        msg = str(err.value)
        assert fname in msg and ("http" in msg or "Drive" in msg) and "published" in msg
    else:
        assert fname in a.checkpoint_name and ("http" in a.checkpoint_url or "Drive" in a.checkpoint_url)
    with pytest.raises(CheckpointError, match="not found"):
        a.load(str(tmp_path / "nope.pt"), "cpu")


def test_text_folder_errors_say_what_is_missing(tmp_path):
    from benchmark.io.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="text_encoder"):
        _adapter("gloria", random_init=True).load(None, "cpu")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="vocab.txt"):
        _adapter("gloria", random_init=True, text_encoder=str(tmp_path)).load(None, "cpu")


@pytest.fixture(scope="module")
def gloria_source():
    """A random GLoRIA adapter (tiny BERT) whose weights the tests save in official layouts."""
    a = _adapter("gloria", random_init=True, seed=3, text_encoder=str(WORDPIECE))
    a.load(None, "cpu")
    return a


def test_gloria_official_layout_round_trip_and_key_report(gloria_source, tmp_path):
    from benchmark.io.checkpoints import CheckpointError

    sd = {f"gloria.{k}": v for k, v in gloria_source.model.state_dict().items()}
    sd["gloria.text_encoder.model.embeddings.position_ids"] = torch.arange(128)[None]  # saved by old transformers
    hp = {"data": {"text": {"word_num": 97}, "image": {"imsize": 256}},
          "transforms": {"norm": "half", "random_crop": {"crop_size": 224}}}
    good = tmp_path / "gloria.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": hp, "epoch": 1}, good)
    a = _adapter("gloria", text_encoder=str(WORDPIECE))
    a.load(str(good), "cpu")
    _same_weights(a.model, gloria_source.model)
    rep = a.key_report
    assert rep.ok and rep.ignored == ["text_encoder.model.embeddings.position_ids"]
    assert rep.loaded == len(gloria_source.model.state_dict())
    assert a.describe()["key_report"]["missing"] == []

    missing = dict(sd)
    del missing["gloria.img_encoder.local_embedder.weight"]
    extra = dict(sd, **{"gloria.img_encoder.model.fc.weight": torch.zeros(3, 2048)})
    for variant, pattern in ((missing, r"missing \(1\): img_encoder\.local_embedder\.weight"),
                             (extra, r"unexpected \(1\): img_encoder\.model\.fc\.weight")):
        p = tmp_path / "variant.ckpt"
        torch.save({"state_dict": variant, "hyper_parameters": hp}, p)
        with pytest.raises(CheckpointError, match=pattern):
            _adapter("gloria", text_encoder=str(WORDPIECE)).load(str(p), "cpu")


def test_gloria_reads_inference_settings_from_hyper_parameters(gloria_source, tmp_path):
    sd = {f"gloria.{k}": v for k, v in gloria_source.model.state_dict().items()}
    hp = {"data": {"text": {"word_num": 64}, "image": {"imsize": 320}},
          "transforms": {"norm": "imagenet", "random_crop": {"crop_size": 288}}}
    p = tmp_path / "g.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": hp}, p)
    a = _adapter("gloria", text_encoder=str(WORDPIECE))
    a.load(str(p), "cpu")
    assert (a.cfg.word_num, a.cfg.imsize, a.cfg.crop_size, a.cfg.img_norm) == (64, 320, 288, "imagenet")
    assert a.input_geometry == "letterbox_crop:320:288" and "320" in a.preprocessing_id
    import numpy as np

    assert tuple(a.preprocess(np.zeros((400, 300), np.uint8)).shape) == (3, 288, 288)


def test_wrong_file_is_refused_with_what_was_expected(gloria_source, tmp_path):
    from benchmark.io.checkpoints import CheckpointError

    p = tmp_path / "gloria_as_biovil.pt"
    torch.save(gloria_source.model.state_dict(), p)
    with pytest.raises(CheckpointError, match=r"expected the BioViL image model.*only \d+ of 328"):
        _adapter("biovil", text_encoder=str(WORDPIECE)).load(str(p), "cpu")
    with pytest.raises(CheckpointError, match="expected a GLoRIA Lightning checkpoint with a 'state_dict'"):
        _adapter("gloria", text_encoder=str(WORDPIECE)).load(str(p), "cpu")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        _adapter("medklip", text_encoder=str(WORDPIECE),
                 entity_descriptions=_descriptions(tmp_path)).load(str(text), "cpu")


@pytest.mark.slow
def test_biovil_plain_state_dict_and_cxr_bert_folder(tmp_path):
    src = _adapter("biovil", random_init=True, seed=5, text_encoder=str(WORDPIECE))
    src.load(None, "cpu")
    img = tmp_path / "biovil_image_resnet50_proj_size_128.pt"
    torch.save(src.model.state_dict(), img)
    folder = tmp_path / "cxr-bert"
    folder.mkdir()
    for f in ("vocab.txt", "config.json"):
        (folder / f).write_text((WORDPIECE / f).read_text())
    tsd = dict(src.text_model.state_dict())
    hidden = src.text_model.config.hidden_size
    tsd.update({"cls.predictions.bias": torch.zeros(186),
                "cls.predictions.transform.dense.weight": torch.zeros(hidden, hidden),
                "bert.embeddings.position_ids": torch.arange(128)[None]})  # the released file's MLM head
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tsd.items()}, str(folder / "model.safetensors"))
    a = _adapter("biovil", text_encoder=str(folder))
    a.load(str(img), "cpu")
    _same_weights(a.model, src.model)
    _same_weights(a.text_model, src.text_model)
    assert a.key_report.ok and a.key_report.ignored == []
    assert sorted(a.text_key_report.ignored) == ["bert.embeddings.position_ids", "cls.predictions.bias",
                                                 "cls.predictions.transform.dense.weight"]


def test_medklip_module_prefix_under_model(tmp_path):
    desc = _descriptions(tmp_path)
    src = _adapter("medklip", random_init=True, seed=4, text_encoder=str(WORDPIECE), entity_descriptions=desc)
    src.load(None, "cpu")
    p = tmp_path / "checkpoint_final.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.model.state_dict().items()}, "epoch": 99,
                "config": {"d_model": 256}}, p)
    folder = tmp_path / "bio_clinical"
    folder.mkdir()
    for f in ("vocab.txt", "config.json"):
        (folder / f).write_text((WORDPIECE / f).read_text())
    torch.save({f"bert.{k}": v for k, v in src.bert.state_dict().items()}, folder / "pytorch_model.bin")
    a = _adapter("medklip", text_encoder=str(folder), entity_descriptions=desc)
    a.load(str(p), "cpu")
    _same_weights(a.model, src.model)
    assert torch.equal(a.entity_book, src.entity_book) and a.describe()["entity_book_sha256"] == src.entity_book_sha
    assert a.key_report.ok and a.key_report.loaded == 342


def test_medklip_descriptions_file_is_checked(tmp_path):
    from baselines.medklip.model import read_descriptions
    from benchmark.io.checkpoints import CheckpointError

    p = tmp_path / "d.json"
    p.write_text(json.dumps({"normal": "x"}))
    with pytest.raises(CheckpointError, match="75 entity"):
        read_descriptions(p)
    good = json.loads(Path(_descriptions(tmp_path)).read_text())
    keys = list(good)
    keys[8], keys[9] = keys[9], keys[8]
    p.write_text(json.dumps({k: good[k] for k in keys}))
    with pytest.raises(CheckpointError, match="position 8 is 'opacity'"):
        read_descriptions(p)


@pytest.mark.slow
def test_convirt_project_format_and_vilmedic_zoo_format(tmp_path):
    from baselines.convirt.model import save_checkpoint

    src = _adapter("convirt", random_init=True, seed=6, text_encoder=str(BPE), proj_dim=48)
    src.load(None, "cpu")
    save_checkpoint(src.model, tmp_path / "trained")
    a = _adapter("convirt", text_encoder=str(BPE))
    a.load(str(tmp_path / "trained"), "cpu")
    _same_weights(a.model, src.model)
    assert a.cfg.proj_dim == 48 and a.key_report.ok

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    sd = {k.replace("visual.model.", "visual.cnn."): v for k, v in src.model.state_dict().items()}
    torch.save({"model": sd}, zoo / "convirt.pth")
    (zoo / "config.yml").write_text("model:\n  projection:\n    projection_dim: 48\n  loss:\n    tau: 0.2\n"
                                    "dataset:\n  seq:\n    tokenizer_max_len: 64\n    processing: r2gen_clean_report\n")
    b = _adapter("convirt", text_encoder=str(BPE))
    b.load(str(zoo / "convirt.pth"), "cpu")
    _same_weights(b.model, src.model)
    assert (b.cfg.tau, b.cfg.max_length, b.cfg.text_processing, b.cfg.add_special_tokens) == (0.2, 64, "r2gen", False)


def test_convirt_reads_a_file_written_by_vilmedics_own_trainer(tmp_path):
    """ViLMedic's ``CheckpointSaver`` pickles the model state (``module.`` keys after a multi-GPU run),
    the optimizer, its TrainingScheduler (with ``operator.gt``), the GradScaler and the OmegaConf
    config; the adapter reads it without running pickled code and takes the settings from the config."""
    import operator

    from omegaconf import OmegaConf

    src = _adapter("convirt", random_init=True, seed=4, text_encoder=str(BPE), proj_dim=40)
    src.load(None, "cpu")
    sd = {"module." + k.replace("visual.model.", "visual.cnn."): v for k, v in src.model.state_dict().items()}
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    config = OmegaConf.create({"name": "convirt", "model": {"proto": "ConVIRT", "projection": {"projection_dim": 40},
                                                          "loss": {"proto": "ConVIRTLoss", "tau": 0.3}},
                               "dataset": {"seq": {"tokenizer_max_len": 96}}})
    state = {"model": sd, "optimizer": opt.state_dict(),
             "training_scheduler": {"epoch": 3, "early_stop": 0, "metric_comp_func": operator.gt, "mode": "max",
                                    "current_best_metric": 0.41, "scheduler": sched.state_dict()},
             "config": config, "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
             "__version__": "1.3.2"}
    path = tmp_path / "0.41_3_0.pth"
    torch.save(state, path)
    b = _adapter("convirt", text_encoder=str(BPE))
    b.load(str(path), "cpu")
    _same_weights(b.model, src.model)
    assert b.key_report.ok and (b.cfg.proj_dim, b.cfg.tau, b.cfg.max_length) == (40, 0.3, 96)


def test_chexzero_openai_state_dict_with_metadata_entries(tmp_path):
    src = _adapter("chexzero", random_init=True, seed=7, architecture=str(FIX / "clip_tiny.json"))
    src.load(None, "cpu")
    sd = dict(src.model.state_dict())
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    p = tmp_path / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(sd, p)
    a = _adapter("chexzero", architecture=str(FIX / "clip_tiny.json"))
    a.load(str(p), "cpu")
    _same_weights(a.model, src.model)
    assert a.key_report.ok


def test_key_report_summary_lists_names():
    from benchmark.io.checkpoints import KeyReport

    r = KeyReport("f.pt", "x", n_module=3, n_file=3, loaded=2, missing=["a.b"], unexpected=["c"], ignored=["p"])
    s = r.summary()
    assert "missing (1): a.b" in s and "unexpected (1): c" in s and "ignored on purpose (1): p" in s
    assert not r.ok and r.as_dict()["missing"] == ["a.b"]
