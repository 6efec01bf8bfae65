"""`afloc-bench score`: the npz format, streaming, JSON output, errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli.main import main
from benchmark.cli.score import iter_npz_chunks, score_file


def _write(path, n=24, size=48, seed=0, **extra):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 10:30, 12:28] = 1
    masks[:, 20:35, 20:40] += 1
    cats = np.array(["A", "B", "C"])[np.arange(n) % 3]
    arrays = dict(heatmaps=maps, masks=masks, categories=cats)
    arrays.update(extra)
    np.savez_compressed(path, **arrays)
    return maps, masks, cats


def test_cli_writes_json_with_every_metric_and_category(tmp_path, capsys):
    p = tmp_path / "preds.npz"
    _write(p, labels=np.arange(24) % 2, scores=np.linspace(0, 1, 24))
    out = tmp_path / "out" / "res.json"
    rc = main(["score", "--input", str(p), "--protocol", "afloc-compat@1", "--n-boot", "100", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "afloc-compat@1" and res["n"] == 24 and res["n_boot"] == 100
    for m in ("iou", "dice", "cnr", "iou@0.1", "iou@0.5", "dice@0.3"):
        assert set(res["metrics"][m]) == {"all", "A", "B", "C"}
        assert set(res["metrics"][m]["all"]) == {"point", "boot_mean", "lo", "hi", "n"}
    assert "auroc" in res["classification"]
    assert "iou" in capsys.readouterr().out


def test_help_documents_the_format(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    for word in ("heatmaps", "masks", "categories", "labels", "scores", "--native-grid", "margin"):
        assert word in text


def test_streaming_reader_returns_the_array_in_chunks(tmp_path):
    p = tmp_path / "preds.npz"
    maps, _, _ = _write(p, n=10)
    parts = list(iter_npz_chunks(str(p), "heatmaps", 3))
    assert [len(x) for x in parts] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(parts), maps)


def test_chunk_size_does_not_change_results(tmp_path):
    p = tmp_path / "preds.npz"
    _write(p, n=30)
    a = score_file(str(p), "canonical@1", n_boot=50, chunk=4)
    b = score_file(str(p), "canonical@1", n_boot=50, chunk=64)
    assert a["metrics"] == b["metrics"]


def test_native_grid_option_upsamples_grids(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "grids.npz"
    masks = np.zeros((6, 64, 64), np.uint8)
    masks[:, 20:40, 20:40] = 1
    np.savez(p, heatmaps=rng.random((6, 8, 8)).astype(np.float32), masks=masks, categories=np.array(["A"] * 6))
    with pytest.raises(Exception, match="native-grid"):
        score_file(str(p), "afloc-compat@1", n_boot=10)
    res = score_file(str(p), "afloc-compat@1", n_boot=10, native_grid=True)
    assert res["metrics"]["iou"]["all"]["n"] == 6


@pytest.mark.parametrize("bad,msg", [
    (dict(masks=None), "missing"),
    (dict(categories=np.array([1, 2, 3])), "categories"),
    (dict(masks=np.zeros((5, 48, 48), np.uint8)), "masks"),
    (dict(masks=np.zeros((24, 48, 48), np.float32)), "integer"),
    (dict(categories=np.array(["A"] * 24, dtype=object)), "pickle"),
])
def test_bad_inputs_are_data_errors_naming_the_file(tmp_path, capsys, bad, msg):
    p = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    arrays = dict(heatmaps=rng.random((24, 48, 48)).astype(np.float32), masks=np.zeros((24, 48, 48), np.uint8),
                  categories=np.array(["A"] * 24))
    arrays.update(bad)
    np.savez(p, **{k: v for k, v in arrays.items() if v is not None})
    rc = main(["score", "--input", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.npz" in err and msg in err


def test_missing_file_is_reported(tmp_path, capsys):
    assert main(["score", "--input", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err
