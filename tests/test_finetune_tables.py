"""Fine-tuning results in `build` (Supplementary Table 7's layout, the paper's value beside) and in
`regress` (against the paper's cells and against golden fine-tuning folders).

The run folders are written with the fine-tuning code's own record pieces: the test block by
``seg.bootstrap_ci``, the seeds folder's ``summary.json`` by ``runs.run_seeds``, so their keys are
the ones ``afloc-bench finetune seg`` writes."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest

from benchmark.build import finetune_tables, render
from benchmark.cli.main import main
from benchmark.finetune import seg
from benchmark.finetune.config import load_config
from benchmark.finetune.runs import run_seeds
from benchmark.records import atomic_write_json
from benchmark.regress import finetune_runs

TEST_IDS = [f"img{i:02d}" for i in range(8)]
SPREAD = np.array([-0.04, -0.02, 0.0, 0.0, 0.0, 0.0, 0.02, 0.04])  # mean 0: the run's Dice is its target


def _record(model: str, dataset: str, fraction: float, seed: int, dice: float, config=None) -> dict:
    """A seed's results.json as ``seg.run_seg`` writes it, with per-image Dice averaging ``dice``."""
    cfg = config or load_config("demo")
    d = dice + SPREAD
    positive = np.arange(len(d)) % 2 == 0
    test = seg.bootstrap_ci({"dice": d, "iou": d / (2 - d), "dice_positive": np.where(positive, d, np.nan),
                             "iou_positive": np.where(positive, d / (2 - d), np.nan)}, TEST_IDS, 50)
    return {"format": seg.FORMAT, "format_version": 1, "date": "2026-01-01T00:00:00Z", "task": "segmentation",
            "protocol": "MGCA SIIM segmentation fine-tuning (U-Net, segmentation_models_pytorch)",
            "model": model, "checkpoint": None, "dataset": dataset, "fraction": fraction, "seed": seed,
            "device": "cpu", "config": cfg.to_dict(), "splits": {},
            "ids": {"test": {"file": "ids/test.txt", "images": len(TEST_IDS), "patients": len(TEST_IDS),
                             "sha256": "ab" * 32, "positive_images": 4}},
            "encoder": {}, "epochs": [{"epoch": 1, "val_dice": 0.5}], "best_epoch": 1, "selection": {},
            "stopped": "max_epochs (1)", "test": test, "wall_s": 1.0, "git_commit": None, "environment": {}}


def one_seed(folder, model, fraction, dice, dataset="siim_pneumothorax", seed=0, config=None):
    atomic_write_json(folder / "results.json", _record(model, dataset, fraction, seed, dice, config))
    return folder


def seeds(folder, model, fraction, dices, dataset="siim_pneumothorax"):
    """A ``--seeds`` folder: seed<S>/results.json and summary.json (``runs.run_seeds``)."""
    values = dict(zip(range(len(dices)), dices))

    def run_one(seed, out, **_):
        out.mkdir(parents=True, exist_ok=True)
        rec = _record(model, dataset, fraction, seed, values[seed])
        atomic_write_json(out / "results.json", rec)
        return rec

    run_seeds(run_one, seg.FORMAT, seg.METRICS, list(values), folder)
    return folder


@pytest.fixture()
def runs(tmp_path):
    """AFLoc at 1 % (one seed), 10 % (three seeds) and 100 %; GLoRIA at 100 %; the random control at 10 %."""
    root = tmp_path / "ft"
    one_seed(root / "afloc_1", "afloc", 0.01, 0.77)
    seeds(root / "afloc_10", "afloc", 0.1, [0.70, 0.80, 0.75])
    one_seed(root / "afloc_100", "afloc", 1.0, 0.81)
    one_seed(root / "gloria_100", "gloria", 1.0, 0.76)
    seeds(root / "random_10", "random", 0.1, [0.40, 0.50, 0.45])
    return root


def test_folders_are_read_as_written(runs):
    (s,) = finetune_runs(runs / "afloc_10")
    assert s.seeds == [0, 1, 2] and s.metrics["dice"]["value"] == pytest.approx(0.75)
    assert s.metrics["dice"]["sd"] == pytest.approx(0.05) and s.metrics["dice"]["n"] == len(TEST_IDS)
    assert [r.path for r in finetune_runs(runs)] == [str(runs / n) for n in
                                                      ("afloc_1", "afloc_10", "afloc_100", "gloria_100", "random_10")]
    assert finetune_runs(runs / "afloc_10" / "seed1")[0].seeds == [1]
    assert finetune_runs(runs / "nope") is None


