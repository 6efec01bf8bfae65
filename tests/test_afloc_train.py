"""Training: the loss decreases, checkpoints resume to the identical state, DDP equals one process."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    synthetic_pairs,
    tokenizer,
)

from afloc.inference import to_model_input
from benchmark.training.config import TrainConfig
from benchmark.training.data import PretrainingData, epoch_batches, split_groups
from benchmark.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"vision": {"width": 4, "upsample": None},
        "text": {"max_length": 24, "bert_config": {"hidden_size": 16, "intermediate_size": 32}}}


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", model=TINY, pretrained_vision=None, batch_size=4, epochs=2, lr=1e-3,
                num_workers=0, log_every=1, seed=0, val_split="val", device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(folder: Path, split: str = "train") -> list[dict]:
    with (folder / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_training_decreases_the_loss_and_writes_checkpoints(tmp_path):
    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    state = train(tiny_cfg(epochs=4), tmp_path / "run", quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    vals = [h["val_loss"] for h in state["history"]]
    assert len(vals) == 4 and vals[-1] < vals[0]
    assert state["best_val_loss"] == min(vals)
    for sub in ("best", "last"):
        assert (tmp_path / "run" / sub / "model.safetensors").is_file()
    assert len(read_metrics(tmp_path / "run")) == 8
    from afloc.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "best").cfg.vision.width == 4


def test_select_best_false_keeps_the_last_epoch(tmp_path):
    """The demo recipe keeps the final weights; validation loss is still recorded."""
    import json

    from safetensors.torch import load_file

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    state = train(tiny_cfg(epochs=3, select_best=False), tmp_path / "last_kept", **kw)
    run = tmp_path / "last_kept"
    assert json.loads((run / "best" / "config.json").read_text())["training"]["epoch"] == 3
    best, last = load_file(str(run / "best" / "model.safetensors")), load_file(str(run / "last" / "model.safetensors"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    assert state["best_val_loss"] == min(h["val_loss"] for h in state["history"])
    state = train(tiny_cfg(epochs=3), tmp_path / "by_val", **kw)
    assert json.loads((tmp_path / "by_val" / "best" / "config.json").read_text())["training"]["epoch"] == \
        state["best_epoch"]


def test_resume_mid_epoch_reaches_the_identical_state(tmp_path):
    from safetensors.torch import load_file

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    train(tiny_cfg(epochs=2), tmp_path / "a", **kw)
    train(tiny_cfg(epochs=2, max_steps=3), tmp_path / "b", **kw)  # stops inside epoch 2
    st = train(tiny_cfg(epochs=2), tmp_path / "b", resume=True, **kw)
    assert st["global_step"] == 4 and st["finished"]
    for f in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "last" / f)), load_file(str(tmp_path / "b" / "last" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    la = [r["loss"] for r in read_metrics(tmp_path / "a")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert la == lb


def test_lr_by_prefix_gives_the_named_parameters_their_own_rate_and_resumes(tmp_path):
    """A zero text rate leaves every text weight at its seed value while the image side trains;
    metrics.csv logs ``lr``; the two-group optimizer resumes to the identical state."""
    from safetensors.torch import load_file

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    slow = {"text_encoder.": 0.0}
    train(tiny_cfg(epochs=1, lr=0.0), tmp_path / "init", **kw)  # lr 0: the seed weights
    train(tiny_cfg(epochs=2, lr_by_prefix=slow), tmp_path / "a", **kw)
    init, a = (load_file(str(tmp_path / r / "last" / "model.safetensors")) for r in ("init", "a"))
    text = [k for k in a if k.startswith("text_encoder.")]
    image = [k for k in a if k.startswith("img_encoder.") and a[k].is_floating_point()]
    assert text and image
    assert all(torch.equal(a[k], init[k]) for k in text)
    assert sum(not torch.equal(a[k], init[k]) for k in image) > len(image) // 2
    assert {round(float(r["lr"]), 12) for r in read_metrics(tmp_path / "a")} == {1e-3, 9e-4}  # x0.9 per epoch
    train(tiny_cfg(epochs=2, max_steps=3, lr_by_prefix=slow), tmp_path / "b", **kw)
    train(tiny_cfg(epochs=2, lr_by_prefix=slow), tmp_path / "b", resume=True, **kw)
    for f in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(str(tmp_path / "a" / "last" / f)), load_file(str(tmp_path / "b" / "last" / f))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f


def test_param_groups_order_longest_prefix_and_unknown_prefix():
    from benchmark.training.trainer import param_groups

    net = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "ab": torch.nn.Linear(2, 2), "c": torch.nn.Linear(2, 2)})
    names = {id(p): n for n, p in net.named_parameters()}
    one = param_groups(net, 0.1, {})
    assert len(one) == 1 and [names[id(p)] for p in one[0]["params"]] == [n for n, _ in net.named_parameters()]
    groups = param_groups(net, 0.1, {"a": 0.5, "ab.": 0.01})
    assert [g["lr"] for g in groups] == [0.1, 0.5, 0.01]
    assert [[names[id(p)] for p in g["params"]] for g in groups] == \
        [["c.weight", "c.bias"], ["a.weight", "a.bias"], ["ab.weight", "ab.bias"]]
    with pytest.raises(ValueError, match="text_encoder"):
        param_groups(net, 0.1, {"text_encoder.": 0.0})
    # a YAML value written without a dot ("1e-4") arrives as a string and is read as a number
    assert TrainConfig.from_mapping({"lr_by_prefix": {"text_encoder.": "1e-4"}}).lr_by_prefix == {"text_encoder.": 1e-4}
    with pytest.raises(ValueError, match="lr_by_prefix"):
        TrainConfig.from_mapping({"lr_by_prefix": {"text_encoder.": "fast"}})


def test_batch_plan_groups_by_length_and_drops_the_last_partial_batch():
    b = epoch_batches(10, 4, epoch=0, seed=0)
    assert len(b) == 2 and len(set(np.concatenate(b))) == 8
    assert [list(x) for x in epoch_batches(10, 4, 0, 0)] == [list(x) for x in epoch_batches(10, 4, 0, 0)]
    assert [list(x) for x in epoch_batches(10, 4, 0, 0)] != [list(x) for x in epoch_batches(10, 4, 1, 0)]
    g = split_groups(np.array([5, 6, 7, 8]), np.array([3, 9, 1, 9]), 2)
    assert [list(x) for x in g] == [[6, 8], [5, 7]]  # longest first, stable on ties, contiguous


def test_pairs_without_sentences_are_counted_not_silently_dropped(tmp_path):
    tok = tokenizer(tmp_path / "tok")
    d = PretrainingData([("a.png", "Normal."), ("b.png", "The heart size is normal.")], tok, frame_input=to_model_input)
    assert len(d) == 1 and d.skipped == [{"path": "a.png", "reason": "report has no usable sentence"}]
    assert d.caption(0, 0) == d.caption(0, 0) == "the heart size is normal"


# --- several processes ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MLM = {"steps": 6, "batch_size": 4, "warmup": 2}  # run by rank 0 and broadcast: both ranks start alike


def _ddp_worker(rank: int, world: int, port: int, tmp: str, negatives: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / f"tok{rank}")
    train(tiny_cfg(epochs=1, negatives=negatives, text_pretrain=MLM), tmp_path / f"ddp_{negatives}", quiet=True,
          train_pairs=pairs, val_pairs=pairs, tokenizer=tok)


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["local", "global"])
def test_two_gloo_processes_equal_one_process_with_two_chunks(tmp_path, negatives):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), negatives), nprocs=2, join=True)
    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    train(tiny_cfg(epochs=1, forward_chunks=2, negatives=negatives, text_pretrain=MLM), tmp_path / "single",
          quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    ddp = [float(r["loss"]) for r in read_metrics(tmp_path / f"ddp_{negatives}")]
    one = [float(r["loss"]) for r in read_metrics(tmp_path / "single")]
    assert len(ddp) == len(one) == 2
    np.testing.assert_allclose(ddp, one, rtol=1e-5)
    a = load_file(str(tmp_path / f"ddp_{negatives}" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    # BatchNorm running statistics differ by design (per-rank batches, rank 0 broadcast); weights do not
    trainable = [k for k in a if "running_" not in k and "num_batches" not in k]
    for k in trainable:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_in_memory_image_cache_reads_each_image_once_and_changes_no_weight(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import benchmark.training.data as imageio  # where the trainer's frames are read

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    reads = []
    real = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda p, c="gray": reads.append(p) or real(p, c))
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=None, tokenizer=tok)
    train(tiny_cfg(epochs=3, val_split=None, image_cache="memory"), tmp_path / "mem", **kw)
    assert len(reads) == 8  # 3 epochs x 8 pairs, read once each
    reads.clear()
    train(tiny_cfg(epochs=3, val_split=None), tmp_path / "disk", **kw)
    assert len(reads) == 24
    a, b = (load_file(str(tmp_path / r / "last" / "model.safetensors")) for r in ("mem", "disk"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_affine_is_seeded_per_sample_and_shifts_content():
    """Augmentation draws from (seed, epoch, index): the same sample gets the same transform in any
    batch, a shift moves a bright dot by the expected pixels, and the border takes the padding value."""
    from benchmark.training.data import random_affine

    x = torch.full((2, 3, 224, 224), -1.0)
    x[:, :, 100:104, 100:104] = 1.0
    assert torch.allclose(random_affine(x, [3, 5], 0, 0), x, atol=1e-4)  # nothing asked: identity
    aug = dict(translate=0.1, scale=(0.9, 1.1), degrees=5.0)
    a = random_affine(x, [3, 5], 0, 0, **aug)
    b = random_affine(x.flip(0), [5, 3], 0, 0, **aug).flip(0)  # same samples, other batch order
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, random_affine(x, [3, 5], 1, 0, **aug))  # a new draw each epoch
    assert not torch.allclose(a[0], a[1])
    only_shift = random_affine(x[:1], [0], 0, 0, translate=0.1)
    ys, xs = torch.nonzero(only_shift[0, 0] > 0.5, as_tuple=True)
    rng = np.random.default_rng([0, 1, 0, 104729])
    tx, ty = rng.uniform(-0.1, 0.1, 2) * 224
    assert abs(xs.float().mean().item() - (101.5 + tx)) < 1.0 and abs(ys.float().mean().item() - (101.5 + ty)) < 1.0
    assert only_shift.min().item() >= -1.0 - 1e-6  # uncovered border: letterbox padding, not zero


def test_augment_applies_to_training_batches_only(tmp_path):
    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    plain = PretrainingData(pairs, tok, seed=0, frame_input=to_model_input)
    aug = PretrainingData(pairs, tok, seed=0, augment={"translate": 0.1}, frame_input=to_model_input)
    a, b = plain.collate([0, 1, 2], 0), aug.collate([0, 1, 2], 0)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.allclose(a["images"], b["images"])
    with pytest.raises(ValueError, match="rotate"):
        PretrainingData(pairs, tok, augment={"rotate": 5}, frame_input=to_model_input)
    with pytest.raises(ValueError, match="image_fn"):
        PretrainingData(pairs, tok, augment={"translate": 0.1}, image_fn=lambda p: torch.zeros(3, 8, 8))
    state = train(tiny_cfg(epochs=1, augment={"translate": 0.1}), tmp_path / "run", quiet=True,
                  train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    assert state["history"][0]["val_loss"] > 0
    import json

    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["train"]["augment"] == {"translate": 0.1}
    # what decides the last bits of from-scratch weights is on record: threads and SIMD code paths
    assert record["environment"]["torch"]["num_threads"] == torch.get_num_threads()
    assert record["environment"]["cpu_simd"]["torch"] == torch.backends.cpu.get_cpu_capability()


def test_ema_decay_saves_the_average_of_the_trajectory_and_leaves_training_unchanged(tmp_path):
    """best/ and last/ hold d-weighted averages of the step weights (starting at the seed
    weights); the optimiser's own weights, kept in last/ for resume, equal a run without EMA."""
    from safetensors.torch import load_file

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    d = 0.5
    st = train(tiny_cfg(epochs=2, ema_decay=d, select_best=False), tmp_path / "ema", **kw)
    assert st["global_step"] == 4
    from afloc.task import AFLocTask

    seed_model, _ = AFLocTask().build(tiny_cfg(), tok)  # the weights training starts from
    steps = [{k: v.detach().clone() for k, v in seed_model.state_dict().items()}]
    for k in range(1, 5):
        train(tiny_cfg(epochs=2, max_steps=k), tmp_path / f"w{k}", **kw)
        steps.append(load_file(str(tmp_path / f"w{k}" / "last" / "model.safetensors")))
    saved = load_file(str(tmp_path / "ema" / "last" / "model.safetensors"))
    best = load_file(str(tmp_path / "ema" / "best" / "model.safetensors"))
    raw = {k[4:]: v for k, v in load_file(str(tmp_path / "ema" / "last" / "optimizer.safetensors")).items()
           if k.startswith("raw.")}
    assert raw.keys() == saved.keys() == steps[4].keys()
    moved = 0
    for name, w in saved.items():
        assert torch.equal(raw[name], steps[4][name]), name  # averaging never feeds back into training
        assert torch.equal(best[name], w), name
        if not w.is_floating_point():
            assert torch.equal(w, steps[4][name]), name
            continue
        expect = steps[0][name].double()
        for s in steps[1:]:
            expect = d * expect + (1 - d) * s[name].double()
        torch.testing.assert_close(w.double(), expect, rtol=1e-5, atol=1e-6)
        moved += not torch.allclose(w, steps[4][name])
    assert moved > len(saved) // 4  # the average differs from the last step


