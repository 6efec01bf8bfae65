"""`report`: an HTML page with bar charts, tables and overlays drawn from a run's saved grids."""

from __future__ import annotations

import numpy as np
import pytest
import toy

from benchmark.cli.main import main

toy.register()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = toy.make_toy(tmp / "toy_test")
    out = tmp / "run"
    assert toy.run_sanity(root, out) == 0
    return out


def test_run_saves_grids_for_overlays(run_dir):
    with np.load(run_dir / "heatmaps" / "toy_test__center_prior.npz", allow_pickle=False) as z:
        assert z["grid"].shape == (3, 14, 14)
        assert str(z["input_geometry"]) == "letterbox:224"
        assert all(s.startswith("toy/") for s in z["sample_id"])


def test_report_writes_page_and_figures(run_dir, tmp_path):
    assert main(["report", str(run_dir), "-o", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    figs = sorted(p.name for p in (tmp_path / "rep" / "figures").iterdir())
    assert "overlay_toy_test.png" in figs and "bars_peak.png" in figs
    for f in figs:
        assert f"figures/{f}" in page
        assert (tmp_path / "rep" / "figures" / f).stat().st_size > 5000  # a real PNG, not an empty canvas
    assert "<table>" in page and "toy@1" in page


def test_every_model_keeps_one_colour_and_floors_are_distinct_greys():
    from benchmark.figures import ModelStyle

    models = [f"m{i:02d}" for i in range(25)] + ["random", "uniform", "center_prior"]
    style = ModelStyle.for_models(models)
    real = [style.color(m) for m in models[:25]]
    assert len(set(real)) == 25  # no repeats after 9 or 10 models
    floors = {style.color(m) for m in ("random", "uniform", "center_prior")}
    assert len(floors) == 3 and not floors & set(real)
    assert len({style.hatches[m] for m in ("random", "uniform", "center_prior")}) == 3
    again = ModelStyle.for_models(list(reversed(models)))
    assert all(again.color(m) == style.color(m) for m in models)  # the same colour whatever the order given


def _state(rows_by_model):
    return {"protocol": {"id": "x@1"}, "limit": None,
            "results": {"d": {m: rows for m, rows in rows_by_model.items()}}}


def _row(metric, point, category="all", lo=0.0, hi=1.0, n=5):
    return {"task": "grounding", "metric": metric, "category": category, "point": point, "lo": lo, "hi": hi, "n": n}


def test_category_bars_only_where_categories_can_be_compared(tmp_path):
    from benchmark.figures import category_bars

    one = _state({"a": [_row("iou", 0.3), _row("iou", 0.3, "Pneumonia")]})
    assert category_bars(one, "d", "iou", tmp_path / "one.png") is None  # a single category
    zeros = _state({"a": [_row("iou", 0.0, "A"), _row("iou", 0.0, "B")]})
    assert category_bars(zeros, "d", "iou", tmp_path / "zero.png") is None  # nothing to see
    two = _state({"a": [_row("iou", 0.3, "A"), _row("iou", 0.1, "B", lo=None)], "random": [_row("iou", 0.2, "A")]})
    assert category_bars(two, "d", "iou", tmp_path / "two.png").stat().st_size > 5000


def test_overlay_samples_are_chosen_by_score():
    from benchmark.figures import choose_samples

    ids = ["a", "b", "c", "d"]
    scores = {"a": 0.1, "b": 0.9, "c": 0.5}
    assert choose_samples(ids, scores, "best", 2) == ["b", "c"]
    assert choose_samples(ids, scores, "worst", 3) == ["a", "c", "b"]
    assert choose_samples(ids, scores, "random", 2) == choose_samples(ids, scores, "random", 2)
    assert choose_samples(ids, scores, ["d", "a"], 2) == ["d", "a"]
    with pytest.raises(ValueError, match=r"sample ids \['z'\] have no saved maps"):
        choose_samples(ids, scores, ["z"], 1)
    with pytest.raises(ValueError, match="--overlays must be"):
        choose_samples(ids, scores, "nicest", 1)


def test_report_flags_open_bounds_and_missing_maps(run_dir, tmp_path):
    import shutil

    bare = tmp_path / "run"
    shutil.copytree(run_dir, bare)
    shutil.rmtree(bare / "heatmaps")
    assert main(["report", str(bare), "-o", str(tmp_path / "rep"), "--overlays", "worst"]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "No heatmap overlays: the run saved no maps for toy_test" in page
    assert 'id="legend"' in page and page.count('class="legend-item') == 3
    assert main(["report", str(run_dir), "-o", str(tmp_path / "r2"), "--reference", "nope"]) == 2
