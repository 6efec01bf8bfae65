"""Fine-tuning under torchrun: two gloo processes share every batch, agree on every score, and
process 0 alone writes the run folder. A linear probe (frozen encoder, BCE: a mean over images) on
two processes follows the one-process run step for step; segmentation (BatchNorm statistics and the
soft-Dice term per share, as with DistributedDataParallel) ends with the same weights on both."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from benchmark.finetune.config import load_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights_sha(net) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(rank: int, world: int, port: int, task: str, demo: str, config: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), AFLOC_BENCH_DEMO=demo)
    torch.set_num_threads(1)
    from benchmark.finetune import runs

    seen = {}
    real_fit = runs.fit

    def fit_and_hash(out_dir, net, *a, **k):
        real_fit(out_dir, net, *a, **k)
        seen["sha"] = _weights_sha(net)

    if task == "cls":
        import benchmark.finetune.cls as mod

        mod.fit = fit_and_hash
        mod.run_cls("afloc", "demo_rsna", 1.0, 0, out, load_config(config, task="cls"), mode="linear",
                    max_epochs=2, device="cpu")
    else:
        import benchmark.finetune.seg as mod

        mod.fit = fit_and_hash
        mod.run_seg("afloc", "demo_siim", 1.0, 0, out, load_config(config), max_epochs=2, device="cpu")
    runs.close_processes()
    Path(out, f".rank{rank}.sha").write_text(seen["sha"])


def _spawn(task, demo, config, out):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), task, str(demo), config, str(out)), nprocs=2, join=True)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import benchmark.demo as demo

    root = tmp_path_factory.mktemp("demo_ft")
    demo.generate(root, seed=0, n_train=1, n_test=32, datasets=["rsna_pneumonia", "siim_pneumothorax"],
                  progress=False, workers=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFLOC_BENCH_DEMO", str(root))
        yield root


def _config(tmp_path, name, **changes) -> str:
    import yaml

    from benchmark.finetune.config import CONFIG_DIR

    cfg = yaml.safe_load((CONFIG_DIR / name).read_text())
    cfg.update(changes)
    path = tmp_path / f"tiny_{name}"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_linear_probe_on_two_processes_follows_one_process(demo, tmp_path):
    import benchmark.finetune.cls as cls

    config = _config(tmp_path, "cls_demo.yaml", image_size=32, resize=40, batch_size=7, n_boot=50)
    two = _spawn("cls", demo, config, tmp_path / "two")
    one = cls.run_cls("afloc", "demo_rsna", 1.0, 0, tmp_path / "one", load_config(config, task="cls"), mode="linear",
                      max_epochs=2, device="cpu")
    assert (two["processes"], one["processes"]) == (2, 1)
    assert (tmp_path / "two" / ".rank0.sha").read_text() == (tmp_path / "two" / ".rank1.sha").read_text()
    for a, b in zip(two["epochs"], one["epochs"]):
        assert a == pytest.approx(b, rel=1e-4)
    assert two["test"]["auroc"]["value"] == pytest.approx(one["test"]["auroc"]["value"], abs=1e-6)
    assert (tmp_path / "two" / "ids" / "train.txt").read_text() == (tmp_path / "one" / "ids" / "train.txt").read_text()


@pytest.mark.slow
def test_segmentation_on_two_processes_keeps_one_model(demo, tmp_path):
    config = _config(tmp_path, "demo.yaml", image_size=64, batch_size=5, n_boot=50,
                     decoder_channels=[32, 16, 16, 8, 8])
    res = _spawn("seg", demo, config, tmp_path / "two")
    assert res["processes"] == 2 and [e["epoch"] for e in res["epochs"]] == [1, 2]
    assert (tmp_path / "two" / ".rank0.sha").read_text() == (tmp_path / "two" / ".rank1.sha").read_text()
    assert (tmp_path / "two" / "best.safetensors").is_file() and (tmp_path / "two" / "test_per_image.csv").is_file()
    assert 0 <= res["test"]["dice"]["value"] <= 1
