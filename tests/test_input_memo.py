"""Preprocessed inputs are shared by the passes that read files the same way, within one dataset:
the same batches, with each file decoded once."""

from __future__ import annotations

import cv2
import numpy as np

from benchmark.adapter import build_adapter
from benchmark.io import images as io_images
from benchmark.run.images import InputMemo, image_batches


def _files(tmp_path, n=5):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (40 + i, 50), dtype=np.uint8))
        paths.append(str(p))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    return paths + [str(tmp_path / "bad.png")]


def _passes(adapter, paths, memo):
    return list(image_batches(adapter, paths, batch_size=2, num_workers=0, device="cpu", desc="t",
                              progress=False, memo=memo))


def test_a_second_pass_reads_no_file_and_gives_the_same_batches(tmp_path, monkeypatch):
    paths = _files(tmp_path)
    reads = []
    real = io_images.read_image
    monkeypatch.setattr(io_images, "read_image", lambda p, recipe="canonical": reads.append(p) or real(p, recipe))
    memo = InputMemo()
    memo.start("demo_x")
    first = _passes(build_adapter("center_prior"), paths, memo)
    assert len(reads) == len(paths)
    again = _passes(build_adapter("uniform"), paths, memo)  # another model, the same way of reading
    assert len(reads) == len(paths) and memo.hits == len(paths)
    assert [b[0] for b in first] == [b[0] for b in again] and [b[2] for b in first] == [b[2] for b in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
        assert a[3] == b[3]
    assert any(b[3] for b in again), "the unreadable file is reported on every pass"
    memo.start("demo_y")  # another dataset: nothing kept
    _passes(build_adapter("random"), paths, memo)
    assert len(reads) == 2 * len(paths)


def test_the_budget_bounds_what_is_kept(tmp_path):
    paths = _files(tmp_path)
    memo = InputMemo(budget=0)
    memo.start("demo_x")
    _passes(build_adapter("center_prior"), paths, memo)
    _passes(build_adapter("center_prior"), paths, memo)
    assert memo.hits == 1  # only the unreadable file's report (no bytes) was kept


def test_take_of_one_repeated_row_is_a_view_with_the_same_values():
    import torch

    from benchmark.adapter import Adapter

    emb = {"words": torch.arange(24, dtype=torch.float32).reshape(3, 2, 4), "n": torch.tensor([5, 6, 7])}
    got = Adapter.take(emb, [1, 1, 1, 1])
    assert got["words"].shape == (4, 2, 4) and got["words"].data_ptr() == emb["words"][1].data_ptr()
    assert torch.equal(got["words"], emb["words"][[1, 1, 1, 1]]) and got["n"].tolist() == [6] * 4
    assert torch.equal(Adapter.take(emb["words"], [-1, -1]), emb["words"][[2, 2]])
    mixed = Adapter.take(emb["words"], [2, 0])
    assert torch.equal(mixed, emb["words"][[2, 0]]) and mixed.data_ptr() != emb["words"].data_ptr()


def test_models_that_differ_only_in_their_maps_share_their_scores():
    from benchmark.adapter import build_adapter

    gloria, dot = build_adapter("gloria"), build_adapter("gloria_dot")
    assert dot.options.get("heatmap") == "dot"
    assert gloria.output_identity("score") == dot.output_identity("score")
    assert gloria.output_identity("heatmap") != dot.output_identity("heatmap")
    dot.options["keep_short_sentences"] = "true"  # changes the prompts: no longer the same scores
    assert gloria.output_identity("score") != dot.output_identity("score")
    cams = [build_adapter(n) for n in ("gradcam:densenet121", "gradcam++:densenet121", "eigencam:densenet121")]
    assert len({a.output_identity("score") for a in cams}) == 1
    assert len({a.output_identity("heatmap") for a in cams}) == 3
    assert build_adapter("afloc").output_identity("score") == "afloc"
