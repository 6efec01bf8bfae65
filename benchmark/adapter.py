"""The model-adapter contract (DESIGN.md, "Adapter").

An adapter turns images and prompts into similarity grids and zero-shot probabilities.
It owns its preprocessing (weights and preprocessing belong together) but nothing after
the native grid: smoothing, upsampling, margins, normalisation and thresholds belong to
the protocol.

Batches are *paired*: ``similarity_map(image_emb, text_emb)`` pairs row i of the image
embedding with row i of the text embedding. The runner builds pairs with ``take``.

Adding a baseline = one module under ``baselines/`` with ``@register_model``, one test and
one line in ``docs/models.md``. The module must not import torch at module level; import
heavy code inside ``load``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from benchmark.registry import models

GROUNDING = "grounding"
ZEROSHOT_CLS = "zeroshot_cls"
CAPABILITIES = (GROUNDING, ZEROSHOT_CLS)


TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", "f", ""})


def flag_option(options: dict[str, Any], key: str, default: bool = False) -> bool:
    """A yes/no model option. Options arrive as strings from the command line
    (``--model-option NAME.KEY=VALUE``), so 'false', '0', 'no' must read as False; a word that is
    neither yes nor no is an error rather than a silent True."""
    v = options.get(key, default)
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    raise ValueError(f"model option {key}={v!r}: expected true or false (1/0, yes/no, on/off)")


class Adapter:
    """Base class of every model adapter.

    Class attributes a subclass sets:
      capabilities: subset of ``("grounding", "zeroshot_cls")``.
      input_geometry: spec of the frame the similarity grid covers, understood by
        ``benchmark.geometry`` (``letterbox:224``, ``resize_crop:512:480``, ``resize:224x224``).
      preprocessing_id: changes whenever preprocessing changes; part of every cache key.
      color: ``gray`` (H, W) or ``rgb`` (H, W, 3) uint8 images are given to ``preprocess``.
      needs_checkpoint: True if ``load(None, ...)`` cannot give meaningful weights.
    """

    name: str = ""
    capabilities: tuple[str, ...] = (GROUNDING,)
    input_geometry: str = "letterbox:224"
    preprocessing_id: str = ""
    color: str = "gray"
    needs_checkpoint: bool = False

    def __init__(self, **options: Any):
        self.options = options
        self.device = "cpu"
        self.checkpoint: str | None = None

    # -- lifecycle ------------------------------------------------------
    def load(self, checkpoint: str | None, device: str) -> None:
        """Build the model and load ``checkpoint`` (a local path) onto ``device``."""
        self.checkpoint, self.device = checkpoint, device

    @classmethod
    def default_weights_id(cls, options: dict[str, Any]) -> str | None:
        """Name and version of the weights ``load(None, ...)`` falls back to (a demo model), known
        without loading anything. It is part of the ``--skip-existing`` fingerprint, so a resumed
        run redoes a pair whose fallback weights changed. ``None``: no such fallback."""
        return None

    def weights_fingerprint(self) -> str | None:
        """Identity of weights that no checkpoint file names (built in ``load``, e.g. seeded random
        weights from a config); part of the cache keys in place of the checkpoint hash, so that
        changing how they are built cannot serve heatmaps cached from the old weights. ``None``
        when the outputs depend on the checkpoint (or on nothing) only."""
        return None

    @property
    def model_id(self) -> str:
        """Identity of the model part of cache keys (name plus options that change outputs)."""
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={self.options[k]}" for k in sorted(self.options))
        return f"{self.name}[{opts}]"

    # -- the contract ---------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """uint8 image (gray H×W or rgb H×W×3) → model input for one image (no batch dim)."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> Any:
        """Stack ``preprocess`` outputs into a batch (torch tensors or numpy arrays)."""
        first = items[0]
        if isinstance(first, np.ndarray):
            return np.stack(items)
        import torch

        return torch.stack(list(items))

    def encode_images(self, batch: Any) -> Any:
        """Batch → image embeddings whose first dimension indexes images."""
        raise NotImplementedError

    def encode_texts(self, prompts: Sequence[str]) -> Any:
        """Prompts → text embeddings whose first dimension indexes prompts."""
        raise NotImplementedError

    def similarity_map(self, image_emb: Any, text_emb: Any) -> np.ndarray:
        """Paired rows → native similarity grids, float array [B, h, w] (raw, unnormalised)."""
        raise NotImplementedError

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        """Paired rows → zero-shot probability that the finding is present, float array [B]."""
        raise NotImplementedError

    def encode_prompt_ensemble(self, prompts: Sequence[str]) -> Any:
        """Several prompts for one class → one embedding row (default: mean of rows)."""
        emb = self.encode_texts(list(prompts))
        return _mean_rows(emb)

    # -- helpers the runner uses -----------------------------------------
    @staticmethod
    def take(emb: Any, index: Iterable[int]) -> Any:
        """Rows ``index`` of an embedding (tensor, array, or tuple/list/dict of them)."""
        idx = list(index)
        if isinstance(emb, dict):
            return {k: Adapter.take(v, idx) for k, v in emb.items()}
        if isinstance(emb, (tuple, list)):
            return type(emb)(Adapter.take(v, idx) for v in emb)
        if isinstance(emb, np.ndarray):
            return emb[np.asarray(idx, dtype=np.int64)]
        import torch

        if isinstance(emb, torch.Tensor):
            return emb[torch.as_tensor(idx, dtype=torch.long, device=emb.device)]
        raise TypeError(f"cannot index embedding of type {type(emb).__name__}")

    @staticmethod
    def concat(embs: Sequence[Any]) -> Any:
        """Concatenate embeddings along the first dimension."""
        first = embs[0]
        if isinstance(first, dict):
            return {k: Adapter.concat([e[k] for e in embs]) for k in first}
        if isinstance(first, (tuple, list)):
            return type(first)(Adapter.concat([e[i] for e in embs]) for i in range(len(first)))
        if isinstance(first, np.ndarray):
            return np.concatenate(embs)
        import torch

        return torch.cat(list(embs))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_id": self.model_id,
            "capabilities": list(self.capabilities),
            "input_geometry": self.input_geometry,
            "preprocessing_id": self.preprocessing_id,
            "color": self.color,
            "options": dict(self.options),
        }


def _mean_rows(emb: Any) -> Any:
    if isinstance(emb, dict):
        return {k: _mean_rows(v) for k, v in emb.items()}
    if isinstance(emb, (tuple, list)):
        return type(emb)(_mean_rows(v) for v in emb)
    return emb.mean(0, keepdims=True) if isinstance(emb, np.ndarray) else emb.mean(0, keepdim=True)


def register_model(name: str, *, description: str = "", tags: Iterable[str] = (), **options: Any):
    """Class decorator registering an adapter; capabilities come from the class."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise TypeError(f"@register_model({name!r}) expects an Adapter subclass, got {cls!r}")
        bad = set(cls.capabilities) - set(CAPABILITIES)
        if bad:
            raise ValueError(f"model {name!r}: unknown capabilities {sorted(bad)}")
        if not cls.preprocessing_id:
            raise ValueError(f"model {name!r}: set a preprocessing_id")
        models.add(name, cls, description=description, capabilities=cls.capabilities, tags=tags, **options)
        return cls

    return deco


def build_adapter(name: str) -> Adapter:
    """Instantiate the registered adapter ``name`` with its registered options."""
    entry = models.entry(name)
    adapter = entry.obj(**entry.options)
    adapter.name = name
    return adapter
