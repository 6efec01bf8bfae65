"""CLIP-family adapters: random-weight models saved locally load back offline and score prompts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from baselines.clip_family import loader as clip_loader
from baselines.clip_family.adapter import BiomedCLIPAdapter, CLIPAdapter, PLIPAdapter, QuiltNetAdapter, geometry_of
from benchmark.adapter import Query
from benchmark.dataset import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
PROMPTS = ["presence of benign prostate glands.", "presence of gleason grade 4.",
           "presence of prostate cancer, gleason pattern 3."]


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(70 + 5 * i, 90, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    name = clip_loader.register_model_cfg(TINY_CFG)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    folder = tmp_path_factory.mktemp("quiltnet_like")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return model, folder


def _load(cls, ckpt, **options):
    a = cls(**options)
    a.load(str(ckpt), "cpu")
    return a


def test_registered_models():
    from benchmark.registry import models

    for name in ("clip:openai", "biomedclip", "plip", "quiltnet", "conch"):
        entry = models.entry(name)
        assert "clip" in entry.tags and set(entry.capabilities) == {"grounding", "zeroshot_cls"}
        assert entry.obj.decode == "pil" and entry.obj.needs_checkpoint


def test_open_clip_folder_round_trip(tiny_open_clip):
    import open_clip

    model, folder = tiny_open_clip
    a = _load(QuiltNetAdapter, folder)
    assert a.loaded.report.missing == [] and a.loaded.report.unexpected == []
    assert a.input_geometry == "resize_crop:64:64"
    batch = a.collate([a.preprocess(im) for im in _images(3)])
    assert batch.shape == (3, 3, 64, 64)
    img = a.encode_images(batch)
    txt = a.encode_texts(PROMPTS)
    with torch.no_grad():
        ref_txt = torch.nn.functional.normalize(model.encode_text(open_clip.SimpleTokenizer()(PROMPTS)), dim=-1)
        ref_img = torch.nn.functional.normalize(model.encode_image(batch), dim=-1)
    torch.testing.assert_close(txt, ref_txt)
    torch.testing.assert_close(img["emb"], ref_img)
    maps = a.similarity_map(img, txt)
    assert maps.shape == (3, 4, 4) and maps.dtype == np.float32 and (maps >= 0).all()
    neg = a.encode_texts(["no cancer."] * 3)
    p = a.score(img, txt, neg)
    scale = model.logit_scale.exp().item()
    expected = torch.softmax(scale * torch.stack([(ref_img * ref_txt).sum(1), (ref_img * neg).sum(1)], 1), 1)[:, 0]
    np.testing.assert_allclose(p, expected.numpy(), rtol=1e-5)
    probs = a.class_probabilities(img, txt)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1)


def test_gradcam_on_similarity_matches_first_principles(tiny_open_clip):
    """The map is Grad-CAM of cos(image, paired prompt) on the last block's ln_1 patch tokens."""
    model, folder = tiny_open_clip
    a = _load(QuiltNetAdapter, folder)
    batch = a.collate([a.preprocess(im) for im in _images(2, seed=3)])
    img, txt = a.encode_images(batch), a.encode_texts(PROMPTS[:2])
    maps = a.similarity_map(img, txt)

    store = {}
    layer = model.visual.transformer.resblocks[-1].ln_1
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o) or o.retain_grad())
    try:
        f = torch.nn.functional.normalize(model.encode_image(batch), dim=-1)
        (f * txt).sum().backward()
    finally:
        handle.remove()
    act, grad = store["a"][:, 1:], store["a"].grad[:, 1:]  # drop CLS
    w = grad.mean(1)
    cam = torch.relu((act * w[:, None, :]).sum(-1)).reshape(2, 4, 4).detach().numpy()
    np.testing.assert_allclose(maps, cam, rtol=1e-4, atol=1e-7)

    alone = np.concatenate([a.similarity_map(a.take(img, [i]), a.take(txt, [i])) for i in range(2)])
    np.testing.assert_allclose(maps, alone, rtol=1e-5, atol=1e-8)
    assert not np.allclose(maps, a.similarity_map(img, a.take(txt, [1, 0])))


