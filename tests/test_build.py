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


@pytest.mark.parametrize("fmt,needle", [("md", "| model"), ("csv", "model,center_ratio"),
                                        ("latex", "\\toprule"), ("html", "<table>")])
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
