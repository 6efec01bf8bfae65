"""The model-adapter contract.

An adapter turns images and prompts into similarity grids and zero-shot probabilities.
It owns its preprocessing (weights and preprocessing belong together) but nothing after
the native grid: smoothing, upsampling, margins, normalisation and thresholds belong to
the protocol.

Batches are *paired*: ``similarity_map(image_emb, text_emb)`` pairs row i of the image
embedding with row i of the text embedding. The runner builds pairs with ``take``.

Adding a model = one folder with its adapter and one entry in a manifest (``docs/extending.md``);
the manifest is read without importing the adapter, so adapter modules import what they need at
the top like ordinary code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GROUNDING = "grounding"
ZEROSHOT_CLS = "zeroshot_cls"
CAPABILITIES = (GROUNDING, ZEROSHOT_CLS)


@dataclass(frozen=True)
class Query:
    """One text query: the prompt text and the canonical finding it asks about.

    Adapters whose model has a fixed vocabulary of findings (MedKLIP's entities, a classifier's
    outputs) read ``finding``; text encoders read ``text``. ``finding`` is None for free text.
    """

    text: str
    finding: str | None = None


def as_queries(items: Iterable[Query | str]) -> list[Query]:
    """Queries from queries or plain prompt strings (free text, no finding)."""
    return [q if isinstance(q, Query) else Query(str(q)) for q in items]


def query_texts(items: Iterable[Query | str]) -> list[str]:
    return [q.text for q in as_queries(items)]


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
      decode: how an image file becomes the uint8 array given to ``preprocess``: the recipe of the
        model's official code (``benchmark.io.images.RECIPES``: ``cv2-gray``, ``pil-rgb``,
        ``hi-ml``, ...; ``canonical`` for models without an official reader).
      needs_checkpoint: True if ``load(None, ...)`` cannot give meaningful weights (the manifest
        entry says the same; the registry checks that they agree).

    Set from the manifest entry by ``build_adapter``: ``name``, ``demo_weights`` (id of the weights
    used when no checkpoint is given), ``train_target`` (the training entry that builds them) and
    ``demo_config`` (its recipe); ``demo_weights_by_modality`` picks other weights for the datasets of
    one modality (AFLoc's pathology demo model).

    Optional behaviour, declared here with its default (a subclass overrides what applies):
      grounding_probability: the runner also stores ``score(image, query, query)`` beside each map
        (CheXlocalize's per-task probability cut-offs need it);
      per_sample_maps: maps come from ``similarity_map_for_samples`` (the sample itself, e.g. a
        reader's segmentation) instead of the image/text embeddings;
      ``unsupported(query)``: why the model cannot answer a query (a classifier without that output);
      ``salient_points_for_samples``: points a reader marked, scored where a protocol scores points;
      ``for_task(task)``: called before each task of a run, for a model whose official code
        preprocesses each task differently (AFLoc: letterbox for grounding, resize-crop for
        classification); it sets ``input_geometry``, ``preprocessing_id`` and ``decode``.
    """

    name: str = ""
    capabilities: tuple[str, ...] = (GROUNDING,)
    input_geometry: str = "letterbox:224"
    preprocessing_id: str = ""
    decode: str = "canonical"
    needs_checkpoint: bool = False
    takes_checkpoint: bool = True  # False: weight-free (the sanity floors); a --ckpt for it is an error
    code_version: str | None = None  # set to version the code by hand instead of hashing its source files
    demo_weights: str | None = None
    train_target: str | None = None
    demo_config: str = "demo"
    grounding_probability: bool = False
    per_sample_maps: bool = False
    # ``describe()`` keys that count over the samples run (ints, dicts of ints, lists of entries):
    # joining the shards of a run adds them up
    run_counters: tuple[str, ...] = ()

    def __init__(self, **options: Any):
        self.options = options
        self.device = "cpu"
        self.checkpoint: str | None = None

    # -- lifecycle ------------------------------------------------------
    def load(self, checkpoint: str | None, device: str) -> None:
        """Build the model and load ``checkpoint`` (a local path) onto ``device``."""
        self.checkpoint, self.device = checkpoint, device

    def demo_checkpoint(self) -> str:
        """The folder of this model's demo weights (shipped with the package; ``BUILD.json`` says how)."""
        if not self.demo_weights or not self.train_target:
            raise ValueError(f"model {self.name or type(self).__name__!r} has no demo weights; give a checkpoint "
                             f"(--ckpt {self.name or 'MODEL'}=PATH)")
        from benchmark.training.demo_weights import ensure_demo_weights

        return str(ensure_demo_weights(self.demo_weights, self.train_target, config=self.demo_config))

    def weights_fingerprint(self) -> str | None:
        """Identity of weights that no checkpoint file names (built in ``load``, e.g. seeded random
        weights from a config); part of the cache keys in place of the checkpoint hash, so that
        changing how they are built cannot serve heatmaps cached from the old weights. ``None``
        when the outputs depend on the checkpoint (or on nothing) only."""
        return None

    # Models of one ``score_family`` (same class of model; the weights' hash is in the key beside
    # it) that differ only in ``grounding_only_options`` give the same classification scores.
    score_family: str | None = None
    # Models of one ``input_family`` read a dataset's images the same way (a model and its untrained
    # control): under ``run --jobs`` they run one after another in one job, sharing decoded inputs.
    input_family: str | None = None
    grounding_only_options: tuple[str, ...] = ()

    def output_identity(self, kind: str) -> str:
        """Identity of this model's outputs of ``kind`` (``heatmap``, ``score``) in cache keys:
        ``model_id``, except that the scores of a ``score_family`` leave out the options that only
        change maps, so e.g. ``gloria`` and ``gloria_dot`` compute their scores once."""
        if kind != "score" or self.score_family is None:
            return self.model_id
        opts = {k: v for k, v in self.options.items() if k not in self.grounding_only_options}
        return self.score_family + (f"[{','.join(f'{k}={opts[k]}' for k in sorted(opts))}]" if opts else "")

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

    def encode_texts(self, queries: Sequence[Query]) -> Any:
        """Queries → text embeddings whose first dimension indexes queries."""
        raise NotImplementedError

    def similarity_map(self, image_emb: Any, text_emb: Any) -> np.ndarray:
        """Paired rows → native similarity grids, float array [B, h, w] (raw, unnormalised)."""
        raise NotImplementedError

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        """Paired rows → zero-shot probability that the finding is present, float array [B]."""
        raise NotImplementedError

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        """Paired rows → the logit single-label (softmax) classification compares across a patch's
        classes, float array [B]: the model's own image-class similarity (AFLoc: the raw dot
        product of the global embeddings, as its official pathology classification). Optional:
        a model without one is skipped and counted on softmax-classification datasets."""
        raise NotImplementedError(f"{type(self).__name__} has no single-label class logit")

    @classmethod
    def runs_without_checkpoint(cls, options: dict[str, Any]) -> bool:
        """Whether these options let the model run without ``--ckpt`` (a ``needs_checkpoint`` model
        that can build a control from its options alone says so here)."""
        return not cls.needs_checkpoint

    @property
    def ranks_classes(self) -> bool:
        """Whether this model gives ``class_logit`` (single-label softmax classification)."""
        return type(self).class_logit is not Adapter.class_logit

    def encode_prompt_ensemble(self, queries: Sequence[Query]) -> Any:
        """Several queries for one class → one embedding row (default: mean of rows)."""
        emb = self.encode_texts(list(queries))
        return _mean_rows(emb)

    # -- optional behaviour (see the class docstring) ------------------------------------
    def unsupported(self, query: Query) -> str | None:
        """Why this model cannot answer ``query``, or None; the runner skips and counts such samples."""
        return None

    def similarity_map_for_samples(self, samples: Sequence[Any], image_sizes: Sequence[tuple[int, int]]) -> list:
        """With ``per_sample_maps``: one native map per sample, in the frame of ``input_geometry``, or
        None for a sample the model has no map for (the runner skips and counts it, giving
        ``missing_map_reason()``)."""
        raise NotImplementedError(f"{type(self).__name__} sets per_sample_maps but gives no maps")

    def missing_map_reason(self) -> str:
        """Why ``similarity_map_for_samples`` gave None for a sample (recorded with the skip)."""
        return "the model gave no map for this sample"

    def salient_points_for_samples(self, samples: Sequence[Any]) -> list | None:
        """Per sample, the points a reader marked (or None): scored by protocols that score points."""
        return None

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
            if len(idx) > 1 and emb.ndim and len(set(idx)) == 1:
                # one row for every pair (a dataset's one class-prompt ensemble): a read-only view,
                # not len(idx) copies of it (GLoRIA's word embeddings of 200 prompts are 5 MB a row)
                return emb.narrow(0, idx[0] % len(emb), 1).expand(len(idx), *emb.shape[1:])
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
            "decode": self.decode,
            "options": dict(self.options),
        }

    def for_task(self, task: str) -> None:
        """Switch to the official preprocessing of ``task`` (``grounding`` or ``classification``).

        Default: one preprocessing for every task."""

    def preprocessing(self) -> dict[str, str]:
        """What the current task's inputs went through (recorded per task in the run record)."""
        return {"decode": self.decode, "input_geometry": self.input_geometry, "preprocessing_id": self.preprocessing_id}


