"""`regress`: a run equal to the reference passes; a moved or missing cell fails and is named."""

from __future__ import annotations

import json
import shutil

import pytest
import toy

from benchmark.cli.main import main
from benchmark.regress import Cell, compare_cells

toy.register()


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    root = toy.make_toy(tmp / "toy_test")
    out = tmp / "run"
    assert toy.run_sanity(root, out) == 0
    return out


def _moved_copy(golden, tmp_path, delta, metric="center_ratio"):
    moved = tmp_path / "moved"
    shutil.copytree(golden, moved)
    res = json.loads((moved / "results.json").read_text())
    for r in res["results"]["toy_test"]["center_prior"]:
        if r["metric"] == metric:
            r["point"] += delta
    (moved / "results.json").write_text(json.dumps(res))
    return moved


def test_identical_run_passes(golden, capsys):
    assert main(["regress", str(golden), "--against", str(golden), "--tolerance", "1e-12"]) == 0
    assert "within tolerance" in capsys.readouterr().out


def test_moved_cell_fails_and_is_named(golden, tmp_path, capsys):
    moved = _moved_copy(golden, tmp_path, 0.05)
    assert main(["regress", str(moved), "--against", str(golden), "--tolerance", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "DRIFT" in out and "center_ratio" in out and "center_prior" in out
    # within tolerance passes
    assert main(["regress", str(moved), "--against", str(golden), "--tolerance", "0.1"]) == 0


def test_ci_tolerance_uses_reference_interval():
    ref = [Cell("d", "m", "grounding", "iou", "all", 0.5, 0.45, 0.55)]
    inside = [Cell("d", "m", "grounding", "iou", "all", 0.54)]
    outside = [Cell("d", "m", "grounding", "iou", "all", 0.56)]
    assert compare_cells(inside, ref, "ci")[0].status == "ok"
    assert compare_cells(outside, ref, "ci")[0].status == "drift"
    printed = [Cell("d", "m", None, "iou", "all", 0.512, digits=3)]
    assert compare_cells([Cell("d", "m", "grounding", "iou", "all", 0.5124)], printed, "ci")[0].status == "ok"
    assert compare_cells([Cell("d", "m", "grounding", "iou", "all", 0.5126)], printed, "ci")[0].status == "drift"


def test_missing_cell_fails(golden, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(golden, partial)
    res = json.loads((partial / "results.json").read_text())
    del res["results"]["toy_test"]["uniform"]
    (partial / "results.json").write_text(json.dumps(res))
    assert main(["regress", str(partial), "--against", str(golden)]) == 1
    assert "MISSING" in capsys.readouterr().out


def test_bad_reference_is_a_clear_error(golden, tmp_path, capsys):
    assert main(["regress", str(golden), "--against", str(tmp_path / "nope")]) == 2
    assert "no results.json" in capsys.readouterr().err


def _fake_run(tmp_path, value, prompt_set="simple"):
    from benchmark.records import atomic_write_json

    state = {"schema_version": 1, "config": {"prompt_set": prompt_set}, "limit": None,
             "results": {"ms_cxr": {"afloc": [
                 {"task": "grounding", "metric": m, "category": "all", "point": v, "boot_mean": v, "lo": None,
                  "hi": None, "n": 1153} for m, v in (("iou", value), ("dice", 0.418), ("cnr", 1.351))]}}}
    out = tmp_path / f"fake_{value}_{prompt_set}"
    atomic_write_json(out / "results.json", state)
    return out


def test_regress_against_a_paper_table(tmp_path, capsys):
    # arXiv v5 Table 1 prints AFLoc's MS-CXR IoU with the simple prompts as 0.289 (0.262, 0.314)
    args = ["--against", "paper:arxiv_v5/table1", "--models", "afloc", "--datasets", "ms_cxr*"]
    ok_run = _fake_run(tmp_path, 0.30)
    assert main(["regress", str(ok_run), *args, "--datasets", "ms_cxr[prompt=simple]"]) == 0
    far = _fake_run(tmp_path, 0.40)
    assert main(["regress", str(far), *args, "--datasets", "ms_cxr[prompt=simple]"]) == 1
    out = capsys.readouterr().out
    assert "DRIFT" in out and "ms_cxr[prompt=simple]" in out
    # a run made with the simple prompts lacks the paper's precise-prompt cells
    assert main(["regress", str(ok_run), *args]) == 1
    assert "MISSING" in capsys.readouterr().out


def test_per_model_tolerances_stored_beside_a_golden_run(tmp_path, capsys):
    """``tolerance.json`` beside a reference gives each model its measured tolerance; ``--tolerance``
    overrides it; a model it does not name gets the default."""
    import json
    import shutil

    from benchmark.cli.main import main
    from benchmark.golden import GOLDEN_DIR

    ref = tmp_path / "ref"
    shutil.copytree(GOLDEN_DIR / "golden-small", ref)
    (ref / "tolerance.json").write_text(json.dumps({"default": 1e-9, "models": {"random": 0.5}}))
    state = json.loads((ref / "results.json").read_text())

    def moved(by_model: dict[str, float]) -> str:
        run = json.loads(json.dumps(state))
        for per in run["results"].values():
            for model, rows in per.items():
                for r in rows:
                    if r.get("point") is not None:
                        r["point"] += by_model.get(model, 0.0)
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "results.json").write_text(json.dumps(run))
        return str(tmp_path / "run")

    assert main(["regress", moved({"random": 0.1}), "--against", str(ref)]) == 0
    assert "random 0.5" in capsys.readouterr().out
    assert main(["regress", moved({"random": 0.1, "uniform": 1e-6}), "--against", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "uniform" in out and "DRIFT" in out and "random" not in out.split("cells within tolerance")[0]
    assert main(["regress", moved({"random": 0.1}), "--against", str(ref), "--tolerance", "1e-9"]) == 1
    (ref / "tolerance.json").write_text(json.dumps({"models": {"random": 0.5}}))
    with pytest.raises(ValueError, match="tolerance.json: expected"):
        main(["regress", moved({}), "--against", str(ref), "--debug"])
