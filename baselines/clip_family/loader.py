"""Building CLIP-family models offline through ``open_clip`` from local files.

Accepted sources (never a network call: the Hugging Face hub is switched offline while loading):

1. **A hub-style open_clip folder** — what ``hf-hub:<repo>`` downloads, copied to disk
   (CLIP as ``timm/vit_base_patch32_clip_224.openai``, QuiltNet ``wisdomik/QuiltNet-B-32``,
   BiomedCLIP ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``)::

       <folder>/open_clip_config.json            {"model_cfg": {...}, "preprocess_cfg": {...}}
       <folder>/open_clip_pytorch_model.bin      (or open_clip_model.safetensors, *.safetensors, *.bin, *.pth)

   Models whose text tower is a Hugging Face transformer (``text_cfg.hf_model_name``, e.g.
   BiomedCLIP's PubMedBERT) also need that transformer's ``config.json`` and tokenizer files,
   because open_clip builds the tower from the hub config. Put them in ``<folder>/text/`` (or
   directly in ``<folder>``): ``config.json`` plus ``vocab.txt``/``tokenizer.json`` and
   ``tokenizer_config.json``. The tower's weights come from the open_clip checkpoint.

2. **A Hugging Face ``CLIPModel`` folder** (``config.json`` with ``model_type: clip`` plus
   ``model.safetensors`` or ``pytorch_model.bin``), e.g. PLIP ``vinid/plip``. It is converted to
   open_clip's ``CLIP`` (same computation; checked against transformers in the tests) and
   tokenised with open_clip's CLIP BPE tokenizer.

3. **A single weights file** with option ``arch`` = an open_clip architecture name (``ViT-B-32``,
   ``ViT-B-32-quickgelu`` for OpenAI weights) or the path of an open_clip model-config JSON.

CONCH has its own architecture (timm trunk + attentional poolers); see ``baselines.clip_family.conch``.

4. **Nothing, with option ``random_init``** (``true`` or an open_clip architecture name): the
   family's architecture (``RANDOM_ARCH``) at seeded random weights, tokenised with open_clip's
   bundled CLIP BPE tokenizer: a control of the architecture without pretraining (the demo runs
   use it where no weights exist), never the published model. Its rows carry the option.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from baselines.saliency.cam import vit_reshape
from benchmark.dataset import DataError
from benchmark.io.checkpoints import read_tensors

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")
TEXT_SUBDIRS = ("text", "text_encoder", "hf_text")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class ClipLoadReport:
    source: str
    source_format: str
    weights: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: {self.source_format}"]
        if self.weights:
            parts.append(f"weights {Path(self.weights).name}")
        for what in ("missing", "unexpected"):
            keys = getattr(self, what)
            if keys:
                parts.append(f"{len(keys)} {what}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        parts.extend(self.notes)
        return "; ".join(parts)


@dataclass
class LoadedClip:
    """A CLIP-like model with what the adapter needs around it."""

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess_cfg: dict[str, Any]
    report: ClipLoadReport
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    logit_scale: float


@contextlib.contextmanager
def hub_offline():
    """Make every Hugging Face lookup local-only while models are built (restored afterwards)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    patched = []
    for k in keys:
        os.environ[k] = "1"
    try:
        import huggingface_hub.constants as hc

        if hasattr(hc, "HF_HUB_OFFLINE"):
            patched.append((hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE))
            hc.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    try:
        yield
    finally:
        for obj, name, value in patched:
            setattr(obj, name, value)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def register_model_cfg(model_cfg: dict[str, Any]) -> str:
    """Register an open_clip model config under a content-derived name; returns the name.

    open_clip only builds architectures it has a JSON file for, so the config is written (once,
    atomically) to a shared folder named by its hash and added to open_clip's registry.
    """

    blob = json.dumps(model_cfg, sort_keys=True)
    name = "afloc_local_" + hashlib.sha256(blob.encode()).hexdigest()[:16]
    if name not in open_clip.list_models():
        folder = Path(tempfile.gettempdir()) / "afloc_bench_open_clip_configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        if not path.is_file():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(blob)
            os.replace(tmp, path)
        open_clip.add_model_config(path)
    return name


