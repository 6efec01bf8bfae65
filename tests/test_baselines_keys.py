"""State-dict key sets (names and shapes) of the baselines equal those of the official modules.

``tests/fixtures/baselines/keys/*.json`` were listed from the official code at the commits named in
each file's ``source`` (full-size configs, built on the meta device, so no weights were needed).
Our modules are built the same way here; every difference must be on the declared ignore list
(the ``position_ids`` buffer that older transformers saved, CXR-BERT's unused MLM head).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

KEYS = Path(__file__).parent / "fixtures" / "baselines" / "keys"


def _official(name: str) -> dict:
    return json.loads((KEYS / f"{name}.json").read_text())


def _shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _assert_equal(name: str, module, ignore: tuple[str, ...] = ()) -> None:
    ref = _official(name)["keys"]
    got = _shapes(module)
    skip = [k for k in set(ref) | set(got) if any(re.fullmatch(p, k) for p in ignore)]
    ref = {k: v for k, v in ref.items() if k not in skip}
    got = {k: v for k, v in got.items() if k not in skip}
    assert sorted(set(ref) - set(got)) == [], f"{name}: official keys missing from ours"
    assert sorted(set(got) - set(ref)) == [], f"{name}: keys only in ours"
    assert {k: v for k, v in got.items() if ref[k] != v} == {}, f"{name}: shape differences"


def test_gloria_keys():
    from baselines.gloria.model import Gloria, GloriaConfig

    with torch.device("meta"):
        m = Gloria(GloriaConfig(bert=_official("gloria")["config"]))
    _assert_equal("gloria", m, ignore=(r"text_encoder\.model\.embeddings\.position_ids",))
    assert len(_official("gloria")["keys"]) == 521


def test_biovil_image_keys_strict():
    from baselines.biovil.model import BioVilImageModel

    with torch.device("meta"):
        m = BioVilImageModel()
    _assert_equal("biovil_image", m)  # hi-ml loads this file strictly: fc.* included, nothing ignored
    assert "encoder.encoder.fc.weight" in _official("biovil_image")["keys"]


def test_cxr_bert_keys():
    from baselines.biovil.model import CXRBert

    with torch.device("meta"):
        m = CXRBert(_official("cxr_bert")["config"])
    _assert_equal("cxr_bert", m, ignore=(r"cls\.predictions\..*", r"bert\.embeddings\.position_ids"))


def test_medklip_keys():
    from baselines.medklip.model import MedKLIP

    with torch.device("meta"):
        m = MedKLIP(text_dim=_official("medklip")["config"]["hidden_size"])
    _assert_equal("medklip", m)


def test_convirt_vilmedic_keys():
    from baselines.convirt.model import ConVIRT, ConvirtConfig

    with torch.device("meta"):
        m = ConVIRT(ConvirtConfig(text_kind="roberta", text_config=_official("convirt_vilmedic")["config"]))
    _assert_equal("convirt_vilmedic", m, ignore=(r"linguistic\.encoder\.embeddings\.position_ids",))


def test_chexzero_keys_are_openai_layout():
    from baselines.chexzero.model import build_clip

    with torch.device("meta"):
        m = build_clip()
    _assert_equal("chexzero", m)
