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


@pytest.mark.parametrize("protocol,native", [("canonical@1", False), ("afloc-compat@1", False),
                                             ("afloc-compat@1", True)])
def test_threads_do_not_change_results(tmp_path, protocol, native):
    p = tmp_path / "preds.npz"
    if native:
        rng = np.random.default_rng(3)
        masks = np.zeros((23, 64, 64), np.uint8)
        masks[:, 10:30, 20:50] = 1
        np.savez(p, heatmaps=rng.random((23, 8, 8)).astype(np.float32), masks=masks,
                 categories=np.array(["a", "b"] * 11 + ["a"]))
    else:
        _write(p, n=23)
    one = score_file(str(p), protocol, n_boot=40, chunk=3, threads=1, native_grid=native)
    many = score_file(str(p), protocol, n_boot=40, chunk=3, threads=3, native_grid=native)
    assert one["metrics"] == many["metrics"] and json.dumps(one, sort_keys=True) == json.dumps(many, sort_keys=True)


def test_ordered_map_keeps_order_bounds_work_and_raises_in_turn():
    import threading
    import time

    from benchmark.parallel import ordered_map

    started, lock, peak, live = [], threading.Lock(), [0], [0]

    def slow(i):
        with lock:
            started.append(i)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        with lock:
            live[0] -= 1
        if i == 17:
            raise ValueError("item 17")
        return i * i

    out = []
    with pytest.raises(ValueError, match="item 17"):
        for v in ordered_map(slow, range(40), threads=3, window=4):
            out.append(v)
    assert out == [i * i for i in range(17)]  # every earlier result, in order, before the error
    assert peak[0] <= 3 and max(started) < 17 + 4 + 1  # bounded look-ahead
    assert list(ordered_map(lambda x: -x, range(5), threads=1)) == [0, -1, -2, -3, -4]


def test_bad_threads_flag_is_a_one_line_error(tmp_path, capsys):
    from benchmark.cli.main import main

    p = tmp_path / "preds.npz"
    _write(p, n=4)
    with pytest.raises(SystemExit):
        main(["score", "--input", str(p), "--threads", "0"])
    assert "--threads: expected a positive integer, not '0'" in capsys.readouterr().err


def test_torch_path_counts_like_numpy_and_cnr_agrees():
    from benchmark.geometry.afloc import afloc_margin_valid
    from benchmark.metrics import AFLOC_THRESHOLDS
    from benchmark.protocols.afloc_compat import afloc_scores
    from benchmark.protocols.afloc_torch import afloc_scores_torch

    rng = np.random.default_rng(5)
    maps = rng.standard_normal((12, 224, 224)).astype(np.float32)
    masks = np.zeros((12, 224, 224), np.uint8)
    masks[:, 60:140, 50:120] = 1
    masks[:, 100:160, 90:170] += 1  # overlapping boxes hold 2: Dice sums raw values, CNR leaves them out
    masks[4] = 0  # no lesion: IoU/Dice/hit NaN
    masks[5, :, :] = 0
    masks[5, :5, :5] = 1  # a lesion only in the margin
    maps[6] = 0.25  # constant map
    maps[:, ~afloc_margin_valid((224, 224))] = np.nan
    ref = afloc_scores(maps.copy(), masks, AFLOC_THRESHOLDS)
    got = afloc_scores_torch(maps.copy(), masks, AFLOC_THRESHOLDS, "cpu")
    assert set(got) == set(ref)
    for k in ref:
        if k == "cnr":
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6)
            assert np.array_equal(np.isnan(got[k]), np.isnan(ref[k]))
        else:
            assert np.array_equal(got[k], ref[k], equal_nan=True), k
    maps[7, 100, 100] = np.inf  # infinite pixels follow the official rules of the NumPy path
    got = afloc_scores_torch(maps, masks, AFLOC_THRESHOLDS, "cpu")
    assert np.isnan(got["cnr"][7]) and np.array_equal(got["cnr"], afloc_scores(maps, masks, AFLOC_THRESHOLDS)["cnr"],
                                                      equal_nan=True)


def test_score_device_flag(tmp_path, capsys):
    p = tmp_path / "preds.npz"
    _write(p, n=20)
    a = score_file(str(p), "afloc-compat@1", n_boot=30, chunk=6)
    b = score_file(str(p), "afloc-compat@1", n_boot=30, chunk=6, device="cpu")
    for name, rows in a["metrics"].items():
        for cat, row in rows.items():
            tol = 1e-6 if name.startswith("cnr") else 0
            for key in ("point", "boot_mean", "lo", "hi"):
                x, y = row[key], b["metrics"][name][cat][key]
                assert (x is None and y is None) or abs(x - y) <= tol, (name, cat, key)
    assert main(["score", "--input", str(p), "--protocol", "canonical@1", "--device", "cpu"]) != 0
    assert "--device: the torch path scores afloc-compat@1 only" in capsys.readouterr().err