@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_other_cam_methods(tiny_open_clip, method):
    _, folder = tiny_open_clip
    a = _load(QuiltNetAdapter, folder, cam_method=method)
    img = a.encode_images(a.collate([a.preprocess(im) for im in _images(2)]))
    assert a.similarity_map(img, a.encode_texts(PROMPTS[:2])).shape == (2, 4, 4)


def test_single_weights_file_needs_arch(tiny_open_clip, tmp_path):
    model, folder = tiny_open_clip
    weights = folder / "open_clip_pytorch_model.bin"
    with pytest.raises(DataError, match="arch="):
        _load(CLIPAdapter, weights)
    cfg = tmp_path / "tiny_arch.json"
    cfg.write_text(json.dumps(TINY_CFG))
    a = _load(CLIPAdapter, weights, arch=str(cfg))
    txt = a.encode_texts(PROMPTS[:1])
    import open_clip

    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(open_clip.SimpleTokenizer()(PROMPTS[:1])), dim=-1)
    torch.testing.assert_close(txt, ref)
    with pytest.raises(DataError, match="unknown open_clip architecture"):
        _load(CLIPAdapter, weights, arch="No-Such-Arch")


def test_mismatched_weights_name_missing_keys(tiny_open_clip, tmp_path):
    model, _ = tiny_open_clip
    folder = tmp_path / "broken"
    folder.mkdir()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.proj")}
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    with pytest.raises(DataError, match="visual.proj"):
        _load(QuiltNetAdapter, folder)


def _tiny_bert_text_dir(path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "presence", "of", "benign", "prostate", "glands",
             "gleason", "grade", "pattern", "cancer", "no", ",", ".", "3", "4", "5"]
    tk = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(path)


BIOMED_LIKE = {"embed_dim": 24,
               "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                              "timm_proj": "linear", "image_size": 160},
               "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                            "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                            "context_length": 32}}


