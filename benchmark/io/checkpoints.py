"""Checkpoints read without running pickled code, and loaded key by key with every key accounted for.

Every model imports a foreign file format (Lightning ``.ckpt`` with pickled OmegaConf
configurations, plain or ``module.``-prefixed state dicts, whole pickled ``nn.Module`` objects,
safetensors). One mechanism reads all of them: ``torch.load(weights_only=True)``, where each global
the pickle names must be on an allow-list and is bound to an *inert record* that only stores the
data the pickle gives it (no constructor, no ``__setstate__`` of the real class runs). A global
outside the allow-list (``os.system``, ``builtins.eval``, an unknown class) stops the load before
any object is built, with an error naming it and the file. ``to_plain`` turns records back into
dicts, lists and scalars (so the OmegaConf or Lightning version that wrote a file does not matter).

Then ``load_checked`` puts a state dict into a module and reports every key by name: missing,
unexpected, ignored on purpose, or of the wrong shape.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.dataset import DataError

log = logging.getLogger(__name__)


class CheckpointError(DataError):
    """A checkpoint that is missing, unreadable, unsafe, or not the expected format; names the file."""


# -- the allow-list --------------------------------------------------------------------------
# Configuration objects that Lightning/OmegaConf checkpoints pickle: always allowed, as records.
CONFIG_PREFIXES = ("omegaconf.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "typing.")
CONFIG_GLOBALS = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.int", "builtins.float",
    "builtins.str", "builtins.bool", "builtins.bytes", "builtins.object", "builtins.type", "builtins.NoneType",
    "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "argparse.Namespace",
    "_operator.gt", "_operator.lt",  # a trainer's early-stopping comparator (ViLMedic's TrainingScheduler)
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
    "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Int64DType",
})
# Module classes of a whole pickled model (``torch.save(model)``), allowed where a caller asks.
MODULE_PREFIXES = ("torch.nn.modules.", "torch.nn.backends.", "torchxrayvision.", "torchvision.models.")


def _empty_dict(*_args: Any) -> dict:
    """``collections.defaultdict(factory)`` read as a plain dict (its items follow)."""
    return {}


# Globals bound to a plain container instead of a record, because the pickle fills them as one.
_AS_CONTAINER: dict[str, Any] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, str, int, float, bool, bytes)},
    "collections.defaultdict": _empty_dict,
    "collections.OrderedDict": OrderedDict,
    # Lightning's AttributeDict is a dict subclass: its items arrive by SETITEMS
    "pytorch_lightning.utilities.parsing.AttributeDict": OrderedDict,
    "lightning.fabric.utilities.data.AttributeDict": OrderedDict,
}


class InertRecord:
    """Stand-in for a pickled object of an allow-listed class: stores data, runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _state=None, _items={})
        return obj

    def __init__(self, *args: Any, **kwargs: Any):  # REDUCE calls the record class like a function
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses: SETITEMS
        self.__dict__["_items"][key] = value

    @property
    def state(self) -> dict[str, Any]:
        """The pickled state as one dict (``(dict state, slot state)`` tuples merged)."""
        st = self.__dict__.get("_state")
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
            st = {**(st[0] or {}), **(st[1] or {})}
        return st if isinstance(st, dict) else {}

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"


_RECORD_CLASSES: dict[str, type] = {}


def record_class(full_name: str) -> type:
    """The inert record class standing for the global ``full_name`` (one class per name)."""
    if full_name not in _RECORD_CLASSES:
        _RECORD_CLASSES[full_name] = type("Inert_" + full_name.replace(".", "_"), (InertRecord,),
                                          {"qualname": full_name, "__module__": __name__})
    return _RECORD_CLASSES[full_name]


def _allowed(name: str, extra_prefixes: Sequence[str]) -> bool:
    return name in CONFIG_GLOBALS or name in _AS_CONTAINER or name.startswith(CONFIG_PREFIXES) or \
        name.startswith(tuple(extra_prefixes))


def _binding(name: str) -> tuple[Any, str]:
    return (_AS_CONTAINER.get(name) or record_class(name), name)


# -- reading ---------------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike, *, expected: str = "a PyTorch checkpoint",
                    extra_prefixes: Sequence[str] = ()) -> Any:
    """What a ``torch.save`` file holds, read with ``weights_only=True`` and the allow-list above.

    ``extra_prefixes`` extends the allow-list for this call (``MODULE_PREFIXES`` for a whole pickled
    model). Raises ``CheckpointError`` naming the file for a missing, unreadable or unsafe file.
    """
    import torch

    p = Path(path)
    if p.is_dir():
        raise CheckpointError(p, f"is a folder; expected {expected} (a file)")
    if not p.is_file():
        raise CheckpointError(p, f"file not found; expected {expected}")
    with open(p, "rb") as fh:
        head = fh.read(4)
    is_zip = zipfile.is_zipfile(p)
    if not (is_zip or head[:1] == b"\x80"):  # a torch zip archive or a legacy pickle
        raise CheckpointError(p, f"cannot read as {expected}: not a PyTorch file (neither a zip archive nor a pickle)")
    names: set[str] = set()
    if is_zip:  # every global the pickle names, known before anything is unpickled
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign archive
            raise CheckpointError(p, f"cannot read as {expected}: {type(exc).__name__}: {_first_line(exc)}") from None
        _refuse_unknown(p, names, extra_prefixes, expected)
    for _ in range(200):  # legacy pickles name their globals one refusal at a time
        try:
            with torch.serialization.safe_globals([_binding(n) for n in sorted(names)]):
                return torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            m = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
            if not m or m.group(1) in names:
                raise CheckpointError(p, f"refused to unpickle: {_first_line(exc).split(' Please use')[0]} (only "
                                         f"tensors, plain containers and allow-listed records of {expected} are read; "
                                         "the file is not trusted to run code)") from None
            _refuse_unknown(p, {m.group(1)}, extra_prefixes, expected)
            names.add(m.group(1))
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(p, f"cannot read as {expected}: {type(exc).__name__}: {_first_line(exc)}") from None
    raise CheckpointError(p, f"cannot read as {expected}: too many distinct classes in the pickle")


