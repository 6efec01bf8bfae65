"""One registry for datasets, models (adapters), metrics, protocols and training tasks, read from manifests.

Why manifests: listing, name resolution and run planning need names, descriptions, tags and
capabilities, not the code. Each package that contributes objects ships a ``manifest.yaml``
(``benchmark``, ``afloc``, ``baselines`` in this tree; plugins through the ``afloc_bench.plugins``
entry-point group), and an entry's ``"module:Object"`` is imported only when the object is used.
So ``afloc-bench ls`` stays instant while adapter modules import torch at the top like ordinary code.

A manifest is a mapping of kind → name → entry::

    models:
      mymodel:
        object: mypkg.adapter:MyModel     # imported on first use
        description: one line for `ls`
        tags: [vlp]                       # collections ("vlp", "sanity", "hidden", ...)
        capabilities: [grounding, zeroshot_cls]
        options: {heatmap: dot}           # passed to the class
        needs_checkpoint: true            # skipped in groups without --ckpt
        train: mymodel                    # a `training` entry (afloc-bench train NAME)
        demo_weights: mymodel-demo-1      # id of the weights used when no --ckpt is given
        demo_weights_by_modality:         # other demo weights for one modality's datasets (card modality)
          pathology: {demo_weights: mymodel-path-demo-1, demo_config: pathology_demo}
    training:
      mymodel: mypkg.task:MyTask          # a TrainTask subclass, or an object with cli_main(argv)

A plugin's entry point names a package holding ``manifest.yaml`` (``mymodel = "mypkg"``) or an
attribute holding the mapping (``mymodel = "mypkg:MANIFEST"``). A plugin that cannot be read is
reported once as a warning naming the entry point; everything else keeps working.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("datasets", "models", "metrics", "protocols", "training")
BUILTIN_PACKAGES = ("benchmark", "afloc", "baselines")  # in-tree manifests, read in this order
MANIFEST_FILE = "manifest.yaml"
ENTRY_POINT_GROUP = "afloc_bench.plugins"
# manifest fields every entry may have; the rest are kept in ``Entry.fields``
_COMMON = ("object", "description", "tags", "capabilities", "options")


class RegistryError(KeyError):
    """Base class for registry failures; ``str()`` gives the full message."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class UnknownNameError(RegistryError):
    """A name that matches nothing, with close matches suggested."""

    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        msg = f"unknown {_singular(kind)} {name!r}"
        if suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        msg += f" (see `afloc-bench ls {kind}`)"
        if _plugin_failures:
            msg += "; plugins that could not be read: " + "; ".join(_plugin_failures)
        super().__init__(msg)


def _singular(kind: str) -> str:
    return {"training": "training target"}.get(kind, kind[:-1])


@dataclass
class Entry:
    """A registered object: what ``ls`` shows, and where the object lives (imported on first use)."""

    kind: str
    name: str
    target: Any  # "module:Object" (imported by ``load``) or the object itself
    description: str = ""
    capabilities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # kind-specific manifest fields
    source: str = ""  # the manifest (or module) that registered it
    plugin: dict[str, str] | None = None  # {"distribution", "version", "entry_point"} for plugins
    _obj: Any = None

    @property
    def obj(self) -> Any:
        return self.load()

    def load(self) -> Any:
        """Import the object (once) and check it against its manifest entry."""
        if self._obj is None:
            obj = self.target
            if isinstance(obj, str):
                obj = import_object(obj, f"{_singular(self.kind)} {self.name!r} ({self.source})")
            check = _CHECKS.get(self.kind)
            if check is not None:
                check(self, obj)
            self._obj = obj
        return self._obj

    def get(self, key: str, default: Any = None) -> Any:
        """A kind-specific manifest field (``needs_checkpoint``, ``card``, ``root``, ``demo_weights``...)."""
        return self.fields.get(key, default)

    def summary(self) -> str:
        caps = f" [{', '.join(self.capabilities)}]" if self.capabilities else ""
        tags = f" ({', '.join(self.tags)})" if self.tags else ""
        return f"{self.name}{caps}{tags}: {self.description}"