def test_ema_decay_resumes_to_the_identical_state_and_refuses_a_mismatched_resume(tmp_path):
    from safetensors.torch import load_file

    from benchmark.io.checkpoints import CheckpointError

    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs, tokenizer=tok)
    train(tiny_cfg(epochs=2, ema_decay=0.7), tmp_path / "a", **kw)
    train(tiny_cfg(epochs=2, ema_decay=0.7, max_steps=3), tmp_path / "b", **kw)
    train(tiny_cfg(epochs=2, ema_decay=0.7), tmp_path / "b", resume=True, **kw)
    for f in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(str(tmp_path / "a" / "last" / f)), load_file(str(tmp_path / "b" / "last" / f))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f
    assert [r["loss"] for r in read_metrics(tmp_path / "a", "val")] == \
        [r["loss"] for r in read_metrics(tmp_path / "b", "val")]
    with pytest.raises(CheckpointError, match="resume it with the same ema_decay"):
        train(tiny_cfg(epochs=3), tmp_path / "b", resume=True, **kw)
    train(tiny_cfg(epochs=1, max_steps=1), tmp_path / "plain", **kw)
    with pytest.raises(CheckpointError, match="without ema_decay"):
        train(tiny_cfg(epochs=1, ema_decay=0.7), tmp_path / "plain", resume=True, **kw)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        TrainConfig.from_mapping({"ema_decay": 1.5})
