"""`python -m afloc.perf` measures the architectures it names."""

from __future__ import annotations

import json

import pytest
import torch

from afloc import perf


def _grid(m):
    with torch.no_grad():
        f = m.encode_image(torch.zeros(1, 3, 224, 224), shallow=True)
    return tuple(f.deep.shape[-2:]), tuple(f.shallow.shape[-2:])


def test_demo_is_the_architecture_the_demo_recipe_trains():
    demo, preset = perf._model("demo"), perf._model("demo-preset")
    assert _grid(demo) == ((12, 12), (24, 24))  # configs/demo.yaml: 192 input
    assert _grid(preset) == ((8, 8), (16, 16))
    assert demo.text_encoder.model.config.num_hidden_layers == 4
    with pytest.raises(ValueError, match="unknown configuration 'huge'"):
        perf._model("huge")


@pytest.mark.slow
def test_main_prints_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert perf.main(["--configs", "tiny-preset", "--repeats", "1", "--train-batch", "2", "--infer-batch", "2",
                      "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["config"] == "tiny-preset" and row["train_samples_per_s"] > 0 and row["bare_maps_per_s"] > 0
    assert row["word_loss_abs_diff"] < 1e-4 and "overhead_pct" in row
    assert "tiny-preset" in capsys.readouterr().out