def test_build_table_has_supp_table7_layout_with_the_paper_beside(runs):
    (t,) = finetune_tables(finetune_runs(runs))
    assert t.title.startswith("Supplementary Table 7 · nbme_2026 · dice")
    assert t.header == ["Encoder", "1% · run", "1% · paper", "10% · run", "10% · paper", "100% · run", "100% · paper"]
    rows = {r[0]: r[1:] for r in t.rows}
    assert list(rows) == ["GLoRIA", "AFLoc", "random init (no pretraining)"]  # the paper's order, controls last
    assert re.fullmatch(r"0\.770 \[0\.7\d\d, 0\.7\d\d\]", rows["AFLoc"][0]) and rows["AFLoc"][1] == "0.772"
    assert rows["AFLoc"][2] == "0.750 ± 0.050" and rows["AFLoc"][3] == "0.781"
    assert rows["AFLoc"][4].startswith("0.810 [") and rows["AFLoc"][5] == "0.809"
    assert rows["GLoRIA"][:2] == ["", "0.567"] and rows["GLoRIA"][4].startswith("0.760")
    assert rows["random init (no pretraining)"] == ["", "", "0.450 ± 0.050", "", "", ""]
    assert any("rows not in the runs (left out): ConVIRT, BioViL, MedKLIP" in n for n in t.notes)
    assert not any("columns not in the runs" in n for n in t.notes)


def test_fractions_without_runs_are_left_out_and_named(tmp_path):
    seeds(tmp_path / "a", "afloc", 0.1, [0.7, 0.8])
    one_seed(tmp_path / "b", "afloc", 1.0, 0.8)
    (t,) = finetune_tables(finetune_runs(tmp_path / "a") + finetune_runs(tmp_path / "b"))
    assert t.header == ["Encoder", "10% · run", "10% · paper", "100% · run", "100% · paper"]
    assert any(n == "columns not in the runs (left out): 1%" for n in t.notes)
    (plain,) = finetune_tables(finetune_runs(tmp_path / "a"), with_paper=False)
    assert plain.header == ["Encoder", "10%"] and plain.rows == [["AFLoc", "0.750 ± 0.071"]]


def test_demo_runs_get_the_paper_beside_with_a_note(tmp_path):
    seeds(tmp_path / "a", "afloc", 1.0, [0.6, 0.7], dataset="demo_siim")
    (t,) = finetune_tables(finetune_runs(tmp_path / "a"))
    assert t.rows == [["AFLoc", "0.650 ± 0.071", "0.809"]]
    assert any("runs are on demo_siim" in n and "siim_pneumothorax" in n for n in t.notes)


def test_unlike_or_duplicate_runs_are_refused(tmp_path):
    one_seed(tmp_path / "a", "afloc", 1.0, 0.8)
    one_seed(tmp_path / "b", "afloc", 1.0, 0.7)
    with pytest.raises(ValueError, match="afloc at 100% on siim_pneumothorax .* is in both"):
        finetune_tables(finetune_runs(tmp_path))
    other = load_config("demo")
    other.lr = 0.5
    one_seed(tmp_path / "c", "afloc", 0.1, 0.7, config=other)
    with pytest.raises(ValueError, match="config differs in lr"):
        finetune_tables(finetune_runs(tmp_path / "a") + finetune_runs(tmp_path / "c"))
    assert finetune_tables(finetune_runs(tmp_path / "a") + finetune_runs(tmp_path / "c"), allow_mismatch=True)


