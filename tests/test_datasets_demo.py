"""The demo generator's output, read by the real loaders, passes `afloc-bench validate`.

Skipped only when ``benchmark.demo`` has no ``generate`` (the generator is developed separately).
"""

from __future__ import annotations

import pytest

from benchmark import demo
from benchmark.cli.main import main
from benchmark.dataset import build_dataset
from benchmark.registry import datasets

if not hasattr(demo, "generate"):
    pytest.skip("benchmark.demo has no generate()", allow_module_level=True)

DEMO_VARIANTS = ["demo_rsna", "demo_ms_cxr", "demo_chexlocalize", "demo_covid_rural", "demo_siim",
                 "demo_chestx_det10", "demo_nih_bbox", "demo_mimic"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, seed=0, n_train=2, n_test=3, progress=False, workers=1)
    return out


def test_every_demo_variant_loads_through_its_real_loader(tiny_demo, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(tiny_demo))
    assert set(DEMO_VARIANTS) <= set(datasets.resolve("demo,demo_mimic"))
    for name in DEMO_VARIANTS:
        ds = build_dataset(name)
        samples = ds.samples()
        assert samples, name
        assert ds.skipped == [], (name, ds.skipped[:3])
        assert str(ds.root).startswith(str(tiny_demo))
        for s in samples:
            assert s.prompts and all(s.prompts.values())
            if ds.card.tasks != ["training"] and s.label == 1:
                assert s.has_localization, (name, s.sample_id)


def test_demo_passes_validate(tiny_demo, monkeypatch, capsys):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(tiny_demo))
    rc = main(["validate", "--datasets", ",".join(DEMO_VARIANTS)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{len(DEMO_VARIANTS)} of {len(DEMO_VARIANTS)} dataset(s) valid" in out


def test_validate_generate_calls_the_generator(tiny_demo, tmp_path, monkeypatch, capsys):
    import shutil

    target = tmp_path / "fresh"
    calls = []

    def fake_ensure(root, seed=0, datasets=None):
        calls.append((root, seed, datasets))
        shutil.copytree(tiny_demo, root)  # stands in for a full generation
        return root

    monkeypatch.setattr(demo, "ensure", fake_ensure)
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(target))
    rc = main(["validate", "--datasets", "demo_covid_rural", "--generate"])
    assert rc == 0, capsys.readouterr().out
    assert calls == [(target, 0, ["covid_rural"])]
