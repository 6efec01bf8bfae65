"""AFLoc on histopathology: the colour read (image_flag 1) through training, prepared frames, the saved
checkpoint and the adapter that evaluates it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import one_thread  # noqa: F401  (fixture)
from test_prepared import TINY, losses, tokenizer

from afloc.inference import to_model_input
from benchmark.training.config import TrainConfig, load_train_config
from benchmark.training.data import PretrainingData
from benchmark.training.prepared import load_prepared, prepare
from benchmark.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
N = 12


@pytest.fixture(scope="module")
def quilt_root(tmp_path_factory) -> Path:
    from benchmark.demo import generate

    root = tmp_path_factory.mktemp("pdemo")
    generate(root, seed=0, n_train=N, n_test=4, datasets=["quilt1m"], progress=False, workers=1)
    return root


@pytest.fixture
def quilt(quilt_root, monkeypatch) -> Path:
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(quilt_root))
    return quilt_root


def cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", model=TINY, pretrained_vision=None, batch_size=4, epochs=1, lr=1e-3, num_workers=0,
                log_every=1, seed=0, val_split=None, device="cpu", dataset="demo_quilt1m", image_flag=1)
    base.update(kw)
    return TrainConfig(**base)


def test_the_pathology_recipes_read_colour():
    for spec, dataset in (("pathology", "quilt1m"), ("pathology_demo", "demo_quilt1m")):
        c = load_train_config(spec, "afloc")
        assert (c.dataset, c.image_flag, c.val_split) == (dataset, 1, "val")
    with pytest.raises(ValueError, match="image_flag must be 0 .gray. or 1 .colour."):
        TrainConfig.from_mapping({"image_flag": 3}, "x.yaml")


def test_colour_training_saves_the_flag_and_the_adapter_reads_colour(quilt, tmp_path):
    from afloc.adapter import AFLocAdapter

    tok = tokenizer(tmp_path / "tok")
    train(cfg(), tmp_path / "run", quiet=True, tokenizer=tok)
    folder = tmp_path / "run" / "last"
    assert json.loads((folder / "config.json").read_text())["image_flag"] == 1
    adapter = AFLocAdapter()
    adapter.load(str(folder), "cpu")
    assert adapter.decode == "cv2-bgr"
    gray = train(cfg(image_flag=0), tmp_path / "gray", quiet=True, tokenizer=tok)
    assert gray["global_step"] > 0 and "image_flag" not in json.loads((tmp_path / "gray" / "last" /
                                                                        "config.json").read_text())
    assert losses(tmp_path / "run") != losses(tmp_path / "gray")  # the colour frames are what trained


def test_prepared_colour_frames_are_the_trainers_and_a_flag_mismatch_is_refused(quilt, tmp_path):
    from benchmark.dataset import DataError

    out = tmp_path / "prep"
    meta = prepare("demo_quilt1m", None, out, progress=False, decode="cv2-bgr")
    assert meta["decode"] == "cv2-bgr" and meta["resize"] == "letterbox INTER_AREA, cv2-bgr"
    prep = load_prepared(out, 224, verify=True)
    pairs = prep.pairs()
    view = PretrainingData(pairs, None, frame_input=to_model_input, decode="cv2-bgr")
    for k, pair in enumerate(pairs[:4]):
        own = view._frame(pair.image_path)
        assert own.shape == (224, 224, 3) and own.tobytes() == prep.frames[k].tobytes()
    assert not np.array_equal(prep.frames[0][..., 0], prep.frames[0][..., 2])  # colour, not gray copies
    tok = tokenizer(tmp_path / "tok")
    files = train(cfg(), tmp_path / "files", quiet=True, tokenizer=tok)
    table = train(cfg(prepared=str(out)), tmp_path / "table", quiet=True, tokenizer=tok)
    assert files["global_step"] == table["global_step"] and losses(tmp_path / "files") == losses(tmp_path / "table")
    with pytest.raises(DataError, match="frames read with cv2-bgr, but this run's image_flag 0"):
        train(cfg(prepared=str(out), image_flag=0), tmp_path / "bad", quiet=True, tokenizer=tok)
    assert torch.is_tensor(to_model_input(prep.frames[0]))
