"""Prepared training data (`afloc-bench prepare`, `train --prepared`): the table holds the trainer's own
frames, every skip is counted, bad folders are one-line errors, DDP ranks read disjoint rows, and training
from a prepared folder is the same run as training from the image files, without decoding an image."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    synthetic_pairs,
    tokenizer,
)

from afloc.inference import to_model_input
from benchmark.dataset import DataError
from benchmark.training.config import TrainConfig
from benchmark.training.data import Pair, PretrainingData, epoch_batches
from benchmark.training.prepared import load_prepared, prepare, read_meta, write_prepared
from benchmark.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"vision": {"width": 4, "upsample": None},
        "text": {"max_length": 24, "bert_config": {"hidden_size": 16, "intermediate_size": 32}}}
N_DEMO = 12


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", model=TINY, pretrained_vision=None, batch_size=4, epochs=2, lr=1e-3,
                num_workers=0, log_every=1, seed=0, val_split=None, device="cpu", dataset="demo_mimic")
    base.update(kw)
    return TrainConfig(**base)


def one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for p in parts:
        assert p in text, (p, text)
    return text


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from benchmark.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, n_train=N_DEMO, n_test=4, datasets=["mimic_cxr"], progress=False, workers=1)
    return root


@pytest.fixture
def demo(demo_root, monkeypatch) -> Path:
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(demo_root))
    return demo_root


@pytest.fixture(scope="module")
def prepared_demo(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "demo-224"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFLOC_BENCH_DEMO", str(demo_root))
        prepare("demo_mimic", None, out, progress=False)
    return out


def fake_loader(monkeypatch, samples, skipped) -> None:
    """A registered-dataset stand-in for ``pairs_from_dataset`` (what ``prepare`` reads through)."""
    import benchmark.training.data as data

    ds = SimpleNamespace(samples=lambda: samples, skipped=skipped, root=Path("/fake"))
    monkeypatch.setattr(data, "build_dataset", lambda name, root, split, **o: ds)


# --- the table ---------------------------------------------------------------------------------
def test_prepare_demo_mimic_stores_the_trainers_own_frames(demo, prepared_demo):
    import datasets

    ds = datasets.load_from_disk(str(prepared_demo))
    assert ds.num_rows == N_DEMO
    assert set(ds.column_names) == {"image", "path", "report", "labels", "source_index"}
    assert ds.features["image"] == datasets.Array2D(shape=(224, 224), dtype="uint8")
    meta = json.loads((prepared_demo / "prepared.json").read_text())
    assert (meta["dataset"], meta["split"], meta["size"], meta["n_pairs"]) == ("demo_mimic", "train", 224, N_DEMO)
    assert meta["resize"] == "letterbox INTER_AREA, cv2-gray"
    assert (meta["n_loader_skipped"], meta["n_without_report"], meta["n_unreadable"]) == (0, 0, 0)
    assert meta["afloc_bench_version"] and meta["fingerprint"].startswith("sha256:")

    prep = load_prepared(prepared_demo, 224, verify=True)  # recomputes the content fingerprint
    pairs = prep.pairs()
    trainer_view = PretrainingData(pairs, None, frame_input=to_model_input)
    table = ds.data.table
    for k, pair in enumerate(pairs):
        own = trainer_view._frame(pair.image_path)  # what training decodes from the file
        raw = np.asarray(table.column("image")[k].as_py(), dtype=np.uint8)  # the row as datasets stores it
        assert own.dtype == np.uint8 and own.shape == (224, 224)
        assert own.tobytes() == raw.tobytes() == prep.frames[k].tobytes(), pair.image_path
    assert isinstance(pairs[0], Pair) and pairs[0].labels and pairs[0].report


def test_parallel_decoding_writes_the_same_rows(demo, prepared_demo, tmp_path):
    meta = prepare("demo_mimic", None, tmp_path / "p2", num_proc=2, progress=False)
    assert meta["fingerprint"] == read_meta(prepared_demo)["fingerprint"]
    assert [p.image_path for p in load_prepared(tmp_path / "p2").pairs()] == \
        [p.image_path for p in load_prepared(prepared_demo).pairs()]


def test_every_skip_is_counted_and_listed_and_an_unreadable_image_stops_by_default(tmp_path, monkeypatch):
    from benchmark.sample import Sample

    imgs = synthetic_pairs(tmp_path / "img", 3)
    bad = tmp_path / "img" / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    report = "There is a left lung opacity."
    samples = [Sample(f"s{k}", p, "train", None, prompts={"report": report}) for k, (p, _) in enumerate(imgs)]
    samples.insert(1, Sample("nr", str(tmp_path / "img" / "img001.png"), "train", None, prompts={"simple": "x"}))
    samples.insert(3, Sample("bad", str(bad), "train", None, prompts={"report": report}))
    fake_loader(monkeypatch, samples, [{"path": "/fake/lateral.jpg", "reason": "not a frontal view"}])

    with pytest.raises(DataError) as exc:
        prepare("fake_cxr", None, tmp_path / "stop", progress=False)
    one_line(exc, str(bad), "--skip-unreadable")
    assert not (tmp_path / "stop").exists() and not list(tmp_path.glob(".stop*"))  # nothing half-written

    meta = prepare("fake_cxr", None, tmp_path / "out", progress=False, skip_unreadable=True)
    assert (meta["n_samples"], meta["n_pairs"]) == (5, 3)
    assert meta["n_loader_skipped"] == 1 and meta["loader_skipped"][0]["reason"] == "not a frontal view"
    assert meta["n_without_report"] == 1 and meta["without_report"] == [str(tmp_path / "img" / "img001.png")]
    assert meta["n_unreadable"] == 1 and meta["unreadable"][0]["path"] == str(bad)
    assert json.loads((tmp_path / "out" / "prepared.json").read_text()) == json.loads(json.dumps(meta))
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds["source_index"] == [0, 1, 3] and ds["path"] == [p for p, _ in imgs]


def test_bad_folders_and_mismatches_are_one_line_errors(prepared_demo, tmp_path):
    with pytest.raises(DataError) as exc:
        load_prepared(tmp_path / "nowhere")
    one_line(exc, "nowhere", "no such folder", "afloc-bench prepare")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        load_prepared(tmp_path / "empty")
    one_line(exc, "empty", "no prepared.json")
    with pytest.raises(DataError) as exc:
        load_prepared(prepared_demo, image_size=192)
    one_line(exc, str(prepared_demo), "frames of 224x224", "192x192", "--size 192")

    copy = tmp_path / "copy"
    shutil.copytree(prepared_demo, copy)
    meta = json.loads((copy / "prepared.json").read_text())
    (copy / "prepared.json").write_text(json.dumps({**meta, "n_pairs": 99}))
    with pytest.raises(DataError) as exc:
        load_prepared(copy)
    one_line(exc, str(copy), f"{N_DEMO} rows", "99")
    (copy / "prepared.json").write_text(json.dumps(meta))
    for f in copy.glob("*.arrow"):
        f.unlink()
    with pytest.raises(DataError) as exc:
        load_prepared(copy)
    one_line(exc, str(copy), "cannot open the Arrow table")

    with pytest.raises(ValueError, match="already exists"):
        write_prepared([("a.png", "x")], prepared_demo, progress=False)
    prep = load_prepared(prepared_demo)
    with pytest.raises(ValueError, match=f"{N_DEMO} prepared rows for 2 pairs"):
        PretrainingData(prep.pairs()[:2], None, frame_input=to_model_input, frames=prep.frames)
    with pytest.raises(ValueError, match="own transform"):
        PretrainingData(prep.pairs(), None, image_fn=lambda p: p, frames=prep.frames)


def test_train_takes_dataset_and_split_from_the_folder_and_refuses_a_mismatch(prepared_demo, tmp_path, capsys):
    from benchmark.cli.main import main
    from benchmark.training.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--prepared", str(prepared_demo)]))
    assert (cfg.dataset, cfg.train_split, cfg.prepared) == ("demo_mimic", "train", str(prepared_demo))
    assert cfg.preset == "demo"  # the demo recipe, as for --dataset demo_mimic
    rc = main(["train", "afloc", "--prepared", str(prepared_demo), "--dataset", "mimic_cxr", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--dataset mimic_cxr" in err and "demo_mimic/train" in err
    rc = main(["train", "afloc", "--prepared", str(tmp_path / "nowhere"), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "nowhere: no such folder" in err

    with pytest.raises(DataError) as exc:  # the library path checks the same
        Trainer(tiny_cfg(dataset="mimic_cxr", prepared=str(prepared_demo)), tmp_path / "r").setup()
    one_line(exc, "a prepared demo_mimic/train set", "mimic_cxr/train")
    with pytest.raises(ValueError, match="medklip objective reads image files with its own transform"):
        Trainer(TrainConfig(task="medklip", prepared=str(prepared_demo)), tmp_path / "m")


def test_the_prepare_command_writes_a_folder_and_names_an_existing_one(demo, tmp_path, capsys):
    from benchmark.cli.main import main

    assert main(["prepare", "demo_mimic", "--out", str(tmp_path / "p"), "-q"]) == 0
    assert f"prepared {N_DEMO} pairs of demo_mimic/train at 224x224" in capsys.readouterr().out
    assert load_prepared(tmp_path / "p", 224).dataset.num_rows == N_DEMO
    assert main(["prepare", "demo_mimic", "--out", str(tmp_path / "p"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already exists" in err


# --- reading it --------------------------------------------------------------------------------
@pytest.fixture
def with_a_dropped_pair(tmp_path):
    """Pairs whose second report has no usable sentence: item numbers and table rows differ after it."""
    pairs = synthetic_pairs(tmp_path / "img", 9)
    pairs[1] = (pairs[1][0], "Normal.")
    write_prepared(pairs, tmp_path / "prep", progress=False, meta={"dataset": "synthetic", "split": "train"})
    return pairs, load_prepared(tmp_path / "prep", 224), tokenizer(tmp_path / "tok")


def test_items_read_the_right_rows_after_a_dropped_pair(with_a_dropped_pair):
    pairs, prep, tok = with_a_dropped_pair
    files = PretrainingData(pairs, tok, frame_input=to_model_input)
    table = PretrainingData(prep.pairs(), tok, frame_input=to_model_input, frames=prep.frames)
    assert len(files) == len(table) == 8 and files.skipped == table.skipped and table.rows[:3] == [0, 2, 3]
    a, b = files.collate(range(8), epoch=1), table.collate(range(8), epoch=1)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # what a DataLoader worker receives: the table by reference (its files), not the frames
    blob = pickle.dumps(table)
    assert len(blob) < 224 * 224
    clone = pickle.loads(blob)  # noqa: S301 - our own object, pickled in this process
    assert torch.equal(clone.collate([0, 5], 0)["images"], b["images"][[0, 5]])


class Recording:
    """A frame source that notes the rows read."""

    def __init__(self, frames):
        self.frames, self.read = frames, []
        self.size, self.folder = frames.size, frames.folder

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, row: int) -> np.ndarray:
        self.read.append(int(row))
        return self.frames[row]


def test_two_ddp_ranks_read_disjoint_rows_of_the_table(with_a_dropped_pair, tmp_path):
    pairs, prep, tok = with_a_dropped_pair
    cfg = tiny_cfg(dataset="synthetic", batch_size=4, prepared=str(prep.folder))
    seen, rows = {}, {}
    for rank in (0, 1):
        source = Recording(prep.frames)
        data = PretrainingData(prep.pairs(), tok, frame_input=to_model_input, frames=source)
        trainer = Trainer(cfg, tmp_path / "run")
        trainer.dist = SimpleNamespace(world=2, rank=rank)  # what torchrun would give this process
        batches = epoch_batches(len(data), cfg.batch_size, 0, cfg.seed)
        got = [g["index"].tolist() for groups in trainer._rank_groups(data, batches, epoch=0) for g in groups]
        seen[rank] = [i for g in got for i in g]
        rows[rank] = source.read
        assert [len(g) for g in got] == [2] * len(batches)  # half of each global batch
        assert rows[rank] == [data.rows[i] for i in seen[rank]]  # only its own groups' rows
    assert not set(seen[0]) & set(seen[1]) and not set(rows[0]) & set(rows[1])
    assert sorted(seen[0] + seen[1]) == sorted(int(i) for b in batches for i in b)
    assert 1 not in rows[0] + rows[1]  # the dropped pair's row is never read


# --- training from it --------------------------------------------------------------------------
def losses(run: Path) -> list[str]:
    with (run / "metrics.csv").open() as f:
        return [r["loss"] for r in csv.DictReader(f) if r["split"] == "train"]


def test_training_from_the_prepared_folder_is_the_same_run_without_decoding_an_image(demo, prepared_demo,
                                                                                    tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import benchmark.training.data as data
    import benchmark.training.prepared as prepared_mod

    tok = tokenizer(tmp_path / "tok")
    train(tiny_cfg(), tmp_path / "files", quiet=True, tokenizer=tok)

    def no_decode(path, *a, **k):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(data, "read_image", no_decode)
    monkeypatch.setattr(prepared_mod, "read_image", no_decode)
    # two DataLoader workers read the memory-mapped table
    state = train(tiny_cfg(prepared=str(prepared_demo), num_workers=2), tmp_path / "prep", quiet=True, tokenizer=tok)
    assert state["global_step"] == 2 * (N_DEMO // 4)
    a, b = losses(tmp_path / "files"), losses(tmp_path / "prep")
    assert len(a) == 6 and a == b
    wa, wb = (load_file(str(tmp_path / r / "last" / "model.safetensors")) for r in ("files", "prep"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    record = json.loads((tmp_path / "prep" / "train_config.json").read_text())
    assert record["train_data"]["source"] == "prepared"
    assert record["train_data"]["fingerprint"] == read_meta(prepared_demo)["fingerprint"]
    assert record["train"]["prepared"] == str(prepared_demo)


def _ddp_worker(rank: int, world: int, port: int, tmp: str, prepared: str, demo: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), AFLOC_BENCH_DEMO=demo)
    torch.set_num_threads(1)
    train(tiny_cfg(epochs=1, prepared=prepared), Path(tmp) / "ddp", quiet=True, tokenizer=tokenizer(Path(tmp) / "tok"))


@pytest.mark.slow
def test_two_gloo_processes_on_a_prepared_folder_equal_one_process_on_the_files(demo, prepared_demo, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokenizer(tmp_path / "tok")
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(prepared_demo), str(demo)), nprocs=2, join=True)
    train(tiny_cfg(epochs=1, forward_chunks=2), tmp_path / "one", quiet=True, tokenizer=tokenizer(tmp_path / "tok"))
    ddp, one = (np.array(losses(tmp_path / r), dtype=float) for r in ("ddp", "one"))
    assert len(ddp) == len(one) == N_DEMO // 4
    np.testing.assert_allclose(ddp, one, rtol=1e-5)