def test_biomedclip_style_folder_with_local_text_tower(tmp_path, monkeypatch):
    """A Hugging Face text tower is built from <folder>/text/ with the hub offline."""
    import open_clip

    folder = tmp_path / "biomedclip_like"
    (folder / "text").mkdir(parents=True)
    _tiny_bert_text_dir(folder / "text")
    local = json.loads(json.dumps(BIOMED_LIKE))
    local["text_cfg"].update(hf_model_name=str(folder / "text"), hf_tokenizer_name=str(folder / "text"),
                             hf_model_pretrained=False)
    torch.manual_seed(0)
    ref = open_clip.create_model(clip_loader.register_model_cfg(local), pretrained=None, pretrained_text=False).eval()
    torch.save(ref.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": BIOMED_LIKE, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                      "std": [0.26862954, 0.26130258, 0.27577711]}}))
    seen = {}
    real_create = open_clip.create_model

    def spy(*args, **kwargs):
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    a = _load(BiomedCLIPAdapter, folder)
    assert seen["offline"] == "1" and "HF_HUB_OFFLINE" not in os.environ
    assert a.loaded.report.missing == []
    assert a.input_geometry == "resize_crop:160:160"
    batch = a.collate([a.preprocess(im) for im in _images(2)])
    img, txt = a.encode_images(batch), a.encode_texts(PROMPTS[:2])
    tokens = a.loaded.tokenizer(PROMPTS[:1])
    assert tokens.shape == (1, 32) and tokens[0, :3].tolist() == [2, 5, 6]  # [CLS] presence of
    with torch.no_grad():
        torch.testing.assert_close(txt[:1], torch.nn.functional.normalize(ref.encode_text(tokens), dim=-1))
    maps = a.similarity_map(img, txt)
    assert maps.shape == (2, 10, 10) and a.describe()["cam_layer"] == "visual.trunk.blocks[-1].norm1"

    (folder / "text" / "config.json").unlink()
    with pytest.raises(DataError, match="text/"):
        _load(BiomedCLIPAdapter, folder)


def test_transformers_clip_folder_is_converted_exactly(tmp_path):
    """PLIP ships as a transformers CLIPModel: the open_clip conversion computes the same embeddings."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=64, patch_size=16),
                     projection_dim=16)
    torch.manual_seed(0)
    hf = CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / "plip_like")
    a = _load(PLIPAdapter, tmp_path / "plip_like")
    assert a.loaded.report.missing == [] and a.loaded.report.unexpected == []
    batch = a.collate([a.preprocess(im) for im in _images(2)])
    tokens = a.loaded.tokenizer(PROMPTS)
    with torch.no_grad():
        ref_img = hf.get_image_features(pixel_values=batch)
        ref_txt = hf.get_text_features(input_ids=tokens, attention_mask=(tokens != 0).long())
    ref_img = getattr(ref_img, "pooler_output", ref_img)
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
    torch.testing.assert_close(a.encode_images(batch)["emb"], torch.nn.functional.normalize(ref_img, dim=-1),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.encode_texts(PROMPTS), torch.nn.functional.normalize(ref_txt, dim=-1),
                               rtol=1e-4, atol=1e-5)
    assert a.loaded.logit_scale == pytest.approx(float(hf.logit_scale.exp()))


def test_unrecognised_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="open_clip hub-style folder"):
        _load(QuiltNetAdapter, tmp_path)
    with pytest.raises(DataError, match="not found"):
        _load(QuiltNetAdapter, tmp_path / "nope")
    with pytest.raises(ValueError, match="nothing is downloaded"):
        QuiltNetAdapter().load(None, "cpu")


@pytest.mark.parametrize("cfg,expected", [
    ({"size": 224}, "resize_crop:224:224"),
    ({"size": (448, 448), "resize_mode": "squash"}, "resize:448x448"),
    ({"size": 224, "resize_mode": "longest"}, "letterbox:224"),
])
def test_geometry_follows_the_checkpoint_preprocessing(cfg, expected):
    assert geometry_of(cfg) == expected


def _word_tokenizer_file(path, words):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<start_of_text>", "<end_of_text>", "<unk>", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<start_of_text> $A <end_of_text>",
                                                      special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tk.save(str(path))


def test_conch_folder_loads_and_localises(tmp_path):
    """CONCH's contrastive towers rebuilt from open_clip/timm parts load a CONCH-layout state dict."""
    from baselines.clip_family.adapter import CONCHAdapter
    from baselines.clip_family.conch import Conch

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 48, "layers": 2, "heads": 4},
           "text_cfg": {"context_length": 16, "vocab_size": 40, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    model = Conch(cfg).eval()
    sd = dict(model.state_dict())
    sd["text_decoder.resblocks.0.ln_1.weight"] = torch.ones(3)  # captioning parts are ignored
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "conch_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="tokenizer"):
        _load(CONCHAdapter, tmp_path)
    _word_tokenizer_file(tmp_path / "conch_byte_level_bpe_uncased.json",
                         ["presence", "of", "benign", "prostate", "glands", "gleason", "grade", "4", "."])
    a = _load(CONCHAdapter, tmp_path)
    assert a.loaded.report.missing == [] and "1 captioning keys ignored" in a.loaded.report.summary()
    tokens = a.loaded.tokenizer(PROMPTS[:1])
    assert tokens.shape == (1, 16) and tokens[0, :3].tolist() == [1, 4, 5] and tokens[0, -1] == 0
    batch = a.collate([a.preprocess(im) for im in _images(2)])
    img, txt = a.encode_images(batch), a.encode_texts(PROMPTS[:2])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.text(tokens[:, :-1]), dim=-1)
    torch.testing.assert_close(txt[:1], ref)
    assert a.similarity_map(img, txt).shape == (2, 4, 4)
    assert a.describe()["cam_layer"] == "visual.trunk.blocks[-1].norm1"


