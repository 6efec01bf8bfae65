"""`build`: table shape, formats, floors and limit marks."""

from __future__ import annotations

import pytest
import toy

from benchmark.build import build_tables, render
from benchmark.cli.main import main

toy.register()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    root = toy.make_toy(tmp / "toy_test")
    out = {}
    for name, extra in (("full", []), ("limited", ["--limit", "4"])):
        out[name] = tmp / name
        assert toy.run_sanity(root, out[name], *extra) == 0
    return out


def test_one_table_per_dataset_task_with_models_as_rows(runs):
    tables = build_tables([str(runs["full"])], with_paper=False)
    assert [t.title for t in tables] == ["toy_test · classification", "toy_test · grounding"]
    g = tables[1]
    assert g.header == ["model", "center_ratio", "peak"]
    assert [r[0] for r in g.rows] == ["center_prior (floor)", "random (floor)", "uniform (floor)"]
    assert "[" in g.rows[0][1] and "]" in g.rows[0][1]
    assert any("protocol: toy@1" in n for n in g.notes)


def test_limited_runs_are_marked(runs):
    tables = build_tables([str(runs["limited"])], with_paper=False)
    assert all("LIMITED RUN" in t.title for t in tables)


@pytest.mark.parametrize("fmt,needle", [("md", "| model"), ("latex", "\\toprule"), ("html", "<table>")])
def test_formats(runs, fmt, needle):
    text = render(build_tables([str(runs["full"])], with_paper=False), fmt)
    assert needle in text


def test_cli_build(runs, capsys, tmp_path):
    assert main(["build", str(runs["full"]), "--no-paper", "--format", "md"]) == 0
    assert "toy_test · grounding" in capsys.readouterr().out
    assert main(["build", str(tmp_path / "nope")]) == 2


def test_missing_ci_bound_prints_na(tmp_path):
    from benchmark.records import atomic_write_json

    state = {"schema_version": 1, "config": {}, "limit": None, "protocol": {"id": "x@1"}, "datasets": {},
             "results": {"d": {"m": [{"task": "grounding", "metric": "iou", "category": "all", "point": 0.2,
                                      "boot_mean": 0.2, "lo": 0.1, "hi": None, "n": 3}]}}}
    atomic_write_json(tmp_path / "results.json", state)
    t = build_tables([str(tmp_path)], with_paper=False)[0]
    assert t.rows[0][1] == "0.200 [0.100, n/a]"


def _paper_like_run(tmp_path, iou=0.340, iou_lo=0.330, iou_hi=0.350):
    """A run record on RSNA with AFLoc and a floor: cells the paper has (ED Table 1) and some it has not."""
    from benchmark.records import atomic_write_json

    def row(metric, point, lo, hi, category="all"):
        return {"task": "grounding", "metric": metric, "category": category, "point": point, "boot_mean": point,
                "lo": lo, "hi": hi, "n": 40}

    state = {"schema_version": 1, "config": {"prompt_set": "simple"}, "limit": None,
             "protocol": {"id": "afloc-compat@1"}, "harness_version": "0.1.0", "git_commit": "abc",
             "datasets": {"rsna_pneumonia": {"card_version": 1, "split": "test", "n_samples": 40,
                                             "n_loader_skipped": 0, "n_run_skipped": {}}},
             "results": {"rsna_pneumonia": {
                 "afloc": [row("iou", iou, iou_lo, iou_hi), row("dice", 0.5, 0.49, 0.51), row("cnr", 1.2, 1.1, 1.3),
                           row("iou@0.1", 0.3, 0.2, 0.4), row("iou", 0.2, 0.1, 0.3, "Pneumonia")],
                 "center_prior": [row("iou", 0.1, 0.09, 0.11), row("iou@0.1", 0.1, 0.09, 0.11)]}}}
    atomic_write_json(tmp_path / "results.json", state)
    return tmp_path


def test_run_tables_show_headline_metrics_and_paper_columns_only_where_the_paper_has_numbers(tmp_path):
    run = _paper_like_run(tmp_path)
    t = build_tables([str(run)], paper_version="arxiv_v5")[0]
    assert t.header == ["model", "iou", "iou paper", "iou Δ", "dice", "dice paper", "dice Δ", "cnr", "cnr paper",
                        "cnr Δ"]
    afloc = t.rows[0]
    assert afloc[0] == "afloc" and afloc[2] == "0.342 [0.332, 0.350]" and afloc[3] == "-0.002"
    assert t.rows[1][2] == ""  # the floor has no paper value; its column stays for AFLoc's
    full = build_tables([str(run)], paper_version="arxiv_v5", metrics="all")[0]
    assert "iou@0.1" in full.header and "iou@0.1 paper" not in full.header  # no empty paper columns
    assert full.header.index("iou@0.1") > full.header.index("cnr")  # headline first
    plain = build_tables([str(run)], with_paper=False)[0]
    assert plain.header == ["model", "iou", "dice", "cnr"]


def test_paper_layout_tables_put_reproduced_cells_beside_the_published_ones(tmp_path):
    from benchmark.build import paper_layout_tables

    run = _paper_like_run(tmp_path, iou=0.30, iou_lo=0.29, iou_hi=0.31)  # outside the paper's CI
    tables = {t.title: t for t in paper_layout_tables([str(run)], paper_version="arxiv_v5")}
    t = tables["Extended Data Table 1 · arxiv_v5"]
    assert t.header[1:3] == ["RSNA Pneumonia · run", "RSNA Pneumonia · paper"]
    rows = {r[0]: r for r in t.rows}
    assert set(rows) == {"IoU / AFLoc", "Dice / AFLoc", "CNR / AFLoc"}  # rows the run fills, in the paper's labels
    assert rows["IoU / AFLoc"][1] == "0.300 [0.290, 0.310] †" and rows["IoU / AFLoc"][2] == "0.342 (0.332, 0.350)"
    assert rows["IoU / AFLoc"][3] == ""  # COVID Rural was not run
    assert any("rows not in the runs" in n and "GLoRIA" in n for n in t.notes)
    assert not any("Table 2" in title for title in tables)  # AUROC cells: nothing of them in this run


def test_tidy_csv_has_one_row_per_cell_with_the_paper_value(tmp_path, capsys):
    import io

    import pandas as pd

    run = _paper_like_run(tmp_path)
    assert main(["build", str(run), "--format", "csv", "--paper-version", "arxiv_v5"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) == 7 and list(frame.columns[:5]) == ["dataset", "task", "model", "metric", "category"]
    iou = frame[(frame.model == "afloc") & (frame.metric == "iou") & (frame.category == "all")].iloc[0]
    assert iou["paper_value"] == 0.342 and iou["n"] == 40 and iou["paper_table"] == "arxiv_v5/ed_table1"
    assert frame[frame.model == "center_prior"]["paper_value"].isna().all()


def test_latex_is_escaped_for_pdflatex(tmp_path):
    run = _paper_like_run(tmp_path, iou=0.30, iou_lo=0.29, iou_hi=0.31)
    text = render(build_tables([str(run)], paper_version="arxiv_v5"), "latex")
    assert "rsna\\_pneumonia" in text and "center\\_prior" in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    assert "Δ" not in body and "†" not in body and "$\\Delta$" in body and "$^\\dagger$" in body
