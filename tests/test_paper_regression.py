"""Reproduce the paper's tables on the real data (``paper`` marker; skipped in CI).

Needs the real datasets and checkpoints on disk:

- ``AFLOC_BENCH_DATA_ROOT``: dataset root template, e.g. ``/data/{dataset}`` (official layouts,
  see ``datasets/<name>/README.md``);
- ``AFLOC_BENCH_WEIGHTS``: a folder with ``Pretrained_CXR.ckpt`` (AFLoc) and ``Bio_ClinicalBERT/``
  (tokenizer and config of ``emilyalsentzer/Bio_ClinicalBERT``).

Run with ``python -m pytest -m paper tests/test_paper_regression.py``. Each case runs
``afloc-bench run`` under ``afloc-compat@1`` and ``regress``es the run against the paper cells
with the ``ci`` tolerance (inside the paper's CI, or within its printed rounding).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.cli.main import main

pytestmark = pytest.mark.paper

WEIGHTS = Path(os.environ.get("AFLOC_BENCH_WEIGHTS", "/nonexistent"))
DATA = os.environ.get("AFLOC_BENCH_DATA_ROOT")

# (dataset, prompt set, paper reference, reference dataset name)
CASES = [
    ("ms_cxr", "simple", "paper:arxiv_v5/table1", "ms_cxr[prompt=simple]"),
    ("ms_cxr", "precise", "paper:arxiv_v5/table1", "ms_cxr[prompt=precise]"),
    ("rsna_pneumonia", "simple", "paper:arxiv_v5/ed_table1", "rsna_pneumonia"),
    ("covid_rural", "simple", "paper:arxiv_v5/ed_table1", "covid_rural"),
]


@pytest.mark.skipif(DATA is None or not (WEIGHTS / "Pretrained_CXR.ckpt").is_file(),
                    reason="needs AFLOC_BENCH_DATA_ROOT and AFLOC_BENCH_WEIGHTS with the real data and checkpoint")
@pytest.mark.parametrize("dataset,prompt_set,reference,ref_dataset", CASES)
def test_afloc_reproduces_the_paper(tmp_path, dataset, prompt_set, reference, ref_dataset):
    out = tmp_path / "run"
    rc = main(["run", "--models", "afloc", "--datasets", dataset, "--protocol", "afloc-compat@1",
               "--prompt-set", prompt_set, "--ckpt", f"afloc={WEIGHTS / 'Pretrained_CXR.ckpt'}",
               "--model-option", f"afloc.text_encoder={WEIGHTS / 'Bio_ClinicalBERT'}",
               "--data-root", DATA, "-o", str(out)])
    assert rc == 0
    assert main(["regress", str(out), "--against", reference, "--models", "afloc",
                 "--datasets", ref_dataset, "--tolerance", "ci"]) == 0