def import_object(spec: str, what: str) -> Any:
    """``"package.module:Name"`` (or ``"package.module"``) → the object; a failure names ``what``."""
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any import failure becomes one clear line
        raise RegistryError(f"{what}: cannot import {spec!r}: {type(exc).__name__}: {exc}") from exc
    return obj


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
    def add(self, name: str, target: Any, *, description: str = "", capabilities: Iterable[str] = (),
            tags: Iterable[str] = (), options: dict[str, Any] | None = None, source: str = "",
            plugin: dict[str, str] | None = None, **fields: Any) -> Entry:
        """Register ``target`` (``"module:Object"`` or the object) under ``name``."""
        if not name or any(c in name for c in " ,*?[]"):
            raise ValueError(f"invalid {_singular(self.kind)} name {name!r}: no spaces, commas or glob characters")
        if name == "all" or (self.kind, name) in _COLLECTIONS:
            raise ValueError(f"{_singular(self.kind)} name {name!r} collides with a collection name")
        if not isinstance(target, str):  # an object given directly: what a manifest would say, read off it
            description = description or ((getattr(target, "__doc__", None) or "").strip().splitlines() or [""])[0]
            capabilities = tuple(capabilities) or _capabilities_of(self.kind, target)
            if self.kind == "models" and "needs_checkpoint" not in fields:
                fields["needs_checkpoint"] = bool(getattr(target, "needs_checkpoint", False))
        if not source:
            source = target if isinstance(target, str) else f"{getattr(target, '__module__', '')}"
        entry = Entry(self.kind, name, target, description, tuple(capabilities), tuple(tags), dict(options or {}),
                      dict(fields), source, plugin)
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not _same_target(old, entry):
                raise RegistryError(f"{_singular(self.kind)} {name!r} registered twice: by {old.source} and by "
                                    f"{entry.source}")
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive use)."""
        with self._lock:
            self._entries.pop(name, None)

    # -- lookup ---------------------------------------------------------
    def entries(self) -> list[Entry]:
        load_manifests()
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def entry(self, name: str) -> Entry:
        load_manifests()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.suggest(name)) from None

    def get(self, name: str) -> Any:
        """The object registered under ``name`` (imported on first use)."""
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        load_manifests()
        return name in self._entries

    def suggest(self, name: str) -> list[str]:
        candidates = list(self._entries) + [c.name for c in collections_for(self.kind)] + ["all"]
        import difflib

        return difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)

    def resolve(self, spec: str | Iterable[str]) -> list[str]:
        """Turn a user spec into registered names, in order, without duplicates.

        Each comma-separated item is matched as: exact name, then collection, then glob
        (``'chexlocalize*'``), then ``all``. An item that matches nothing raises
        ``UnknownNameError`` before anything heavy is loaded.
        """
        load_manifests()
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
                import fnmatch

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


def _capabilities_of(kind: str, obj: Any) -> tuple[str, ...]:
    if kind == "models":
        return tuple(getattr(obj, "capabilities", ()))
    if kind == "datasets":
        return tuple(getattr(getattr(obj, "card", None), "tasks", ()) or ())
    if kind == "protocols":
        return tuple(getattr(obj, "tasks", ()))
    return ()


def _same_target(a: Entry, b: Entry) -> bool:
    # The same manifest read twice (tests reload) registers the same target: not a conflict.
    return a.target is b.target or (isinstance(a.target, str) and a.target == b.target and a.options == b.options
                                     and a.fields == b.fields)


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
training = Registry("training")
REGISTRIES = {"datasets": datasets, "models": models, "metrics": metrics, "protocols": protocols,
              "training": training}

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
    load_manifests()
    return [c for (k, _), c in sorted(_COLLECTIONS.items()) if kind is None or k == kind]


# -- consistency checks at first use ---------------------------------------
def _check_model(entry: Entry, cls: Any) -> None:
    from benchmark.adapter import CAPABILITIES, Adapter

    where = f"model {entry.name!r} ({entry.source})"
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise RegistryError(f"{where}: {entry.target!r} is not an Adapter subclass")
    bad = set(entry.capabilities) - set(CAPABILITIES)
    if bad:
        raise RegistryError(f"{where}: unknown capabilities {sorted(bad)}; expected some of {list(CAPABILITIES)}")
    if tuple(cls.capabilities) != entry.capabilities:
        raise RegistryError(f"{where}: the manifest says capabilities {list(entry.capabilities)}, the class "
                            f"{cls.__name__} says {list(cls.capabilities)}")
    if bool(cls.needs_checkpoint) != bool(entry.get("needs_checkpoint", False)):
        raise RegistryError(f"{where}: the manifest says needs_checkpoint: {bool(entry.get('needs_checkpoint'))}, "
                            f"the class {cls.__name__} says {bool(cls.needs_checkpoint)}")
    if not cls.preprocessing_id:
        raise RegistryError(f"{where}: {cls.__name__} sets no preprocessing_id")


def _check_dataset(entry: Entry, cls: Any) -> None:
    from benchmark.dataset import Dataset

    where = f"dataset {entry.name!r} ({entry.source})"
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise RegistryError(f"{where}: {entry.target!r} is not a Dataset subclass")
    if tuple(cls.card.tasks) != entry.capabilities:
        raise RegistryError(f"{where}: the manifest says capabilities {list(entry.capabilities)}, the card "
                            f"{cls.card.name!r} says tasks {list(cls.card.tasks)}")


def _check_protocol(entry: Entry, cls: Any) -> None:
    from benchmark.protocols.base import Protocol

    where = f"protocol {entry.name!r} ({entry.source})"
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise RegistryError(f"{where}: {entry.target!r} is not a Protocol subclass")
    if f"{cls.name}@{cls.version}" != entry.name or tuple(cls.tasks) != entry.capabilities:
        raise RegistryError(f"{where}: the class says {cls.name}@{cls.version} with tasks {list(cls.tasks)}")


_CHECKS: dict[str, Callable[[Entry, Any], None]] = {"models": _check_model, "datasets": _check_dataset,
                                                    "protocols": _check_protocol}


# -- manifests ---------------------------------------------------------------
_loaded = False
_loading = threading.RLock()
_plugin_failures: list[str] = []
_from_manifests: list[Entry] = []  # what reload_manifests forgets
_manifest_collections: list[tuple[str, str]] = []


def read_manifest_text(text: str, source: str) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader) or {}
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a mapping of kinds ({', '.join(KINDS)}), got {type(data).__name__}")
    return data


def package_manifest(package: str) -> tuple[dict[str, Any], str]:
    """The ``manifest.yaml`` shipped inside ``package`` (found with importlib.resources)."""
    res = resources.files(package) / MANIFEST_FILE
    source = f"{package}/{MANIFEST_FILE}"
    try:
        text = res.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{source}: file not found in the installed package") from None
    return read_manifest_text(text, source), source


def add_manifest(data: dict[str, Any], source: str, plugin: dict[str, str] | None = None) -> list[Entry]:
    """Register every entry of a manifest mapping; an ill-formed entry names the manifest and the entry."""
    added: list[Entry] = []
    unknown = sorted(set(data) - set(KINDS) - {"collections"})
    if unknown:
        raise RegistryError(f"{source}: unknown section(s) {unknown}; expected {', '.join(KINDS)} or collections")
    for kind in KINDS:
        for name, spec in (data.get(kind) or {}).items():
            if isinstance(spec, str):
                spec = {"object": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("object"), str):
                raise RegistryError(f"{source}: {kind}.{name}: expected a mapping with object: 'module:Object'")
            fields = {k: v for k, v in spec.items() if k not in _COMMON}
            added.append(REGISTRIES[kind].add(
                str(name), spec["object"], description=str(spec.get("description", "")),
                capabilities=tuple(spec.get("capabilities") or ()), tags=tuple(spec.get("tags") or ()),
                options=dict(spec.get("options") or {}), source=source, plugin=plugin, **fields))
            _from_manifests.append(added[-1])
    for kind, colls in (data.get("collections") or {}).items():
        if kind not in REGISTRIES:
            raise RegistryError(f"{source}: collections.{kind}: unknown kind; expected one of {', '.join(KINDS)}")
        for name, spec in (colls or {}).items():
            spec = spec if isinstance(spec, dict) else {"description": str(spec)}
            register_collection(kind, str(name), str(spec.get("description", "")), spec.get("members"))
            _manifest_collections.append((kind, str(name)))
    return added


def _plugin_manifest(ep: Any) -> tuple[dict[str, Any], str]:  # an importlib.metadata.EntryPoint
    if ep.attr:
        data = ep.load()
        if callable(data) and not isinstance(data, dict):
            data = data()
        if not isinstance(data, dict):
            raise RegistryError(f"{ep.value} is a {type(data).__name__}, not a manifest mapping")
        return data, ep.value
    return package_manifest(ep.module)


def load_manifests(force: bool = False) -> None:
    """Read the in-tree manifests and every plugin's, once (nothing is imported but the packages)."""
    global _loaded
    if _loaded and not force:
        return
    with _loading:
        if _loaded and not force:
            return
        _loaded = True  # set first: a failure below must not make every later lookup retry
        for package in BUILTIN_PACKAGES:
            add_manifest(*package_manifest(package))
        _plugin_failures.clear()
        import importlib.metadata  # only here: its import costs more than reading every manifest

        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            plugin = {"entry_point": f"{ep.name} = {ep.value}",
                      "distribution": getattr(dist, "name", None) or "",
                      "version": getattr(dist, "version", None) or ""}
            try:
                add_manifest(*_plugin_manifest(ep), plugin=plugin)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                dist = plugin["distribution"]
                dist_text = f", distribution {dist} {plugin['version']}" if dist else ""
                what = f"{ENTRY_POINT_GROUP} entry point {ep.name!r} ({ep.value}{dist_text})"
                msg = f"{what}: {type(exc).__name__}: {exc}"
                _plugin_failures.append(msg)
                log.warning("ignoring plugin %s", msg)


def reload_manifests() -> None:
    """Forget every entry read from a manifest and read the manifests again (after installing a
    plugin); entries added with ``Registry.add`` in this process stay."""
    global _loaded
    with _loading:
        ids = {id(e) for e in _from_manifests}
        for reg in REGISTRIES.values():
            for name in [n for n, e in reg._entries.items() if id(e) in ids]:
                del reg._entries[name]
        _from_manifests.clear()
        for key in _manifest_collections:
            _COLLECTIONS.pop(key, None)
        _manifest_collections.clear()
        _loaded = False
    load_manifests()