def test_zero_shot_over_sicapv2_classes(tiny_open_clip):
    from baselines.clip_family.adapter import balanced_accuracy, zero_shot_probabilities
    from benchmark.datasets.common import load_card
    from benchmark.prompts import classification_prompts

    _, folder = tiny_open_clip
    a = _load(QuiltNetAdapter, folder)
    img = a.encode_images(a.collate([a.preprocess(im) for im in _images(3)]))
    classes = ["Non-cancerous", "Gleason Pattern 3", "Gleason Pattern 4", "Gleason Pattern 5"]
    card = load_card("sicapv2")
    probs = zero_shot_probabilities(a, img, card, classes)
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1)
    texts = [classification_prompts(card, c)[0][0] for c in classes]
    assert texts[0] == "presence of benign prostate glands."
    direct = a.class_probabilities(img, a.encode_texts(texts))
    np.testing.assert_allclose(probs, direct, rtol=1e-5)
    assert balanced_accuracy([0, 0, 1, 2], [0, 1, 1, 1]) == pytest.approx((0.5 + 1 + 0) / 3)


def test_clip_input_is_open_clips_transform_of_the_opened_file(tiny_open_clip, tmp_path):
    """open_clip's own usage: ``preprocess(Image.open(path))`` (its transform converts to RGB), for
    gray, 16-bit, RGBA and colour JPEG files."""
    import cv2
    from PIL import Image

    from benchmark.io.images import read_image

    a = _load(QuiltNetAdapter, tiny_open_clip[1])
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), rgb[..., 0])
    cv2.imwrite(str(tmp_path / "g16.png"), rgb[..., 0].astype(np.uint16) * 200)
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb, rgb[..., 1]]))
    cv2.imwrite(str(tmp_path / "c.jpg"), rgb)
    for name in ("g.png", "g16.png", "a.png", "c.jpg"):
        want = a.loaded.preprocess(Image.open(tmp_path / name))
        assert torch.equal(a.preprocess(read_image(tmp_path / name, a.decode)), want), name


def test_random_init_is_a_seeded_control_that_needs_no_checkpoint():
    from benchmark.registry import RegistryError
    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner

    with pytest.raises(ValueError, match="needs a local checkpoint.*random_init=true"):
        PLIPAdapter().load(None, "cpu")
    a, b = PLIPAdapter(random_init="true"), PLIPAdapter(random_init="true")
    a.load(None, "cpu")
    b.load(None, "cpu")
    assert a.loaded.report.source == "random:ViT-B-32" and "not pretrained" in a.loaded.report.source_format
    for (k, v), w in zip(a.loaded.model.state_dict().items(), b.loaded.model.state_dict().values()):
        assert torch.equal(v, w), k  # the same seed gives the same weights
    c = PLIPAdapter(random_init="ViT-B-16", seed="1")
    c.load(None, "cpu")
    assert c.loaded.report.source == "random:ViT-B-16" and a.model_id != c.model_id
    img = a.encode_images(a.collate([a.preprocess(im) for im in _images(2)]))
    txt = a.encode_texts([Query("presence of gleason pattern 4.", "Gleason Pattern 4")] * 2)
    assert a.similarity_map(img, txt).shape[0] == 2
    with pytest.raises(DataError, match="not an open_clip architecture"):
        PLIPAdapter(random_init="ViT-Q-99").load(None, "cpu")
    # the runner plans a needs-checkpoint model that has random_init, and refuses it without
    assert Runner(RunConfig(models=["plip"], datasets=["demo_sicapv2"],
                            model_options={"plip": {"random_init": "true"}})).check_models() == []
    with pytest.raises(RegistryError, match="needs a checkpoint"):
        Runner(RunConfig(models=["plip"], datasets=["demo_sicapv2"])).check_models()
