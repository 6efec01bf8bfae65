"""The demo weights ship with the package: every model runs on them without training, and a damaged
file is named, never loaded."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmark.training import demo_weights as dw
from benchmark.training.ship import demo_targets

MAX_TOTAL_BYTES = 30 * 1024 * 1024


def test_every_demo_weights_id_is_shipped_with_its_build_record():
    total = 0
    for wid, (target, _config) in sorted(demo_targets().items()):
        folder = dw.shipped_demo_weights(wid)
        assert folder is not None, f"{wid} ({target}) is not shipped: python -m benchmark.training.ship {wid}"
        build = json.loads((folder / dw.BUILD_FILE).read_text())
        assert build["weights_id"] == wid and build["target"] == target
        assert build["commit"] and build["environment"]["cpu_simd"] and build["command"]
        assert "optimizer.safetensors" not in build["files"]
        assert not any(name.endswith((".pt", ".pth", ".ckpt", ".bin")) for name in build["files"]), build["files"]
        total += sum((folder / name).stat().st_size for name in build["files"])
    assert total <= MAX_TOTAL_BYTES, f"shipped demo weights take {total / 2**20:.1f} MiB (at most 30)"


def test_running_a_demo_model_trains_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "empty-cache"))

    def no_training(*_a, **_k):
        raise AssertionError("a demo model was trained on first use")

    monkeypatch.setattr(dw, "build_once", no_training)
    for wid, (target, config) in demo_targets().items():
        assert dw.ensure_demo_weights(wid, target, config=config) == dw.shipped_dir(wid)
    assert not (tmp_path / "empty-cache" / "models").exists()


def test_the_untrained_control_builds_nothing_either(monkeypatch, tmp_path):
    """``afloc_untrained`` takes its vocabulary from the shipped demo model: the main job leaves no
    ``<cache>/models`` (the demo vocabulary used to be written there on first use)."""
    from benchmark.adapter import build_adapter

    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "empty-cache"))
    adapter = build_adapter("afloc_untrained")
    adapter.load(None, "cpu")
    assert adapter.engine.model.tokenizer is not None
    assert not (tmp_path / "empty-cache" / "models").exists()


def test_a_damaged_shipped_file_is_named(monkeypatch, tmp_path):
    wid, (target, _config) = sorted(demo_targets().items())[0]
    copy = tmp_path / "weights"
    shutil.copytree(dw.shipped_dir(wid), copy / "demo" / wid.replace("-", "_"))
    monkeypatch.setattr(dw, "weights_dir", lambda: copy)
    build = json.loads((dw.shipped_dir(wid) / dw.BUILD_FILE).read_text())
    name = next(n for n in build["files"] if n.endswith(".safetensors"))
    victim = copy / "demo" / wid.replace("-", "_") / name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(dw.CheckpointError, match=f"{name}.*does not match the sha256"):
        dw.ensure_demo_weights(wid, target)
    victim.unlink()
    with pytest.raises(dw.CheckpointError, match="missing from the shipped demo weights"):
        dw.ensure_demo_weights(wid, target)


def test_without_a_shipped_set_the_recipe_builds_one_once(monkeypatch, tmp_path):
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dw, "weights_dir", lambda: tmp_path / "nothing-shipped")
    calls = []

    class Job:
        @staticmethod
        def build_demo(work, quiet=True, config="demo"):
            calls.append(work)
            (work / "out").mkdir()
            (work / "out" / "model.safetensors").write_bytes(b"x")
            return work / "out"

        @staticmethod
        def demo_complete(folder):
            return (folder / "model.safetensors").is_file()

    monkeypatch.setattr(dw.training, "get", lambda name: Job)
    first = dw.ensure_demo_weights("toy-demo-1", "toy")
    again = dw.ensure_demo_weights("toy-demo-1", "toy")
    assert first == again == tmp_path / "cache" / "models" / "toy-demo-1" and len(calls) == 1


def test_shipped_files_name_no_machine_path():
    import re

    for wid in sorted(demo_targets()):
        folder = dw.shipped_dir(wid)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".yaml"):
                found = re.findall(r"(?:^|[\"'\s])(/(?:tmp|home|root|work|Users|mnt)/[^\"'\s]*)", path.read_text())
                assert not found, f"{path}: names {found[:3]}"
