"""Golden demo regression: numbers on the demo data may only move on purpose.

``golden-small`` is regenerated here (small demo collection, sanity models, afloc-compat@1)
and must equal the committed reference; ``golden-full`` (the main job) is re-summarised from
its stored per-sample records. Update the references with ``python -m benchmark.golden``.
"""

from __future__ import annotations

import json
import re

import pytest

from benchmark.cli.main import main
from benchmark.golden import GOLDEN_DIR, resummarize, small_run
from benchmark.regress import Cell, compare_cells, run_cells

# The demo files are the same bytes on every machine (tests/test_demo_cpu_paths.py), so every
# sanity model, ``random`` (whose noise is keyed on the image bytes) included, must match exactly.
SANITY = "center_prior,random,uniform"
BOX_SETS = ("demo_rsna", "demo_covid_rural", "demo_siim", "demo_ms_cxr", "demo_nih_bbox", "demo_chestx_det10")


def _cells(state: dict, model: str) -> set:
    return {(ds, r["task"], r["metric"], r["category"])
            for ds, by_model in state["results"].items() for r in by_model.get(model, [])}


def test_small_demo_run_matches_golden(tmp_path, capsys):
    golden = GOLDEN_DIR / "golden-small"
    assert (golden / "results.json").is_file(), "run `python -m benchmark.golden small` to create it"
    run = small_run(tmp_path)
    rc = main(["regress", str(run), "--against", str(golden), "--tolerance", "1e-9", "--models", SANITY])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"\b([1-9]\d*)/\1 cells within tolerance", out), out
    res = json.loads((run / "results.json").read_text())
    ref = json.loads((golden / "results.json").read_text())
    for model in SANITY.split(","):
        assert _cells(res, model) == _cells(ref, model) != set()
    # the reference really covers every demo evaluation set and every sanity model
    assert len(res["results"]) == 7 and all(len(m) == 3 for m in res["results"].values())
    assert {m for by_model in res["results"].values() for m in by_model} == set(SANITY.split(","))


def test_regress_would_catch_a_moved_number(tmp_path):
    golden = json.loads((GOLDEN_DIR / "golden-small" / "results.json").read_text())
    cells = run_cells(golden)
    moved = [Cell(c.dataset, c.model, c.task, c.metric, c.category,
                  None if c.value is None else c.value + (1e-6 if i == 0 else 0.0), c.lo, c.hi)
             for i, c in enumerate(c for c in cells if c.value is not None)]
    diffs = compare_cells(moved, [c for c in cells if c.value is not None], 1e-9)
    assert sum(d.status == "drift" for d in diffs) >= 1


@pytest.mark.skipif(not (GOLDEN_DIR / "golden-full" / "results.json").is_file(), reason="no full golden run")
def test_full_demo_run_resummarises_to_golden():
    golden = GOLDEN_DIR / "golden-full"
    state = json.loads((golden / "results.json").read_text())
    again = {**state, "results": resummarize(golden)}
    ref = [c for c in run_cells(state) if c.value is not None]
    diffs = compare_cells(run_cells(again), ref, 1e-9)
    bad = [d for d in diffs if d.status != "ok"]
    assert not bad, bad[:5]
    assert len(diffs) == len(ref) > 0


def _overall(state: dict, dataset: str, model: str, metric: str) -> dict:
    rows = [r for r in state["results"][dataset][model] if r["metric"] == metric and r.get("category") in (None, "all")]
    assert len(rows) == 1, (dataset, model, metric, rows)
    return rows[0]


