"""Safe checkpoint reading and strict, reported key mapping for the baseline adapters.

Why one module: every baseline imports a foreign file format (Lightning ``.ckpt``, plain
state dicts, ``module.``-prefixed dicts, safetensors). They all need the same two guarantees:
no pickled code ever runs (``torch.load(weights_only=True)``, with an explicit allow-list of
placeholder classes where a format pickles configuration objects), and every key of the file
and of the module is accounted for by name (missing, unexpected, ignored on purpose, or shape
mismatch), with an error that names the file and what was expected.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from benchmark.dataset import DataError

log = logging.getLogger(__name__)


class CheckpointError(DataError):
    """A checkpoint file that is missing, unreadable, unsafe, or not the expected format."""


# -- reading ---------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike, *, allow: Sequence[Any] = (), expected: str = "a PyTorch checkpoint"):
    """``torch.load(path, weights_only=True)``; ``allow`` extends the allow-list for this call only.

    ``allow`` takes what ``torch.serialization.safe_globals`` takes: classes, or ``(object,
    "module.Name")`` pairs that stand in for a global of that name (used to read pickled
    configuration objects as inert placeholders). Anything else in the pickle is refused.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, f"file not found; expected {expected}")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise CheckpointError(p, f"cannot read as {expected}: not a PyTorch file (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln or "unrecognized" in ln
                    or "Unsupported" in ln), lines[-1] if lines else repr(exc))
        raise CheckpointError(p, f"refused to unpickle: {why.split(' Please use')[0]} (only tensors, plain "
                                 f"containers and the allow-listed classes of {expected} are read; the file "
                                 "is not trusted to run code)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(p, f"cannot read as {expected}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None


def read_tensors(path: str | os.PathLike, *, allow: Sequence[Any] = (), expected: str = "a state dict") -> Any:
    """Read a ``.safetensors`` file or a torch pickle (``weights_only``); returns what the file holds."""
    p = Path(path)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise CheckpointError(p, f"file not found; expected {expected}")
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(p, f"cannot read as safetensors ({expected}): {exc}") from None
    return safe_torch_load(p, allow=allow, expected=expected)


def state_dict_from(obj: Any, path: str | os.PathLike, containers: Sequence[str] = ("state_dict", "model"),
                    expected: str = "a state dict") -> dict[str, Any]:
    """The tensor mapping inside a loaded checkpoint: the object itself or one of ``containers``."""
    import torch

    def is_sd(x: Any) -> bool:
        return isinstance(x, Mapping) and len(x) > 0 and all(isinstance(k, str) for k in x) and \
            all(isinstance(v, torch.Tensor) for v in x.values())

    if is_sd(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in containers:
            if key in obj and is_sd(obj[key]):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(path, f"expected {expected} (a mapping of tensors, or one under "
                                    f"{' / '.join(repr(c) for c in containers)}); top-level keys are {keys}")
    raise CheckpointError(path, f"expected {expected}; the file holds a {type(obj).__name__}")


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys with ``prefix`` removed where present (others unchanged)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in sd.items()}


# -- key mapping ---------------------------------------------------------------------
@dataclass
class KeyReport:
    """What happened to every key when a file was loaded into a module."""

    source: str
    expected: str
    n_module: int = 0
    n_file: int = 0
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 12) -> str:
        def names(xs: Sequence[str]) -> str:
            more = f" … (+{len(xs) - limit} more)" if len(xs) > limit else ""
            return ", ".join(xs[:limit]) + more

        parts = [f"{self.source}: {self.loaded}/{self.n_module} module tensors loaded from {self.n_file} file keys"]
        if self.missing:
            parts.append(f"missing ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatch: " + names([f"{k} file {a} vs module {b}" for k, a, b in self.mismatched]))
        if self.ignored:
            parts.append(f"ignored on purpose ({len(self.ignored)}): {names(self.ignored)}")
        parts.extend(self.notes)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "n_module": self.n_module, "n_file": self.n_file,
                "missing": list(self.missing), "unexpected": list(self.unexpected), "ignored": list(self.ignored),
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched], "notes": list(self.notes)}


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def load_checked(module: Any, sd: Mapping[str, Any], *, source: str | os.PathLike, expected: str,
                 ignore: Iterable[str] = (), strict: bool = True, min_overlap: float = 0.5) -> KeyReport:
    """Load ``sd`` into ``module`` accounting for every key; raise ``CheckpointError`` unless clean.

    ``ignore``: regular expressions (full match) for keys that may be absent from either side
    (e.g. ``.*position_ids``, or heads the benchmark does not use). With ``strict=False`` missing
    and unexpected keys are only reported. A file sharing less than ``min_overlap`` of the
    module's keys is always refused: it is the wrong file, not a variant.
    """
    ignore = list(ignore)
    own = module.state_dict()
    rep = KeyReport(str(source), expected, n_module=len(own), n_file=len(sd))
    common = [k for k in sd if k in own]
    rep.missing = [k for k in own if k not in sd and not _matches(k, ignore)]
    rep.unexpected = [k for k in sd if k not in own and not _matches(k, ignore)]
    rep.ignored = [k for k in own if k not in sd and _matches(k, ignore)] + \
                  [k for k in sd if k not in own and _matches(k, ignore)]
    rep.mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in common
                      if tuple(sd[k].shape) != tuple(own[k].shape)]
    overlap = len(common) / max(1, len(own))
    if overlap < min_overlap:
        sample = ", ".join(list(sd)[:6])
        want = ", ".join(list(own)[:4])
        raise CheckpointError(source, f"expected {expected}, but only {len(common)} of {len(own)} expected keys "
                                      f"are present (file keys look like: {sample}; expected keys like: {want})")
    if rep.mismatched or (strict and not rep.ok):
        raise CheckpointError(source, f"not {expected}: {rep.summary()}")
    to_load = {k: sd[k] for k in common if (k, tuple(sd[k].shape), tuple(own[k].shape)) not in rep.mismatched}
    module.load_state_dict(to_load, strict=False)
    rep.loaded = len(to_load)
    log.info("%s", rep.summary())
    return rep


def apply_rename(sd: Mapping[str, Any], rules: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Rename keys with ``(regex, replacement)`` rules, first matching rule wins."""
    out: dict[str, Any] = {}
    for k, v in sd.items():
        for pat, rep in rules:
            new, n = re.subn(pat, rep, k, count=1)
            if n:
                k = new
                break
        out[k] = v
    return out


def need_file(path: str | os.PathLike | None, what: str, published: str, option: str | None = None) -> Path:
    """A required local file or folder; the error says what to supply and where it is published."""
    how = f" (adapter option `{option}`)" if option else ""
    if path is None or str(path) == "":
        raise CheckpointError(None, f"{what} is required{how}; it is published at {published}. "
                                    "Download it once and pass the local path (nothing is fetched at run time).")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise CheckpointError(p, f"not found; expected {what}{how}, published at {published}")
    return p


def call_quietly(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with transformers' info/warning logging silenced (random-init notices)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return fn()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return fn()
    finally:
        hf_logging.set_verbosity(level)
