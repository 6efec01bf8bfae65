"""Read PyTorch-Lightning 1.x checkpoints (e.g. GLoRIA's ``chexpert_resnet50.ckpt``) without running pickled code.

Such a file pickles the training configuration as OmegaConf objects (``hyper_parameters``, plus
the class ``hparams_type``) and Lightning callback classes as dictionary keys (``callbacks``).
Unpickling them normally imports omegaconf / pytorch_lightning and trusts the file. Here the
file goes through ``torch.load(weights_only=True)`` with an explicit allow-list in which each of
those names stands for an inert placeholder that only records its pickled state; the config is
then rebuilt from plain containers. Any other global in the file (``os.system``, ``eval``, an
unknown class) is refused with an error that names it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from baselines.common.checkpoints import CheckpointError, safe_torch_load


class Placeholder:
    """Stands in for an allow-listed class: records constructor args and pickled state, does nothing."""

    qualname = ""

    def __new__(cls, *args: Any):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        self.__dict__["_state"] = state

    @property
    def state(self) -> dict[str, Any]:
        st = self.__dict__.get("_state")
        return st if isinstance(st, dict) else {}

    def __repr__(self) -> str:
        return f"<placeholder {self.qualname}>"


def _placeholder(qualname: str) -> type[Placeholder]:
    return type(qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname, "__module__": __name__})


# OmegaConf 2.0–2.4 containers, nodes and metadata; Lightning 1.x callbacks and hparams types.
_CONTAINERS = ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig")
_NODES = tuple(f"omegaconf.nodes.{n}" for n in (
    "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "PathNode", "BytesNode", "ValueNode"))
_METADATA = ("omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata")
_CALLBACKS = tuple(f"pytorch_lightning.callbacks.{m}" for m in (
    "model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping", "lr_monitor.LearningRateMonitor",
    "gpu_stats_monitor.GPUStatsMonitor", "progress.ProgressBar"))
PLACEHOLDERS: dict[str, type[Placeholder]] = {n: _placeholder(n) for n in _CONTAINERS + _NODES + _METADATA + _CALLBACKS}


def _empty_dict(*_args: Any) -> dict:
    """``collections.defaultdict(factory)`` read as a plain dict (OmegaConf's resolver cache)."""
    return {}


class _AnyType:
    """Placeholder for ``typing.Any`` (a type annotation stored in OmegaConf metadata)."""


def allow_list() -> list[Any]:
    """Everything a Lightning/OmegaConf checkpoint may reference, each mapped to something inert."""
    allow: list[Any] = [(cls, name) for name, cls in PLACEHOLDERS.items()]
    allow += [(_empty_dict, "collections.defaultdict"), (_AnyType, "typing.Any"),
              # Lightning's AttributeDict (a dict subclass) is read as an OrderedDict.
              (OrderedDict, "pytorch_lightning.utilities.parsing.AttributeDict")]
    allow += [(t, f"builtins.{t.__name__}") for t in (dict, list, tuple, str, int, float, bool, bytes, object)]
    return allow


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """OmegaConf placeholders → dict/list/scalars (interpolations are left as their ``${...}`` strings)."""
    if _depth > 100:
        raise ValueError("configuration nested too deeply")
    if isinstance(obj, Placeholder):
        st = obj.state
        if "_content" in st:
            content = st["_content"]
            if isinstance(content, dict):
                return {k: to_plain(v, _depth + 1) for k, v in content.items()}
            if isinstance(content, (list, tuple)):
                return [to_plain(v, _depth + 1) for v in content]
            return content  # None or the "???" marker of a missing container
        if "_val" in st:
            return to_plain(st["_val"], _depth + 1)
        return {k: to_plain(v, _depth + 1) for k, v in st.items() if not k.startswith("_")}
    if isinstance(obj, dict):
        return {k: to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v, _depth + 1) for v in obj]
    return obj


def load_lightning_checkpoint(path: str | os.PathLike, expected: str = "a PyTorch-Lightning checkpoint") -> dict:
    """The checkpoint as plain data: ``state_dict`` (tensors) and ``hyper_parameters`` (dict), plus the rest."""
    raw = safe_torch_load(path, allow=allow_list(), expected=expected)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(path, f"expected {expected} with a 'state_dict' entry; found {keys}")
    out = {k: v for k, v in raw.items() if k not in ("hyper_parameters", "hparams_type", "callbacks")}
    out["hyper_parameters"] = to_plain(raw.get("hyper_parameters") or {})
    out["callbacks"] = {getattr(k, "qualname", str(k)): to_plain(v) for k, v in (raw.get("callbacks") or {}).items()}
    return out
