"""docs/extending.md's plugin, installed from a temporary folder through the entry point and run.

The plugin's files are the code blocks of docs/extending.md (``file=...``), so the documented
example cannot drift from what works. "Installing" is a ``.dist-info`` folder with the entry point
beside the package on ``sys.path``, which is what ``pip install`` leaves behind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmark.cli.main import main
from benchmark.registry import models, reload_manifests

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```", re.M | re.S)


def _install(folder: Path, files: dict[str, str], entry_points: dict[str, str], dist: str = "brightness-plugin"):
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[afloc_bench.plugins]\n" +
                                           "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path for plugin packages; the registry forgets them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith(("brightness_plugin", "broken_plugin"))]:
        del sys.modules[mod]
    monkeypatch.undo()
    reload_manifests()


def test_the_documented_plugin_installs_lists_and_runs(plugin_path, tmp_path, capsys, monkeypatch):
    blocks = dict(BLOCK.findall(DOC.read_text()))
    assert {"brightness_plugin/adapter.py", "brightness_plugin/manifest.yaml", "pyproject.toml"} <= set(blocks)
    section = blocks["pyproject.toml"].split('[project.entry-points."afloc_bench.plugins"]')[1]
    entry_points = dict(re.findall(r'^(\w+) = "([^"]+)"', section, re.M))
    assert entry_points == {"brightness": "brightness_plugin"}
    files = {k: v for k, v in blocks.items() if k.startswith("brightness_plugin/")}
    _install(plugin_path, {**files, "brightness_plugin/__init__.py": ""}, entry_points)
    reload_manifests()

    assert "brightness_plugin.adapter" not in sys.modules  # listed without importing it
    assert main(["ls", "models", "brightness"]) == 0
    assert "brightness [grounding, zeroshot_cls]: the brightest regions" in capsys.readouterr().out
    assert "brightness_plugin.adapter" not in sys.modules
    assert models.entry("brightness").plugin["distribution"] == "brightness-plugin"

    from benchmark.demo import generate

    demo = tmp_path / "demo"
    generate(demo, seed=0, n_train=2, n_test=6, datasets=["rsna_pneumonia"], progress=False, workers=1)
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(demo))
    out = tmp_path / "run"
    assert main(["-q", "run", "--models", "brightness,center_prior", "--datasets", "demo_rsna", "--limit", "20",
                 "--n-boot", "20", "--num-workers", "0", "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["results"]["demo_rsna"]["brightness"]
    assert {r["metric"] for r in rows} >= {"iou", "cnr", "auroc"}
    assert res["models"]["brightness"]["plugin"]["distribution"] == "brightness-plugin"
    assert res["models"]["center_prior"]["plugin"] is None


def test_a_broken_plugin_is_one_warning_and_everything_else_works(plugin_path, caplog, capsys):
    _install(plugin_path, {"broken_plugin/__init__.py": "raise ImportError('no module named cudnn_magic')\n"},
             {"broken": "broken_plugin"}, dist="broken-plugin")
    reload_manifests()
    assert main(["ls", "datasets"]) == 0
    assert "demo_rsna" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if "ignoring plugin" in r.getMessage()]
    assert len(warnings) == 1
    assert "entry point 'broken' (broken_plugin, distribution broken-plugin 0.1)" in warnings[0]
    assert "cudnn_magic" in warnings[0]
    # naming a model the broken plugin would have provided fails clearly, and says why
    assert main(["ls", "models", "brightness"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'brightness'" in err and "plugins that could not be read" in err and "cudnn_magic" in err