def _mean_rows(emb: Any) -> Any:
    if isinstance(emb, dict):
        return {k: _mean_rows(v) for k, v in emb.items()}
    if isinstance(emb, (tuple, list)):
        return type(emb)(_mean_rows(v) for v in emb)
    return emb.mean(0, keepdims=True) if isinstance(emb, np.ndarray) else emb.mean(0, keepdim=True)


# the one image reader every adapter's input goes through: its changes change every model's outputs
_SHARED_INPUT_CODE = ("io/images.py",)


def code_version(cls: type) -> str:
    """Identity of an adapter's code, part of every cache key and pair fingerprint: the harness
    version and the class's explicit ``code_version`` when it sets one, else a hash of the source
    files of its package folder (``baselines/gloria/*.py``), of the baselines' shared helpers
    (``baselines/common/*.py``) for a baseline, and of the shared image reader."""
    from benchmark import __version__

    explicit = getattr(cls, "code_version", None)
    if explicit:
        return f"{__version__}:{explicit}"
    import hashlib
    import inspect
    from pathlib import Path

    h = hashlib.sha256()
    try:
        folder = Path(inspect.getfile(cls)).parent
        files = sorted(folder.glob("*.py"))
        if folder.parent.name == "baselines" and (folder.parent / "common").is_dir():
            files += sorted((folder.parent / "common").glob("*.py"))  # helpers shared by the baselines
    except (TypeError, OSError):  # a class without a source file (built at run time)
        files = []
    files += [Path(__file__).parent / rel for rel in _SHARED_INPUT_CODE]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return f"{__version__}:{h.hexdigest()[:16]}"


def demo_weights_of(entry: Any, modality: str | None = None) -> tuple[str | None, str | None, str]:
    """``(weights id, training target, recipe)`` a model entry runs without a checkpoint on datasets of
    ``modality``: its ``demo_weights_by_modality`` for that modality (``{demo_weights, demo_config}``,
    optionally ``train``), else ``demo_weights`` by the ``demo`` recipe."""
    variant = (entry.get("demo_weights_by_modality") or {}).get(modality) if modality else None
    if variant:
        return variant["demo_weights"], variant.get("train", entry.get("train")), variant.get("demo_config", "demo")
    return entry.get("demo_weights"), entry.get("train"), "demo"


def build_adapter(name: str, modality: str | None = None) -> Adapter:
    """Instantiate the registered adapter ``name`` with its manifest options, demo weights (those for
    ``modality``'s datasets where the entry has its own) and training target."""
    from benchmark.registry import models

    entry = models.entry(name)
    adapter = entry.load()(**entry.options)
    adapter.name = name
    adapter.demo_weights, adapter.train_target, adapter.demo_config = demo_weights_of(entry, modality)
    return adapter