def test_full_demo_run_keeps_what_the_docs_claim():
    """Regenerating golden-full with other demo weights must be a visible decision: what
    docs/demo.md says the demo shows, and cannot show, is checked here."""
    state = json.loads((GOLDEN_DIR / "golden-full" / "results.json").read_text())
    models = {m for per in state["results"].values() for m in per}
    assert models == {"afloc", "afloc_untrained", "gloria", "gloria_dot", "biovil", "medklip", "convirt",
                      "gradcam:densenet121", "gradcam++:densenet121", "eigencam:densenet121", "recontrast", "rdpp",
                      *SANITY.split(",")}
    # the demo AFLoc model learned zero-shot classification (CI above chance)
    for ds in ("demo_rsna", "demo_chexlocalize"):
        assert _overall(state, ds, "afloc", "auroc")["lo"] > 0.5, ds
    # what it cannot show: AFLoc below the centre prior on CheXlocalize IoU
    chex = [_overall(state, "demo_chexlocalize", m, "iou")["point"] for m in ("afloc", "center_prior")]
    assert chex[0] < chex[1] and round(chex[0], 3) == 0.121 and round(chex[1], 3) == 0.133, chex
    # the "—" cells: Grad-CAM of the demo classifier is zero on every RSNA, COVID Rural and SIIM image,
    # and GLoRIA's and MedKLIP's raw maps never reach CheXlocalize's tuned confidence threshold
    for ds in ("demo_rsna", "demo_covid_rural", "demo_siim"):
        assert _overall(state, ds, "gradcam:densenet121", "iou")["n"] == 0, ds
        assert _overall(state, ds, "gradcam:densenet121", "cnr")["point"] == 0.0, ds
    for m in ("gloria", "medklip", "afloc_untrained"):
        assert _overall(state, "demo_chexlocalize", m, "iou")["n"] == 0, m


def test_full_demo_run_has_the_demo_trained_baselines_and_their_measured_wins():
    """Where each demo-trained baseline beats the centre prior beyond the separate CIs (IoU, CNR on
    the six box/mask sets); everywhere else it does not."""
    state = json.loads((GOLDEN_DIR / "golden-full" / "results.json").read_text())
    wins = {"medklip": {("demo_rsna", "iou"), ("demo_covid_rural", "iou"), ("demo_nih_bbox", "iou"),
                        ("demo_chestx_det10", "iou"), ("demo_rsna", "cnr"), ("demo_covid_rural", "cnr"),
                        ("demo_nih_bbox", "cnr")},
            "biovil": {("demo_covid_rural", "iou"), ("demo_siim", "iou"), ("demo_siim", "cnr")},
            "gloria": {("demo_siim", "cnr")}, "gloria_dot": {("demo_siim", "iou")}, "convirt": {("demo_siim", "iou")},
            "eigencam:densenet121": {("demo_siim", "iou")}, "gradcam:densenet121": {("demo_siim", "cnr")},
            "gradcam++:densenet121": set(),
            # the anomaly detectors flag what differs from the normal phantoms they were trained on
            **{m: {(ds, metric) for ds in ("demo_rsna", "demo_covid_rural", "demo_siim") for metric in ("iou", "cnr")}
               for m in ("recontrast", "rdpp")}}
    for model, expected in wins.items():
        got = set()
        for ds in BOX_SETS:
            for metric in ("iou", "cnr"):
                row, prior = _overall(state, ds, model, metric), _overall(state, ds, "center_prior", metric)
                if row["lo"] is not None and row["lo"] > prior["hi"]:
                    got.add((ds, metric))
        assert got == expected, (model, got ^ expected)


def test_full_demo_run_afloc_beats_its_untrained_start_and_the_centre_prior():
    """The demo AFLoc model against its seed weights (``afloc_untrained``) and the centre prior on the
    separate CIs: ``>`` beyond, ``<`` below beyond, ``~`` overlapping (the paired tests decide those)."""
    state = json.loads((GOLDEN_DIR / "golden-full" / "results.json").read_text())
    expected = {
        "afloc_untrained": {"iou": ">>~>>>", "cnr": ">>~>>>"},
        "center_prior": {"iou": ">>>~~>", "cnr": "><>~~~"},
    }
    for other, by_metric in expected.items():
        for metric, signs in by_metric.items():
            got = ""
            for ds in BOX_SETS:
                a, b = (_overall(state, ds, m, metric) for m in ("afloc", other))
                got += ">" if a["lo"] > b["hi"] else "<" if a["hi"] < b["lo"] else "~"
            assert got == signs, (other, metric, dict(zip(BOX_SETS, got)))


def _paired(tmp_path, model_b: str):
    """``afloc-bench compare`` of the committed afloc records against ``model_b`` (1,000 replicates,
    both resampled with the same images), localization rows by (dataset, metric)."""
    from benchmark.compare import compare_runs

    samples = GOLDEN_DIR / "golden-full" / "samples"
    for model in ("afloc", model_b):
        (tmp_path / model / "samples").mkdir(parents=True)
        for f in samples.glob(f"*__{model}.parquet"):
            (tmp_path / model / "samples" / f.name).symlink_to(f)
    df = compare_runs(tmp_path / "afloc", tmp_path / model_b, metric=["cnr", "iou@0.1", "iou@0.3", "iou@0.5"])
    df = df[(df["category"] == "all") & (df["n"] > 0)].set_index(["dataset", "metric"])
    assert set(df["model_a"]) == {"afloc"} and set(df["model_b"]) == {model_b}
    return df