def test_cli_build_md_csv_latex(runs, capsys):
    import pandas as pd

    assert main(["build", str(runs), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "### Supplementary Table 7" in out and "| AFLoc" in out and "0.750 ± 0.050" in out
    assert main(["build", str(runs / "afloc_10"), str(runs / "afloc_1"), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    dice = frame[(frame.metric == "dice")].set_index("model")
    assert dice.at["afloc[finetune=10%]", "paper_value"] == 0.781 and dice.at["afloc[finetune=10%]", "n_seeds"] == 3
    assert dice.at["afloc[finetune=10%]", "sd"] == pytest.approx(0.05)
    assert dice.at["afloc[finetune=1%]", "lo"] < 0.77 < dice.at["afloc[finetune=1%]", "hi"]
    assert len(frame) == 8  # 2 runs × 4 metrics
    assert main(["build", str(runs), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert "\\toprule" in body and "$\\pm$" in body and "±" not in body
    assert "iou" not in render(finetune_tables(finetune_runs(runs)), "md")
    assert main(["build", str(runs / "afloc_10"), "--metrics", "all", "--no-paper"]) == 0
    assert capsys.readouterr().out.count("### fine-tuning · siim_pneumothorax · finetune-seg") == 4


def test_regress_against_the_paper_passes_within_tolerance_and_names_a_moved_cell(tmp_path, capsys):
    paper = {0.01: 0.772, 0.1: 0.781, 1.0: 0.809}
    for f, v in paper.items():
        seeds(tmp_path / f"afloc_{f}", "afloc", f, [v - 0.01, v + 0.01])
    args = [str(tmp_path / f"afloc_{f}") for f in paper]
    assert main(["regress", *args, "--against", "paper:nbme_2026/supp_table7", "--models", "afloc",
                 "--tolerance", "0.02"]) == 0
    assert "3/3 cells within tolerance" in capsys.readouterr().out
    # the paper's other encoders were not run: missing cells fail unless --models keeps AFLoc's only
    assert main(["regress", str(tmp_path), "--against", "paper:nbme_2026/supp_table7", "--tolerance", "0.02"]) == 1
    assert "FAIL gloria at 1% on siim_pneumothorax, dice: missing" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "afloc_0.1")
    seeds(tmp_path / "afloc_0.1", "afloc", 0.1, [0.68, 0.70])
    assert main(["regress", str(tmp_path), "--against", "paper:nbme_2026/supp_table7", "--models", "afloc",
                 "--tolerance", "0.02"]) == 1
    out = capsys.readouterr().out
    assert "FAIL afloc at 10% on siim_pneumothorax, dice: 0.6900 against 0.7810" in out and "DRIFT" in out
    assert "2/3 cells within tolerance" in out


def test_regress_against_a_golden_finetune_folder(runs, tmp_path, capsys):
    golden = runs / "afloc_10"
    assert main(["regress", str(golden), "--against", str(golden), "--tolerance", "0"]) == 0
    assert "4/4 cells within tolerance" in capsys.readouterr().out
    moved = seeds(tmp_path / "moved", "afloc", 0.1, [0.70, 0.80, 0.85])  # mean 0.783: inside one SD of 0.75
    assert main(["regress", str(moved), "--against", str(golden), "--all-rows"]) == 0
    assert "seed SD ±0.05 (3 seeds)" in capsys.readouterr().out
    assert main(["regress", str(moved), "--against", str(golden), "--tolerance", "0.01"]) == 1
    assert "FAIL afloc at 10% on siim_pneumothorax, dice: 0.7833 against 0.7500" in capsys.readouterr().out
    # a golden folder of several runs: each run meets its own model and fraction
    assert main(["regress", str(runs / "afloc_1"), str(runs / "random_10"), "--against", str(runs),
                 "--models", "afloc,random", "--tolerance", "0"]) == 1  # afloc at 10 % / 100 % not given
    out = capsys.readouterr().out
    assert "FAIL afloc at 100% on siim_pneumothorax, dice: missing" in out and "8/16" in out
    # unlike runs and non-fine-tuning folders are clear errors
    other = load_config("demo")
    other.lr = 0.5
    one_seed(tmp_path / "lr", "afloc", 0.1, 0.75, config=other)
    assert main(["regress", str(tmp_path / "lr"), "--against", str(golden)]) == 2
    assert "config differs in lr" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "results.json").write_text(json.dumps({"results": {}}))
    assert main(["regress", str(golden), "--against", str(tmp_path / "plain")]) == 2
    assert "not a fine-tuning run folder" in capsys.readouterr().err


def test_classification_runs_get_a_table_without_paper_columns(tmp_path):
    from benchmark.finetune import cls

    labels = np.array([0, 1] * 4)
    for mode, model in (("linear", "afloc"), ("linear", "random"), ("full", "afloc")):
        rec = _record(model, "demo_rsna", 0.1, 0, 0.5, load_config("demo", task="cls"))
        rec.update(format=cls.FORMAT, task="classification", mode=mode,
                   test=cls.auroc_ci(labels, labels * 0.5 + 0.25, TEST_IDS, 50))
        atomic_write_json(tmp_path / f"{model}_{mode}" / "results.json", rec)
    tables = finetune_tables(finetune_runs(tmp_path))
    assert [t.title for t in tables] == ["fine-tuning · demo_rsna · finetune-cls/full · auroc",
                                         "fine-tuning · demo_rsna · finetune-cls/linear · auroc"]
    assert tables[1].header == ["Encoder", "10%"]
    perfect = "1.000 [1.000, 1.000]"
    assert tables[1].rows == [["AFLoc", perfect], ["random init (no pretraining)", perfect]]


def test_report_shows_the_finetune_tables_alone_and_beside_a_run(runs, tmp_path, capsys):
    """`afloc-bench report FT_DIR` is a page of Supplementary Table 7's layout; `report RUN --finetune
    FT_DIR` adds it to the run's page; a folder without fine-tuning runs is named."""
    page = tmp_path / "ft_page"
    assert main(["report", str(runs), "-o", str(page)]) == 0
    html = (page / "index.html").read_text()
    assert "Limited-label fine-tuning" in html and "<h2>Models</h2>" not in html
    assert re.search(r"AFLoc.*0\.772", html, re.S)  # the paper's 1 % cell beside the reproduced one
    assert "0.770" in html and "0.750 ± 0.050" in html  # one seed's value; three seeds' mean ± SD
    from pathlib import Path

    state = json.loads((Path(__file__).resolve().parents[1] / "results" / "demo" / "golden-full" /
                        "results.json").read_text())  # one dataset and two models of it: a small run's page
    state["results"] = {"demo_rsna": {m: state["results"]["demo_rsna"][m] for m in ("afloc", "random")}}
    atomic_write_json(tmp_path / "small_run" / "results.json", state)
    golden = str(tmp_path / "small_run")
    both = tmp_path / "both"
    assert main(["report", golden, "--finetune", str(runs), "-o", str(both)]) == 0
    html = (both / "index.html").read_text()
    assert "<h2>Models</h2>" in html and "Limited-label fine-tuning" in html and "0.750 ± 0.050" in html
    capsys.readouterr()
    assert main(["report", golden, "--finetune", golden, "-o", str(tmp_path / "bad")]) == 2
    assert "no fine-tuning run" in capsys.readouterr().err
