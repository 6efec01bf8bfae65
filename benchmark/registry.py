"""One registry for datasets, models (adapters), metrics, protocols and collections.

Why one class: the same rules (decorator registration, descriptions and capabilities that
can be listed without loading anything heavy, collections, globs, "did you mean") apply to
every kind of object the harness plugs together.

Discovery: the first lookup imports the plugin modules (``PLUGIN_PACKAGES`` and the
``afloc_bench.plugins`` entry-point group). Plugin modules must be light (no torch import
at module level); heavy code is imported inside ``Adapter.load`` and friends, so
``afloc-bench ls`` never loads a model.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

KINDS = ("datasets", "models", "metrics", "protocols")

# Packages whose top-level modules are imported to trigger @register decorators.
PLUGIN_PACKAGES = ("benchmark.protocols",)
# Single modules that also register things.
PLUGIN_MODULES = ("benchmark.metrics", "afloc.adapter") + tuple(
    f"benchmark.datasets.{n}.loader" for n in ("chestx_det10", "chexlocalize", "covid_rural", "mimic_cxr", "ms_cxr",
                                               "nih_bbox", "rsna_pneumonia", "sicapv2", "siim_pneumothorax", "vindr_cxr")
) + tuple(f"baselines.{n}.adapter" for n in ("sanity", "human_benchmark", "gloria", "biovil", "convirt", "medklip",
                                             "chexzero", "saliency", "clip_family"))
ENTRY_POINT_GROUP = "afloc_bench.plugins"


class RegistryError(KeyError):
    """Base class for registry failures; ``str()`` gives the full message."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class UnknownNameError(RegistryError):
    """A name that matches nothing, with close matches suggested."""

    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        msg = f"unknown {kind[:-1]} {name!r}"
        if suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        msg += f" (see `afloc-bench ls {kind}`)"
        super().__init__(msg)


@dataclass
class Entry:
    """A registered object plus what ``ls`` shows without importing anything heavy."""

    kind: str
    name: str
    obj: Any
    description: str = ""
    capabilities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def summary(self) -> str:
        caps = f" [{', '.join(self.capabilities)}]" if self.capabilities else ""
        tags = f" ({', '.join(self.tags)})" if self.tags else ""
        return f"{self.name}{caps}{tags}: {self.description}"


@dataclass
class Collection:
    name: str
    kind: str
    description: str
    members: Callable[[], list[str]]


class Registry:
    """Registry of one kind of object."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------
    def register(
        self,
        name: str,
        *,
        description: str = "",
        capabilities: Iterable[str] = (),
        tags: Iterable[str] = (),
        **options: Any,
    ) -> Callable[[Any], Any]:
        """Decorator: ``@models.register("random", description=..., capabilities=[...])``.

        ``options`` are stored with the entry (e.g. a dataset variant's ``root``) and passed to
        the factory by the caller that instantiates it.
        """

        def deco(obj: Any) -> Any:
            self.add(name, obj, description=description, capabilities=capabilities, tags=tags, **options)
            return obj

        return deco

    def add(self, name: str, obj: Any, *, description: str = "", capabilities: Iterable[str] = (),
            tags: Iterable[str] = (), **options: Any) -> Entry:
        if not name or any(c in name for c in " ,*?[]"):
            raise ValueError(f"invalid {self.kind[:-1]} name {name!r}: no spaces, commas or glob characters")
        if name == "all" or (self.kind, name) in _COLLECTIONS:
            raise ValueError(f"{self.kind[:-1]} name {name!r} collides with a collection name")
        if not description:
            description = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
        entry = Entry(self.kind, name, obj, description, tuple(capabilities), tuple(tags), dict(options),
                      getattr(obj, "__module__", ""))
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not _same_object(old, entry):
                raise RegistryError(
                    f"{self.kind[:-1]} {name!r} registered twice: by {old.source} and by {entry.source}")
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive use)."""
        with self._lock:
            self._entries.pop(name, None)

    # -- lookup ---------------------------------------------------------
    def entries(self) -> list[Entry]:
        load_plugins()
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def entry(self, name: str) -> Entry:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.suggest(name)) from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def suggest(self, name: str) -> list[str]:
        candidates = list(self._entries) + [c.name for c in collections_for(self.kind)] + ["all"]
        return difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)

    def resolve(self, spec: str | Iterable[str]) -> list[str]:
        """Turn a user spec into registered names, in order, without duplicates.

        Each comma-separated item is matched as: exact name, then collection, then glob
        (``'chexlocalize*'``), then ``all``. An item that matches nothing raises
        ``UnknownNameError`` before anything heavy is loaded.
        """
        load_plugins()
        items = _split_spec(spec)
        if not items:
            raise RegistryError(f"no {self.kind} given")
        out: list[str] = []
        for item in items:
            if item in self._entries:
                found = [item]
            elif (coll := _COLLECTIONS.get((self.kind, item))) is not None:
                found = coll.members()
                if not found:
                    raise RegistryError(f"collection {item!r} of {self.kind} is empty")
            elif any(c in item for c in "*?["):
                found = sorted(n for n in self._entries if fnmatch.fnmatchcase(n, item))
                if not found:
                    raise UnknownNameError(self.kind, item, [])
            elif item == "all":
                found = self._all_names()
            else:
                raise UnknownNameError(self.kind, item, self.suggest(item))
            out.extend(n for n in found if n not in out)
        return out

    def _all_names(self) -> list[str]:
        # ``all`` means every entry that is meant to run by default; entries tagged
        # ``hidden`` (test fixtures, pseudo-models that need special files) only run by name.
        return [n for n, e in sorted(self._entries.items()) if "hidden" not in e.tags]


