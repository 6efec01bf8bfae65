"""The AFLoc paper's result tables, as versioned data, for printing beside reproduced numbers.

The data live in ``results/paper/``: ``index.yaml`` lists every table (version, caption, source,
the paper's row/column layout) and each table is a tidy CSV with one row per printed cell.
Only pandas and yaml are imported, so the CLI and the test suite can use this module cheaply.

Names may carry qualifiers, ``name[key=value,...]`` (e.g. ``ms_cxr[prompt=simple]``,
``afloc[levels=word+sentence]``); ``split_name`` separates them. Machine-readable flags in the
``note`` column are written ``[flag]`` (e.g. ``[version-diff]``); ``note_flags`` extracts them.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmark.dataset import DataError

COLUMNS = ("paper_version", "table", "dataset", "model", "metric", "category", "protocol",
           "value", "ci_low", "ci_high", "unit", "note")
NUMERIC = ("value", "ci_low", "ci_high")

_QUALIFIED = re.compile(r"^(?P<base>[^\[\]]+)(?:\[(?P<quals>[^\[\]]*)\])?$")
_FLAG = re.compile(r"\[([a-z][a-z0-9-]*)\]")


def default_root() -> Path:
    """The paper's tables shipped with the package (the repository's ``results/paper``)."""
    from benchmark.resources import paper_dir

    return paper_dir()


def _root(root: str | Path | None) -> Path:
    return default_root() if root is None else Path(root)


# ----------------------------------------------------------------------------- names and notes
def split_name(name: str) -> tuple[str, dict[str, str]]:
    """``"afloc[levels=word+sentence]"`` → ``("afloc", {"levels": "word+sentence"})``."""
    m = _QUALIFIED.match(name)
    if not m:
        raise ValueError(f"malformed name {name!r}: expected 'name' or 'name[key=value,...]'")
    quals: dict[str, str] = {}
    if m.group("quals"):
        for item in m.group("quals").split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"malformed qualifier {item!r} in {name!r}: expected key=value")
            quals[key.strip()] = value.strip()
    return m.group("base"), quals


def note_flags(note: Any) -> set[str]:
    """Flags written ``[flag]`` in a note (``[version-diff]`` → ``{"version-diff"}``)."""
    if not isinstance(note, str):
        return set()
    return set(_FLAG.findall(note))


# ----------------------------------------------------------------------------- loading
@lru_cache(maxsize=8)
def _load_index(root: str) -> dict[str, Any]:
    path = Path(root) / "index.yaml"
    if not path.is_file():
        raise DataError(path, "the paper-table index (index.yaml) listing every table")
    with open(path, encoding="utf-8") as f:
        index = yaml.safe_load(f)
    if not isinstance(index, dict) or not isinstance(index.get("tables"), list):
        raise DataError(path, "a mapping with a 'tables' list")
    ids = [t.get("id") for t in index["tables"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(path, f"unique table ids; duplicated: {dupes}")
    for t in index["tables"]:
        missing = [k for k in ("id", "version", "table", "caption", "file", "layout") if k not in t]
        if missing:
            raise DataError(path, f"table entry {t.get('id')!r} with keys {missing}")
    return index


def load_index(root: str | Path | None = None) -> dict[str, Any]:
    """The parsed ``index.yaml`` (a fresh copy is not made: do not mutate it)."""
    return _load_index(str(_root(root)))


def _read_table_csv(path: Path, entry: dict[str, Any]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, f"the CSV of table {entry['id']} named in index.yaml")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    if tuple(df.columns) != COLUMNS:
        raise DataError(path, f"columns {list(COLUMNS)}, found {list(df.columns)}")
    for col in NUMERIC:
        text = df[col].str.strip()
        num = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = df.index[(text != "") & num.isna()]
        if len(bad):
            row = int(bad[0]) + 2  # header is line 1
            raise DataError(path, f"a number or nothing in column {col!r} (line {row}: {df.at[bad[0], col]!r})")
        df[col] = num.astype(float)
    if df["value"].isna().any():
        row = int(df.index[df["value"].isna()][0]) + 2
        raise DataError(path, f"a value in every row (line {row} has none)")
    wrong = df[(df["paper_version"] != entry["version"]) | (df["table"] != entry["table"])]
    if len(wrong):
        row = int(wrong.index[0]) + 2
        raise DataError(path, f"paper_version={entry['version']!r} and table={entry['table']!r} "
                              f"on every row (line {row} differs)")
    return df


@lru_cache(maxsize=8)
def _load_cells(root: str) -> pd.DataFrame:
    index = _load_index(root)
    frames = []
    for t in index["tables"]:
        df = _read_table_csv(Path(root) / t["file"], t)
        # printed precision: a float cannot say that 0.240 was printed with three decimals
        decimals = int(t["layout"].get("decimals", 3))
        df["decimals"] = [1 if u == "percent" else decimals for u in df["unit"]]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def load_cells(root: str | Path | None = None) -> pd.DataFrame:
    """Every cell of every table, in file order (a copy).

    Besides the CSV columns, ``decimals`` gives the printed precision of the cell.
    """
    return _load_cells(str(_root(root))).copy()


def list_tables(version: str | None = None, root: str | Path | None = None) -> pd.DataFrame:
    """One row per table: id, version, table, label, caption, file, counterpart, n_cells."""
    index = load_index(root)
    cells = _load_cells(str(_root(root)))
    counts = cells.groupby(["paper_version", "table"]).size()
    rows = []
    for t in index["tables"]:
        if version is not None and t["version"] != version:
            continue
        rows.append({"id": t["id"], "version": t["version"], "table": t["table"],
                     "label": t.get("label", ""), "caption": t["caption"], "file": t["file"],
                     "counterpart": t.get("counterpart") or "",
                     "n_cells": int(counts.get((t["version"], t["table"]), 0))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- queries
def _match(series: pd.Series, spec: str | Iterable[str] | None) -> pd.Series:
    """Exact values; a string with ``*``/``?`` is a glob where brackets are literal."""
    if spec is None:
        return pd.Series(True, index=series.index)
    specs = [spec] if isinstance(spec, str) else list(spec)
    mask = pd.Series(False, index=series.index)
    for s in specs:
        if any(ch in s for ch in "*?"):
            pattern = s.replace("[", "[[]")
            mask |= series.map(lambda v, pattern=pattern: fnmatch.fnmatchcase(v, pattern))
        else:
            mask |= series == s
    return mask


def paper_cells(table: str | Iterable[str] | None = None, dataset: str | Iterable[str] | None = None,
                model: str | Iterable[str] | None = None, metric: str | Iterable[str] | None = None,
                version: str | Iterable[str] | None = None, *, category: str | Iterable[str] | None = None,
                protocol: str | Iterable[str] | None = None,
                root: str | Path | None = None) -> pd.DataFrame:
    """The cells that match every given filter (exact names, lists, or globs such as ``afloc*``).

    ``table`` also accepts a full id ``"arxiv_v5/table1"``.
    """
    cells = _load_cells(str(_root(root)))
    mask = pd.Series(True, index=cells.index)
    if table is not None:
        tables = [table] if isinstance(table, str) else list(table)
        tmask = pd.Series(False, index=cells.index)
        for t in tables:
            if "/" in t:
                v, _, name = t.partition("/")
                tmask |= (cells["paper_version"] == v) & _match(cells["table"], name)
            else:
                tmask |= _match(cells["table"], t)
        mask &= tmask
    mask &= _match(cells["paper_version"], version)
    mask &= _match(cells["dataset"], dataset)
    mask &= _match(cells["model"], model)
    mask &= _match(cells["metric"], metric)
    mask &= _match(cells["category"], category)
    mask &= _match(cells["protocol"], protocol)
    return cells[mask].reset_index(drop=True)


class UnknownTableError(KeyError):
    """A table id that is not in the index, with close matches suggested."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def table_entry(table_id: str, version: str | None = None, root: str | Path | None = None) -> dict[str, Any]:
    """The index entry of ``"arxiv_v5/table1"``, or of ``"table1"`` with ``version=``."""
    index = load_index(root)
    ids = [t["id"] for t in index["tables"]]
    if "/" not in table_id:
        candidates = [t for t in index["tables"] if t["table"] == table_id
                      and (version is None or t["version"] == version)]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise UnknownTableError(f"table {table_id!r} exists in several versions "
                                    f"({', '.join(t['id'] for t in candidates)}); pass version=")
    else:
        for t in index["tables"]:
            if t["id"] == table_id and (version is None or t["version"] == version):
                return t
    hint = difflib.get_close_matches(table_id if "/" in table_id else f"{version}/{table_id}", ids, n=3, cutoff=0.4)
    raise UnknownTableError(f"unknown paper table {table_id!r}"
                            + (f" (version {version!r})" if version else "")
                            + (f"; did you mean {', '.join(hint)}?" if hint else f"; known: {', '.join(ids)}"))