def find_weights(folder: Path) -> Path | None:
    for n in WEIGHT_NAMES:
        if (folder / n).is_file():
            return folder / n
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _local_text_dir(folder: Path) -> Path | None:
    """Folder holding the HF text tower's ``config.json`` (``text/`` or the folder itself)."""
    for cand in [folder / d for d in TEXT_SUBDIRS] + [folder]:
        cfg = cand / "config.json"
        if cfg.is_file():
            try:
                if "model_type" in json.loads(cfg.read_text()):
                    return cand
            except json.JSONDecodeError:
                continue
    return None


def _tokenizer_dir(folder: Path, text_dir: Path | None) -> Path | None:
    for cand in [d for d in (text_dir, folder) if d is not None]:
        if any((cand / f).is_file() for f in TOKENIZER_FILES):
            return cand
    return None


def _build_open_clip(model_cfg: dict[str, Any], weights: Path, preprocess_cfg: dict[str, Any],
                     report: ClipLoadReport) -> LoadedClip:
    from benchmark.io.checkpoints import read_tensors

    read_tensors(weights, expected="open_clip weights")  # names a file that is not a checkpoint, runs no pickle
    name = register_model_cfg(model_cfg)

    with hub_offline():
        model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False,
                                       force_preprocess_cfg=preprocess_cfg or None)
        tokenizer = open_clip.get_tokenizer(name)
    try:
        result = open_clip.load_checkpoint(model, str(weights), strict=False, weights_only=True)
    except Exception as e:  # noqa: BLE001 - open_clip raises what its own loader meets
        raise DataError(weights, f"could not load as open_clip weights ({type(e).__name__}: {e})") from e
    report.weights = str(weights)
    benign = ("position_ids", "attn_mask")
    report.missing = sorted(k for k in getattr(result, "missing_keys", []) if not k.endswith(benign))
    report.unexpected = sorted(k for k in getattr(result, "unexpected_keys", []) if not k.endswith(benign))
    if report.missing:
        raise DataError(weights, "weights do not match the model config; missing: " + ", ".join(report.missing[:10]))
    return _loaded_open_clip(model, tokenizer, report)


def _loaded_open_clip(model: nn.Module, tokenizer: Any, report: ClipLoadReport) -> LoadedClip:
    """An open_clip model in eval mode with its own preprocessing (its ``preprocess_cfg``)."""
    model.eval()
    pcfg = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess = image_transform_v2(PreprocessCfg(**pcfg), is_train=False)
    return LoadedClip(model=model, preprocess=preprocess, tokenizer=tokenizer, preprocess_cfg=pcfg, report=report,
                      encode_image=model.encode_image, encode_text=model.encode_text,
                      logit_scale=float(model.logit_scale.detach().exp()))


def load_open_clip_folder(folder: Path) -> LoadedClip:
    cfg_path = folder / "open_clip_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(cfg_path, f"expected open_clip's JSON config ({e})") from e
    model_cfg = json.loads(json.dumps(cfg.get("model_cfg", cfg)))
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise DataError(cfg_path, "expected 'model_cfg' with embed_dim, vision_cfg and text_cfg")
    weights = find_weights(folder)
    if weights is None:
        raise DataError(folder, "no weights file (expected open_clip_pytorch_model.bin or *.safetensors)")
    report = ClipLoadReport(str(folder), "open_clip hub-style folder")
    text_cfg, vision_cfg = model_cfg["text_cfg"], model_cfg["vision_cfg"]
    if text_cfg.get("hf_model_name"):
        text_dir = _local_text_dir(folder)
        if text_dir is None:
            raise DataError(folder, f"the text tower is the Hugging Face model {text_cfg['hf_model_name']!r}: put its "
                                    "config.json and tokenizer files in <folder>/text/ (offline loading cannot "
                                    "fetch them)")
        report.notes.append(f"text tower {text_cfg['hf_model_name']} built from {text_dir}")
        text_cfg["hf_model_name"] = str(text_dir)
        text_cfg["hf_model_pretrained"] = False
        if "hf_tokenizer_name" in text_cfg:
            tok_dir = _tokenizer_dir(folder, text_dir)
            if tok_dir is None:
                raise DataError(folder, "no tokenizer files (tokenizer.json or vocab.txt) in <folder>/text/ "
                                        f"for {text_cfg['hf_tokenizer_name']!r}")
            text_cfg["hf_tokenizer_name"] = str(tok_dir)
    if vision_cfg.get("timm_model_name"):
        vision_cfg["timm_model_pretrained"] = False
    return _build_open_clip(model_cfg, weights, cfg.get("preprocess_cfg", {}), report)


