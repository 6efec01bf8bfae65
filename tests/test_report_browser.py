"""The report of a small run, rendered by headless Chromium: legend, colours, images, table widths."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from benchmark import demo
from benchmark.cli.main import main

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)

# measured in the page after layout; written into the DOM that --dump-dom prints
PROBE = """<script>
window.addEventListener('load', () => {
  const page = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().width);
  const swatches = [...document.querySelectorAll('#legend .swatch')].map(s => getComputedStyle(s).backgroundColor);
  const images = [...document.querySelectorAll('img')].map(i => [i.getAttribute('src'), i.naturalWidth]);
  document.body.setAttribute('data-probe', JSON.stringify({page, tables, swatches, images}));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")
def test_report_renders_in_a_browser(tmp_path, monkeypatch, capsys):
    data = tmp_path / "demo"
    demo.generate(data, seed=0, n_train=2, n_test=6, datasets=["ms_cxr"], progress=False, workers=1)
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(data))
    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["-q", "run", "--models", "afloc,biovil,center_prior,random,uniform", "--datasets", "demo_ms_cxr",
                 "--n-boot", "40", "--num-workers", "0", "-o", str(run)]) == 0
    assert main(["report", str(run), "-o", str(tmp_path / "rep"), "--overlays", "best"]) == 0
    capsys.readouterr()
    page = tmp_path / "rep" / "index.html"
    page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"data-probe=\"([^\"]*)\"", dom)
    assert found, dom[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    models = ["afloc", "biovil", "center_prior", "random", "uniform"]
    assert len(probe["swatches"]) == len(models) and len(set(probe["swatches"])) == len(models)  # one colour each
    assert all(legend in dom for legend in ("afloc", "center_prior (floor)"))
    assert probe["tables"] and all(w <= probe["page"] for w in probe["tables"]), probe
    assert probe["images"] and all(w > 0 for _, w in probe["images"]), probe["images"]  # every figure loads
    assert any("overlay_demo_ms_cxr" in src for src, _ in probe["images"])
    assert "Paired comparison against afloc" in dom