def _dim_values(cells: pd.DataFrame, dim: str) -> pd.Series:
    """A layout dimension: a column, ``column:base`` or ``column[qualifier]``."""
    if dim.endswith(":base"):
        return cells[dim[:-5]].map(lambda v: split_name(v)[0])
    m = re.fullmatch(r"(\w+)\[(\w+)\]", dim)
    if m:
        col, key = m.groups()
        return cells[col].map(lambda v: split_name(v)[1].get(key, ""))
    if dim not in COLUMNS:
        raise ValueError(f"unknown layout dimension {dim!r}")
    return cells[dim]


def format_cell(value: float, lo: float | None, hi: float | None, decimals: int = 3) -> str:
    """``0.187 (0.162, 0.213)`` as the paper prints it; the value alone when there is no CI."""
    text = f"{value:.{decimals}f}"
    if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
        text += f" ({lo:.{decimals}f}, {hi:.{decimals}f})"
    return text


def paper_table(table_id: str, *, version: str | None = None, field: str = "value",
                labels: str = "paper", root: str | Path | None = None,
                cell_fn: Callable[[dict[str, Any]], Any] | None = None) -> pd.DataFrame:
    """One table pivoted into the paper's shape.

    field: ``value``, ``ci_low``, ``ci_high`` (floats) or ``text`` (as printed, with its CI).
    labels: ``paper`` (the printed row/column labels) or ``canonical`` (the data's names).
    cell_fn: instead of ``field``, what to show at each paper cell's place, from that cell's row
    (dataset, model, metric, category, unit, ...): e.g. a run's value for the same cell.
    """
    if field not in ("value", "ci_low", "ci_high", "text"):
        raise ValueError(f"field must be value, ci_low, ci_high or text, not {field!r}")
    if labels not in ("paper", "canonical"):
        raise ValueError(f"labels must be 'paper' or 'canonical', not {labels!r}")
    entry = table_entry(table_id, version, root)
    cells = paper_cells(table=entry["table"], version=entry["version"], root=root)
    layout = entry["layout"]
    row_dims, col_dims = list(layout.get("rows", [])), list(layout.get("columns", []))
    label_maps: dict[str, dict[str, str]] = {k: {str(a): str(b) for a, b in v.items()}
                                            for k, v in (entry.get("labels") or {}).items()}
    decimals = int(layout.get("decimals", 3))

    keys = {d: _dim_values(cells, d).tolist() for d in row_dims + col_dims}
    if cell_fn is not None:
        vals = [cell_fn(r) for r in cells.to_dict("records")]
    elif field == "text":
        vals = [format_cell(v, lo, hi, decimals)
                for v, lo, hi in zip(cells["value"], cells["ci_low"], cells["ci_high"])]
    else:
        vals = cells[field].tolist()

    def order(dim: str) -> dict[str, int]:
        seen: dict[str, int] = {k: i for i, k in enumerate(label_maps.get(dim, {}))}
        for v in keys[dim]:
            seen.setdefault(v, len(seen))
        return seen

    orders = {d: order(d) for d in row_dims + col_dims}
    grid: dict[tuple, dict[tuple, Any]] = {}
    for i, v in enumerate(vals):
        rk = tuple(keys[d][i] for d in row_dims)
        ck = tuple(keys[d][i] for d in col_dims)
        if ck in grid.setdefault(rk, {}):
            raise DataError(_root(root) / entry["file"], f"one cell per position; {rk} × {ck} appears twice")
        grid[rk][ck] = v
    row_keys = sorted(grid, key=lambda k: tuple(orders[d][x] for d, x in zip(row_dims, k)))
    col_keys = sorted({ck for r in grid.values() for ck in r},
                      key=lambda k: tuple(orders[d][x] for d, x in zip(col_dims, k)))

    def show(dims: list[str], key: tuple) -> tuple:
        return tuple(label_maps.get(d, {}).get(x, x) if labels == "paper" else x for d, x in zip(dims, key))

    row_labels = [show(row_dims, k) for k in row_keys]
    col_labels = [show(col_dims, k) for k in col_keys] if col_dims else [("Value",)]
    data = [[grid[rk].get(ck) for ck in (col_keys or [()])] for rk in row_keys]

    names = list(layout.get("row_names") or row_dims) if labels == "paper" else row_dims
    if len(row_dims) == 1:
        index = pd.Index([r[0] for r in row_labels], name=names[0] or None)
    else:
        index = pd.MultiIndex.from_tuples(row_labels, names=[n or None for n in names])
    if len(col_labels[0]) == 1:
        columns = pd.Index([c[0] for c in col_labels])
    else:
        columns = pd.MultiIndex.from_tuples(col_labels)
    table = pd.DataFrame(data, index=index, columns=columns)

    extra = entry.get("extra_columns") or {}
    if extra and len(row_dims) == 1:
        for pos, (name, mapping) in enumerate(extra.items()):
            table.insert(pos, name, [mapping.get(rk[0], "") for rk in row_keys])
    table.attrs.update({"id": entry["id"], "caption": entry["caption"], "label": entry.get("label", ""),
                        "version": entry["version"]})
    return table