def _same_object(a: Entry, b: Entry) -> bool:
    # Re-importing a module (e.g. under pytest) re-runs decorators: same qualified name is fine.
    qa = (getattr(a.obj, "__module__", None), getattr(a.obj, "__qualname__", None))
    qb = (getattr(b.obj, "__module__", None), getattr(b.obj, "__qualname__", None))
    return a.obj is b.obj or (qa == qb and qa[1] is not None and a.options == b.options)


def _split_spec(spec: str | Iterable[str]) -> list[str]:
    raw = [spec] if isinstance(spec, str) else list(spec)
    items: list[str] = []
    for r in raw:
        items.extend(p.strip() for p in str(r).split(",") if p.strip())
    return items


datasets = Registry("datasets")
models = Registry("models")
metrics = Registry("metrics")
protocols = Registry("protocols")
REGISTRIES = {"datasets": datasets, "models": models, "metrics": metrics, "protocols": protocols}

# -- collections -----------------------------------------------------------
_COLLECTIONS: dict[tuple[str, str], Collection] = {}


def register_collection(kind: str, name: str, description: str,
                        members: Iterable[str] | Callable[[], list[str]] | None = None) -> Collection:
    """A named group of entries. Without ``members`` it is every entry tagged ``name``."""
    reg = REGISTRIES[kind]
    if members is None:
        def members_fn() -> list[str]:
            return [e.name for e in reg.entries() if name in e.tags]
    elif callable(members):
        members_fn = members  # type: ignore[assignment]
    else:
        fixed = list(members)

        def members_fn() -> list[str]:
            return list(fixed)
    coll = Collection(name, kind, description, members_fn)
    _COLLECTIONS[(kind, name)] = coll
    return coll


def collections_for(kind: str | None = None) -> list[Collection]:
    return [c for (k, _), c in sorted(_COLLECTIONS.items()) if kind is None or k == kind]


register_collection("datasets", "chest", "chest X-ray benchmark datasets (real data)")
register_collection("datasets", "pathology", "histopathology datasets (real data)")
register_collection("datasets", "demo", "the embedded synthetic demo sets, generated on first use")
register_collection("datasets", "grounding", "datasets with localization ground truth")
register_collection("datasets", "classification", "datasets with image-level labels for zero-shot classification")
register_collection("models", "sanity", "weight-free floors: random, uniform, center_prior")
register_collection("models", "vlp", "vision-language models (AFLoc and re-implemented baselines)")
register_collection("models", "saliency", "Grad-CAM family on image classifiers")
register_collection("models", "clip", "CLIP-family models through open_clip")


# -- plugin discovery ------------------------------------------------------
_loaded = False
_loading = threading.RLock()


def load_plugins(force: bool = False) -> None:
    """Import every in-tree plugin module and every entry point, once."""
    global _loaded
    if _loaded and not force:
        return
    with _loading:
        if _loaded and not force:
            return
        _loaded = True  # set first: plugin modules call back into the registry
        for pkg_name in PLUGIN_PACKAGES:
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{pkg_name}.{info.name}")
        for mod in PLUGIN_MODULES:
            importlib.import_module(mod)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            obj = ep.load()
            if callable(obj):
                obj()
