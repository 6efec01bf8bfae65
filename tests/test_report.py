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
