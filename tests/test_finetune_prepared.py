"""Prepared fine-tuning data (``afloc-bench finetune prepare``): the arrays are the ones a run decodes
itself, a run reading them gives the same record, and a folder of another dataset or size, or with a
file missing, is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmark.cli.main import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import benchmark.demo as demo

    root = tmp_path_factory.mktemp("demo_prep")
    demo.generate(root, seed=0, n_train=1, n_test=12, datasets=["siim_pneumothorax", "rsna_pneumonia"],
                  progress=False, workers=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFLOC_BENCH_DEMO", str(root))
        yield root


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    from benchmark.finetune.config import CONFIG_DIR

    cfg = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    cfg.update(image_size=64, batch_size=4, n_boot=50, decoder_channels=[32, 16, 16, 8, 8])
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _seg(out, config, *extra):
    return ["finetune", "seg", "--model", "afloc", "--dataset", "demo_siim", "--max-epochs", "1", "--config",
            config, "-o", str(out), *extra]


def test_prepared_arrays_are_the_decoded_ones_and_a_run_reads_them(tiny, config, tmp_path):
    from benchmark.finetune.data import load_arrays, load_items
    from benchmark.finetune.prepared import PreparedArrays

    prep = tmp_path / "siim64"
    assert main(["finetune", "prepare", "--dataset", "demo_siim", "--size", "64", "-o", str(prep)]) == 0
    meta = json.loads((prep / "prepared.json").read_text())
    items = load_items("demo_siim", None, "all")
    assert meta["images"] == len(items) == len(PreparedArrays(prep, "demo_siim", 64, verify=True).rows)
    imgs, masks = load_arrays(items, 64, "direct")
    got_i, got_m = PreparedArrays(prep, "demo_siim", 64).arrays(items[::-1])
    np.testing.assert_array_equal(got_i, imgs[::-1])
    np.testing.assert_array_equal(got_m, masks[::-1])
    assert masks.any()

    direct, read = tmp_path / "direct", tmp_path / "read"
    assert main(_seg(direct, config)) == 0
    assert main(_seg(read, config, "--prepared", str(prep))) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (direct, read))
    assert a["prepared"] is None and b["prepared"]["files"] == meta["files"]
    assert a["epochs"] == b["epochs"] and a["test"] == b["test"]


def test_a_prepared_folder_of_another_size_dataset_or_with_a_file_missing_is_refused(tiny, config, tmp_path,
                                                                                    capsys):
    prep = tmp_path / "siim32"
    assert main(["finetune", "prepare", "--dataset", "demo_siim", "--size", "32", "-o", str(prep)]) == 0
    assert main(["finetune", "prepare", "--dataset", "demo_siim", "--size", "32", "-o", str(prep)]) == 2
    assert "holds prepared data" in capsys.readouterr().err
    assert main(_seg(tmp_path / "r1", config, "--prepared", str(prep))) == 2
    assert "is at 32 px; this config reads 64 px" in capsys.readouterr().err
    cls = ["finetune", "cls", "--model", "afloc", "--dataset", "demo_rsna", "--max-epochs", "1", "-o",
           str(tmp_path / "r2"), "--prepared", str(prep)]
    assert main(cls) == 2
    assert "holds demo_siim, not demo_rsna" in capsys.readouterr().err
    (prep / "masks.npy").unlink()
    at32 = tmp_path / "tiny32.yaml"
    at32.write_text(yaml.safe_dump({**yaml.safe_load(open(config).read()), "image_size": 32}))
    assert main(_seg(tmp_path / "r3", str(at32), "--prepared", str(prep))) == 2
    assert "masks.npy" in capsys.readouterr().err