# the open_clip architecture of each family's published vision tower (text towers that need a Hugging
# Face transformer are replaced by open_clip's CLIP text tower, whose tokenizer ships with open_clip)
RANDOM_ARCH = {"clip": "ViT-B-32", "plip": "ViT-B-32", "quiltnet": "ViT-B-32-quickgelu", "biomedclip": "ViT-B-16",
               "conch": "ViT-B-16"}


def random_clip(family: str, arch: str | bool | None = None, seed: int = 0) -> LoadedClip:
    """``family``'s architecture (or ``arch``) at random weights drawn from ``seed``; nothing is read or downloaded."""
    name = arch if isinstance(arch, str) and arch.lower() not in ("1", "true", "yes", "on") else RANDOM_ARCH[family]
    if open_clip.get_model_config(name) is None:
        raise DataError(None, f"random_init={name!r}: not an open_clip architecture (see open_clip.list_models())")
    report = ClipLoadReport(f"random:{name}", f"open_clip {name} at random weights (seed {seed}); not pretrained")
    with hub_offline():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(name)
    return _loaded_open_clip(model, tokenizer, report)


def load_open_clip_file(path: Path, arch: str) -> LoadedClip:

    report = ClipLoadReport(str(path), f"weights file for open_clip architecture {arch}")
    if arch.endswith(".json") and Path(arch).is_file():
        cfg = json.loads(Path(arch).read_text())
        model_cfg, pre = cfg.get("model_cfg", cfg), cfg.get("preprocess_cfg", {})
    else:
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise DataError(path, f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
        pre = {}
    return _build_open_clip(json.loads(json.dumps(model_cfg)), path, pre, report)


# ----------------------------------------------------------------------------------------
# Hugging Face CLIPModel → open_clip CLIP
# ----------------------------------------------------------------------------------------
def hf_clip_model_cfg(hf: dict[str, Any]) -> dict[str, Any]:
    """open_clip ``CLIP`` config equivalent to a transformers ``CLIPConfig`` dict."""
    v, t = hf["vision_config"], hf["text_config"]
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or acts - {"quick_gelu", "gelu"}:
        raise ValueError(f"unsupported activations {sorted(acts)}")
    return {
        "embed_dim": int(hf.get("projection_dim", 512)),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {"image_size": int(v.get("image_size", 224)), "layers": int(v.get("num_hidden_layers", 12)),
                       "width": int(v.get("hidden_size", 768)), "patch_size": int(v.get("patch_size", 32)),
                       "head_width": int(v.get("hidden_size", 768)) // int(v.get("num_attention_heads", 12)),
                       "mlp_ratio": float(v.get("intermediate_size", 3072)) / float(v.get("hidden_size", 768))},
        "text_cfg": {"context_length": int(t.get("max_position_embeddings", 77)),
                     "vocab_size": int(t.get("vocab_size", 49408)), "width": int(t.get("hidden_size", 512)),
                     "heads": int(t.get("num_attention_heads", 8)), "layers": int(t.get("num_hidden_layers", 12)),
                     "mlp_ratio": float(t.get("intermediate_size", 2048)) / float(t.get("hidden_size", 512))},
    }


def hf_clip_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and fuse q/k/v of) a transformers ``CLIPModel`` state dict into open_clip's layout."""
    sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}

    def tower(src: str, dst: str) -> None:
        layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"{src}.encoder.layers.")})
        for i in layers:
            s, d = f"{src}.encoder.layers.{i}.", f"{dst}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[d + f"attn.in_proj_{kind}"] = torch.cat([sd[s + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
                out[d + f"attn.out_proj.{kind}"] = sd[s + f"self_attn.out_proj.{kind}"]
                out[d + f"ln_1.{kind}"] = sd[s + f"layer_norm1.{kind}"]
                out[d + f"ln_2.{kind}"] = sd[s + f"layer_norm2.{kind}"]
                out[d + f"mlp.c_fc.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
                out[d + f"mlp.c_proj.{kind}"] = sd[s + f"mlp.fc2.{kind}"]

    tower("text_model", "")
    tower("vision_model", "visual.")
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    for kind in ("weight", "bias"):
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["logit_scale"] = sd["logit_scale"]
    return out


def load_hf_clip_folder(folder: Path) -> LoadedClip:

    hf = json.loads((folder / "config.json").read_text())
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise DataError(folder, "Hugging Face CLIP folder without model.safetensors or pytorch_model.bin")

    sd = read_tensors(weights, expected="Hugging Face CLIP weights")
    try:
        model_cfg = hf_clip_model_cfg(hf)
        osd = hf_clip_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise DataError(weights, f"not a transformers CLIPModel checkpoint ({e})") from e
    name = register_model_cfg(model_cfg)
    with hub_offline():
        model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
    result = model.load_state_dict(osd, strict=False)
    report = ClipLoadReport(str(folder), "transformers CLIPModel folder (converted to open_clip CLIP)",
                            weights=str(weights))
    report.missing = sorted(k for k in result.missing_keys if not k.endswith("attn_mask"))
    report.unexpected = sorted(result.unexpected_keys)
    if report.missing:
        raise DataError(weights, "converted weights lack: " + ", ".join(report.missing[:10]))
    model.eval()
    size = model_cfg["vision_cfg"]["image_size"]
    pcfg = {"size": size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic", "resize_mode": "shortest"}

    preprocess = image_transform_v2(PreprocessCfg(**pcfg), is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
    report.notes.append("tokenised with open_clip's CLIP BPE tokenizer")
    return LoadedClip(model=model, preprocess=preprocess, tokenizer=tokenizer, preprocess_cfg=pcfg, report=report,
                      encode_image=model.encode_image, encode_text=model.encode_text,
                      logit_scale=float(model.logit_scale.detach().exp()))


def load_clip(source: str | os.PathLike, *, arch: str | None = None, family: str = "") -> LoadedClip:
    """Load a CLIP-family model from a local folder or file (see module docstring)."""
    path = Path(source)
    if family == "conch":
        from baselines.clip_family.conch import load_conch

        return load_conch(path)
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return load_open_clip_folder(path)
        cfg = path / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "clip":
            return load_hf_clip_folder(path)
        raise DataError(path, "expected an open_clip hub-style folder (open_clip_config.json + weights) or a "
                              "transformers CLIPModel folder (config.json with model_type 'clip' + weights)")
    if path.is_file():
        if not arch:
            raise DataError(path, "a single weights file needs the model option arch=<open_clip architecture name "
                                  "or model-config JSON> (e.g. ViT-B-32-quickgelu for OpenAI CLIP weights)")
        return load_open_clip_file(path, arch)
    raise DataError(path, "CLIP checkpoint not found (a local folder or weights file)")


# ----------------------------------------------------------------------------------------
# Grad-CAM on the image–text similarity
# ----------------------------------------------------------------------------------------
class PairedSimilarity(nn.Module):
    """``x[i]`` → cosine similarities with every row of ``text`` ([B, T]); CAM target ``i`` pairs row i."""

    def __init__(self, encode_image: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module):
        super().__init__()
        self.owner = owner
        self._encode_image = encode_image
        self.text: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = nn.functional.normalize(self._encode_image(x), dim=-1)
        return img @ self.text.t()


def cam_target(visual: nn.Module) -> tuple[nn.Module, Callable | None, str]:
    """Grad-CAM layer of an image tower, the reshape of its tokens to a grid, and its name.

    ViTs: the input LayerNorm of the last transformer block (patch tokens, CLS dropped);
    ResNets: the last bottleneck of ``layer4``.
    """

    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):  # timm ViT (BiomedCLIP, CONCH)
        grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        prefix = int(getattr(trunk, "num_prefix_tokens", 1))
        return trunk.blocks[-1].norm1, vit_reshape(grid, prefix), "visual.trunk.blocks[-1].norm1"
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # open_clip ViT
        grid = tuple(int(g) for g in visual.grid_size)
        prefix = 0 if getattr(visual, "class_embedding", None) is None else 1
        return (visual.transformer.resblocks[-1].ln_1, vit_reshape(grid, prefix),
                "visual.transformer.resblocks[-1].ln_1")
    if hasattr(visual, "layer4"):  # open_clip ModifiedResNet
        return visual.layer4[-1], None, "visual.layer4[-1]"
    raise ValueError(f"no Grad-CAM target layer known for image tower {type(visual).__name__}")
