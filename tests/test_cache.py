"""Cache keys and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmark.cache import ArrayCache, cache_key, checkpoint_sha256, file_sha256, state_dict_sha256
from benchmark.records import atomic_write_text


def _key(**kw):
    base = dict(model_id="random", checkpoint_sha="none", preprocessing_id="p1", image_sha="abc",
                prompt="Findings suggesting pneumonia.")
    base.update(kw)
    return cache_key("heatmap", **base)


def test_every_component_changes_the_key():
    k0 = _key()
    assert _key() == k0
    for change in (dict(model_id="uniform"), dict(checkpoint_sha="123"), dict(preprocessing_id="p2"),
                   dict(image_sha="abd"), dict(prompt="Findings suggesting effusion.")):
        assert _key(**change) != k0, change


def test_two_models_never_share_an_entry(tmp_path):
    cache = ArrayCache(tmp_path)
    cache.put(_key(model_id="a"), grid=np.zeros((2, 2)))
    cache.put(_key(model_id="b"), grid=np.ones((2, 2)))
    assert cache.get(_key(model_id="a"))["grid"].sum() == 0
    assert cache.get(_key(model_id="b"))["grid"].sum() == 4


def test_disabled_cache_stores_nothing(tmp_path):
    cache = ArrayCache(tmp_path / "c", enabled=False)
    cache.put(_key(), grid=np.zeros(3))
    assert cache.get(_key()) is None
    assert not (tmp_path / "c").exists()


def test_corrupt_entry_is_a_miss(tmp_path):
    cache = ArrayCache(tmp_path)
    k = _key()
    cache.put(k, grid=np.zeros(3))
    path = tmp_path / k[:2] / f"{k}.arrays"
    path.write_bytes(b"not a zip")
    assert cache.get(k) is None


def test_image_hash_is_content_not_name(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert file_sha256(a) == file_sha256(b)
    b.write_bytes(b"other bytes")
    os.utime(b, ns=(1, 1))
    assert file_sha256(a) != file_sha256(b)


def test_checkpoint_hash_of_folder_and_missing(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    h1 = checkpoint_sha256(d)
    (d / "weights.bin").write_bytes(b"\0" * 10)
    assert checkpoint_sha256(d) != h1
    with pytest.raises(FileNotFoundError):
        checkpoint_sha256(tmp_path / "nope.ckpt")


def test_checkpoint_hash_of_folder_leaves_the_training_record_out(tmp_path):
    # two builds of the same weights differ in their logs' timestamps and the recipe's paths
    d = tmp_path / "run"
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\1" * 16)
    (d / "config.json").write_text("{}")
    (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
    h = checkpoint_sha256(d)
    (d / "metrics.csv").write_text("time,loss\n1796194474.862,7.3\n")
    (d / "train_config.json").write_text('{"data_root": "/home/someone/data"}')
    (d / "trainer_state.json").write_text("{}")
    (d / "optimizer.safetensors").write_bytes(b"\2" * 8)
    (d / "tensorboard").mkdir()
    (d / "tensorboard" / "events.out").write_bytes(b"\3")
    assert checkpoint_sha256(d) == h
    (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # what the model reads still counts
    assert checkpoint_sha256(d) != h


def _safetensors_bytes(tensors, metadata_items, pad=0):
    """A safetensors file with its ``__metadata__`` keys in the given order (the writer's order
    varies from process to process) and ``pad`` extra spaces after the header."""
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata_items))
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    header = {"__metadata__": dict(metadata_items), **header}
    text = json.dumps(header).encode() + b" " * pad
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def test_checkpoint_hash_of_safetensors_ignores_metadata_order_and_padding(tmp_path):
    import torch

    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b" / "model.safetensors", tmp_path / "c.safetensors"
    b.parent.mkdir()
    a.write_bytes(_safetensors_bytes(t, [("format", "x"), ("format_version", "1")]))
    b.write_bytes(_safetensors_bytes(t, [("format_version", "1"), ("format", "x")], pad=8))
    assert a.read_bytes() != b.read_bytes()
    assert checkpoint_sha256(a) == checkpoint_sha256(b)
    other = dict(t, b=torch.tensor([1.0, 2.0]))
    c.write_bytes(_safetensors_bytes(other, [("format", "x"), ("format_version", "1")]))
    assert checkpoint_sha256(c) != checkpoint_sha256(a)
    c.write_bytes(_safetensors_bytes(t, [("format", "y"), ("format_version", "1")]))
    assert checkpoint_sha256(c) != checkpoint_sha256(a)  # metadata values count, their order does not
    (tmp_path / "a2").mkdir()
    (tmp_path / "a2" / "model.safetensors").write_bytes(a.read_bytes())
    assert checkpoint_sha256(tmp_path / "a2") == checkpoint_sha256(b.parent)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert checkpoint_sha256(bad) == file_sha256(bad)  # unreadable: its bytes; the loader reports it


def test_state_dict_hash_sees_values_names_dtypes_and_shapes():
    import torch

    base = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3), "n": torch.tensor(4)}
    h = state_dict_sha256(base)
    assert state_dict_sha256({k: v.clone() for k, v in reversed(list(base.items()))}) == h  # order-free
    changed = dict(base, w=base["w"].clone())
    changed["w"][1, 2] += 1e-6
    assert state_dict_sha256(changed) != h
    assert state_dict_sha256({"v" if k == "w" else k: v for k, v in base.items()}) != h
    assert state_dict_sha256(dict(base, w=base["w"].double())) != h
    assert state_dict_sha256(dict(base, w=base["w"].reshape(3, 2))) != h
    assert state_dict_sha256(dict(base, w=base["w"].t())) != h  # non-contiguous: its values in order


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_build_once_builds_a_folder_once_and_never_leaves_a_partial_one(tmp_path):
    from benchmark.training.demo_weights import build_once

    final = tmp_path / "models" / "thing-1"
    calls = []

    def complete(folder):
        return (folder / "done.txt").is_file()

    def failing(work):
        calls.append("fail")
        (work / "half.txt").write_text("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_once(final, complete, failing)
    assert not final.exists() and [p.name for p in final.parent.iterdir()] == [".thing-1.lock"]

    def good(work):
        calls.append("build")
        out = work / "staged"
        out.mkdir()
        (out / "done.txt").write_text("ok")
        return out

    assert build_once(final, complete, good) == final and (final / "done.txt").read_text() == "ok"
    assert build_once(final, complete, good) == final
    assert calls == ["fail", "build"]
    assert sorted(p.name for p in final.parent.iterdir()) == [".thing-1.lock", "thing-1"]


def test_demo_builds_train_with_the_recorded_thread_count(tmp_path, monkeypatch):
    """Float summation order follows the thread count, so demo models are trained with a fixed one."""
    import torch

    import benchmark.training.trainer as T
    from benchmark.training.demo_weights import DEMO_TRAIN_THREADS, ensure_demo_weights

    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    seen = []

    def fake_train(cfg, run, quiet=True):
        seen.append((cfg.task, torch.get_num_threads()))
        (run / "best").mkdir(parents=True)
        (run / "best" / "model.safetensors").write_bytes(b"x")
        (run / "train_config.json").write_text("{}")

    monkeypatch.setattr(T, "train", fake_train)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = ensure_demo_weights("convirt-demo-test", "convirt")
        assert seen == [("convirt", DEMO_TRAIN_THREADS)]
        assert torch.get_num_threads() == 1  # restored
        assert (folder / "train_config.json").is_file()
    finally:
        torch.set_num_threads(before)


def test_entries_keep_every_array_exactly(tmp_path):
    cache = ArrayCache(tmp_path)
    rng = np.random.default_rng(0)
    arrays = {"grid": rng.random((7, 5), dtype=np.float32), "scores": rng.random(3), "ok": np.array([True, False]),
              "n": np.int64(4), "empty": np.zeros((0, 2), np.float16), "names": np.array(["a", "bcd"]),
              "strided": rng.random((6, 6))[::2, 1::2], "big_endian": np.arange(3, dtype=">i4")}
    cache.put(_key(), **arrays)
    got = cache.get(_key())
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        a = np.asarray(a)
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a)
    got["grid"][0, 0] = 2.0  # writable, as np.load gave
    with pytest.raises(TypeError, match="object arrays"):
        cache.put(_key(model_id="o"), bad=np.array([{"a": 1}], dtype=object))


def test_entry_writes_are_atomic_with_the_umask_mode(tmp_path, monkeypatch):
    """An entry is a renamed temporary file: mode 0666 less the umask, no temporary left, and a write
    that fails leaves the previous entry readable and no partial file."""
    cache = ArrayCache(tmp_path)
    k = _key()
    old = os.umask(0o027)
    try:
        cache.put(k, grid=np.arange(4.0))
    finally:
        os.umask(old)
    path = tmp_path / k[:2] / f"{k}.arrays"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    def failing_write(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError):
        cache.put(k, grid=np.zeros(4))
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    np.testing.assert_array_equal(ArrayCache(tmp_path).get(k)["grid"], np.arange(4.0))


def test_code_version_of_a_baseline_covers_the_shared_helpers(tmp_path, monkeypatch):
    """A change in baselines/common/ retires the cached outputs of every baseline that may use it."""
    import importlib.util
    import sys

    from benchmark.adapter import code_version

    pkg = tmp_path / "baselines"
    (pkg / "mymodel").mkdir(parents=True)
    (pkg / "common").mkdir()
    (pkg / "mymodel" / "adapter.py").write_text("class MyAdapter:\n    pass\n")
    (pkg / "common" / "helpers.py").write_text("SCALE = 1.0\n")

    def version() -> str:
        spec = importlib.util.spec_from_file_location("tmp_baseline_adapter", pkg / "mymodel" / "adapter.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "tmp_baseline_adapter", mod)  # inspect finds a class's file there
        spec.loader.exec_module(mod)
        return code_version(mod.MyAdapter)

    before = version()
    assert version() == before
    (pkg / "common" / "helpers.py").write_text("SCALE = 2.0\n")
    assert version() != before
