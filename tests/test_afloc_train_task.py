"""The shared trainer runs any training task: its input, labels, loss columns and checkpoint format."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    synthetic_pairs,
)

from benchmark.registry import training
from benchmark.training.config import TrainConfig, load_train_config
from benchmark.training.data import Pair
from benchmark.training.task import TrainTask
from benchmark.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
SEEN: dict[str, list] = {"labels": [], "images": []}


class _Tok:
    """Captions → character-count features (enough for a loss that depends on the text)."""

    def __call__(self, captions):
        n = torch.tensor([[len(c)] for c in captions], dtype=torch.float32)
        return {"length": n, "attention_mask": torch.ones(len(captions), 3, dtype=torch.long)}


class ToyTask(TrainTask):
    name = "toy"
    metric_columns = ("fit", "text")

    @staticmethod
    def image_fn(path):  # its own input: a 4x4 thumbnail of the file
        import cv2

        from benchmark.io.images import read_image

        return torch.from_numpy(cv2.resize(read_image(path), (4, 4))).float().flatten() / 255

    @staticmethod
    def label_fn(labels):
        return torch.tensor([[float((d or {}).get("Atelectasis") or 0.0)] for d in labels])

    def build(self, cfg, tokenizer=None):
        torch.manual_seed(cfg.seed)
        return torch.nn.Linear(17, 1), _Tok()

    def model_config(self, model):
        return {"in": 17}

    def loss_terms(self, model, batch, autocast):
        SEEN["labels"].append(batch["labels"].clone())
        SEEN["images"].append(tuple(batch["images"].shape))
        with autocast:
            pred = model(torch.cat([batch["images"], batch["length"] / 100], 1))
        fit = ((pred - batch["labels"]) ** 2).mean()
        text = batch["length"].mean() * 0
        return {"loss": fit + text, "fit": fit, "text": text}

    def save(self, model, folder, extra):
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"toy": True, **extra}))


def test_trainer_uses_the_task_input_labels_columns_and_format(tmp_path, request):
    training.add("toy", ToyTask)
    request.addfinalizer(lambda: training.unregister("toy"))
    SEEN["labels"].clear(), SEEN["images"].clear()
    base = synthetic_pairs(tmp_path / "img", 8)
    pairs = [Pair(str(p[0]), p[1], {"Atelectasis": float(i % 2)}) for i, p in enumerate(base)]
    cfg = TrainConfig(task="toy", batch_size=4, epochs=3, lr=1e-2, num_workers=0, log_every=1, device="cpu",
                      pretrained_vision=None)
    state = train(cfg, tmp_path / "run", quiet=True, train_pairs=pairs, val_pairs=pairs)
    assert SEEN["images"][0] == (4, 16)  # image_fn, not AFLoc's 3x224x224
    assert sorted(float(x) for b in SEEN["labels"][:2] for x in b.flatten()) == [0, 0, 0, 0, 1, 1, 1, 1]
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["time", "epoch", "step", "split", "loss", "fit", "text", "lr", "samples_per_s"]
    assert float(rows[-1]["fit"]) < float(rows[0]["fit"])
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["toy"] is True
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["model"] == {"in": 17}
    assert state["epoch"] == 3
    # resume reads the task's weights back and refuses a run of another task
    cfg4 = TrainConfig(**{**cfg.to_dict(), "epochs": 4, "betas": tuple(cfg.betas)})
    assert train(cfg4, tmp_path / "run", quiet=True, resume=True, train_pairs=pairs, val_pairs=pairs)["epoch"] == 4
    from benchmark.io.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="task 'toy', not 'afloc'"):
        train(TrainConfig(batch_size=4, num_workers=0, device="cpu"), tmp_path / "run", quiet=True, resume=True,
              train_pairs=pairs, val_pairs=pairs)


def test_global_negatives_need_a_task_that_has_them(request):
    training.add("toy", ToyTask)
    request.addfinalizer(lambda: training.unregister("toy"))
    from benchmark.training.trainer import Trainer

    with pytest.raises(ValueError, match="toy objective has no cross-rank negatives"):
        Trainer(TrainConfig(task="toy", negatives="global"), "unused")


def test_configs_name_their_task(tmp_path):
    assert load_train_config("demo").task == "afloc"
    y = tmp_path / "c.yaml"
    y.write_text("task: afloc\nepochs: 1\n")
    with pytest.raises(ValueError, match="a config of task 'afloc', not 'gloria'"):
        load_train_config(str(y), "gloria")


def test_a_demo_dataset_refuses_a_data_root_instead_of_ignoring_it(tmp_path):
    from benchmark.training.trainer import Trainer

    trainer = Trainer(TrainConfig(dataset="demo_mimic", data_root=str(tmp_path / "mine")), tmp_path / "run")
    with pytest.raises(ValueError, match=r"demo_mimic reads the generated demo collection .*--dataset mimic_cxr"):
        trainer._pairs("train")