def _refuse_unknown(path: Path, names: Iterable[str], extra_prefixes: Sequence[str], expected: str) -> None:
    refused = sorted(n for n in names if not _allowed(n, extra_prefixes))
    if refused:
        raise CheckpointError(path, f"refusing to unpickle {expected}: the file names globals outside the allow-list "
                                    f"({', '.join(refused)}); only tensors, containers and configuration records are "
                                    "accepted")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Records → plain Python: OmegaConf containers become dicts/lists, nodes their values, paths strings,
    namespaces dicts (interpolations stay as their ``${...}`` strings)."""
    if _depth > 200:
        raise ValueError("configuration nested too deeply")
    if isinstance(obj, InertRecord):
        name, st = obj.qualname, obj.state
        if name.startswith("omegaconf."):
            if "_content" in st:
                return to_plain(st["_content"], _depth + 1)
            if "_val" in st:
                return to_plain(st["_val"], _depth + 1)
            return {k: to_plain(v, _depth + 1) for k, v in st.items() if not k.startswith("_")}
        if name.startswith("pathlib."):
            args = obj.__dict__.get("_args") or ()
            return os.path.join(*[str(a) for a in args]) if args else ""
        if obj.__dict__.get("_items"):
            return {k: to_plain(v, _depth + 1) for k, v in obj.__dict__["_items"].items()}
        if st:
            return {k: to_plain(v, _depth + 1) for k, v in st.items()}
        return repr(obj)
    if isinstance(obj, type) and issubclass(obj, InertRecord):
        return obj.qualname
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int, float)) else to_plain(k, _depth + 1): to_plain(v, _depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, _depth + 1) for v in obj]
    return obj


def module_state(obj: Any, prefix: str = "", out: OrderedDict | None = None) -> OrderedDict:
    """Parameters and persistent buffers of a pickled ``nn.Module`` read as records, by key."""
    out = OrderedDict() if out is None else out
    d = obj.state if isinstance(obj, InertRecord) else {}
    non_persistent = set(d.get("_non_persistent_buffers_set", ()) or ())
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach() if hasattr(p, "detach") else p
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in non_persistent:
            out[prefix + name] = b
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            module_state(child, prefix + name + ".", out)
    return out


def load_lightning_checkpoint(path: str | os.PathLike, expected: str = "a PyTorch-Lightning checkpoint") -> dict:
    """A Lightning checkpoint as plain data: ``state_dict`` (tensors), ``hyper_parameters`` and
    ``callbacks`` (dicts), and the rest of its top-level entries."""
    raw = safe_torch_load(path, expected=expected)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        keys = sorted(map(str, raw))[:10] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(path, f"expected {expected} with a 'state_dict' entry; found {keys}")
    out = {k: v for k, v in raw.items() if k not in ("hyper_parameters", "hparams_type", "callbacks")}
    hp = to_plain(raw.get("hyper_parameters") or {})
    out["hyper_parameters"] = hp if isinstance(hp, dict) else {}
    out["callbacks"] = {getattr(k, "qualname", str(k)): to_plain(v) for k, v in (raw.get("callbacks") or {}).items()}
    return out


def read_tensors(path: str | os.PathLike, *, expected: str = "a state dict") -> Any:
    """Read a ``.safetensors`` file or a torch pickle (``safe_torch_load``); returns what the file holds."""
    p = Path(path)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise CheckpointError(p, f"file not found; expected {expected}")
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(p, f"cannot read as safetensors ({expected}): {_first_line(exc)}") from None
    return safe_torch_load(p, expected=expected)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A plain state dict from ``.safetensors`` or a torch file (possibly under ``state_dict``)."""
    return state_dict_from(read_tensors(path, expected="a state dict"), path, containers=("state_dict",))


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


# -- key mapping ---------------------------------------------------------------------------
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


def optimizer_to_safetensors(opt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimiser's state as ``(tensors, layout)``: its tensors under ``opt.<param>.<key>`` for a
    safetensors file, everything else (param groups, step counts) as JSON-ready ``layout``, so a
    resumable checkpoint holds no pickle. ``optimizer_from_safetensors`` reverses it."""
    sd = opt.state_dict()
    tensors: dict[str, Any] = {}
    layout: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, pstate in sd["state"].items():
        entry = layout["state"][str(pid)] = {}
        for k, v in pstate.items():
            if hasattr(v, "detach"):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                entry[k] = {"tensor": f"opt.{pid}.{k}"}
            else:
                entry[k] = {"value": v}
    return tensors, layout


def optimizer_from_safetensors(opt: Any, tensors: Mapping[str, Any], layout: Mapping[str, Any]) -> None:
    """Load what ``optimizer_to_safetensors`` wrote into ``opt``."""
    state = {int(pid): {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in ps.items()}
             for pid, ps in layout["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