def _paired_signs(df) -> dict[str, str]:
    """Per dataset, the paired difference's sign per metric (cnr, iou@0.1, @0.3, @0.5): ``+`` CI above
    0, ``-`` below, ``0`` straddling."""
    out = {}
    for ds in (*BOX_SETS, "demo_chexlocalize"):
        out[ds] = "".join("+" if df.loc[(ds, m)]["lo"] > 0 else "-" if df.loc[(ds, m)]["hi"] < 0 else "0"
                          for m in ("cnr", "iou@0.1", "iou@0.3", "iou@0.5"))
    return out


def test_full_demo_run_afloc_against_the_centre_prior_paired_on_the_same_images(tmp_path):
    """Paired on the same images, the demo model is above the centre prior on CNR and IoU at 0.3 and
    0.5 on every box/mask set but COVID Rural's CNR, also where the separate CIs overlap (MS-CXR,
    NIH); on CheXlocalize its CNR is above, its IoU below at 0.1 and level at 0.3 and 0.5."""
    assert _paired_signs(_paired(tmp_path, "center_prior")) == {
        "demo_rsna": "++++", "demo_covid_rural": "-0++", "demo_siim": "++++", "demo_ms_cxr": "+0++",
        "demo_nih_bbox": "++++", "demo_chestx_det10": "++++", "demo_chexlocalize": "+-00"}


def test_full_demo_run_afloc_against_its_untrained_start_paired_on_the_same_images(tmp_path):
    """Paired on the same images, the demo model is above its seed weights on CNR and on IoU at every
    threshold on every set, but at IoU 0.1 on SIIM (level)."""
    signs = _paired_signs(_paired(tmp_path, "afloc_untrained"))
    assert signs == {**{ds: "++++" for ds in (*BOX_SETS, "demo_chexlocalize")}, "demo_siim": "+0++"}


def test_stored_references_name_no_machine_path(tmp_path, monkeypatch):
    """``_store`` writes the run folder and the cache as placeholders, in results.json and in the
    pair records, and leaves the per-sample records untouched."""
    from benchmark.golden import _store

    cache = tmp_path / "cache"
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(cache))
    run = tmp_path / "run"
    (run / "pairs").mkdir(parents=True)
    (run / "samples").mkdir()
    (run / "samples" / "a__m.parquet").write_bytes(b"PAR1")
    state = {"config": {"output": str(run), "n_boot": 3}, "note": f"{cache}x stays",
             "datasets": {"a": {"root": str(cache / "demo" / "a")}}}
    (run / "results.json").write_text(json.dumps(state))
    from benchmark.resources import weights_dir

    shipped = str(weights_dir() / "demo" / "m_demo_1")
    (run / "pairs" / "a__m.json").write_text(json.dumps({"model": {"checkpoint": str(cache / "models" / "m")},
                                                          "shipped": shipped}))
    _store(run, tmp_path / "golden", with_records=True)
    got = json.loads((tmp_path / "golden" / "results.json").read_text())
    assert got["config"] == {"output": "<run>", "n_boot": 3}
    assert got["datasets"]["a"]["root"] == "<cache>/demo/a"
    assert got["note"] == f"{cache}x stays"  # only whole path components are rewritten
    pair = json.loads((tmp_path / "golden" / "pairs" / "a__m.json").read_text())
    assert pair["model"]["checkpoint"] == "<cache>/models/m"
    assert pair["shipped"] == "<package weights>/demo/m_demo_1"
    assert (tmp_path / "golden" / "samples" / "a__m.parquet").read_bytes() == b"PAR1"


def test_committed_references_name_no_machine_path():
    def strings(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)
        elif isinstance(obj, str):
            yield obj

    files = [GOLDEN_DIR / "golden-small" / "results.json", GOLDEN_DIR / "golden-full" / "results.json",
             *sorted((GOLDEN_DIR / "golden-full" / "pairs").glob("*.json"))]
    for f in files:
        absolute = [s for s in strings(json.loads(f.read_text())) if s.startswith("/")]
        assert not absolute, (f.name, absolute[:3])
