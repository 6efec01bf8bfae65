"""Prepared training data: every pair's training frame decoded once into a memory-mapped Arrow folder.

``afloc-bench prepare mimic_cxr --data-root PATH --out DIR`` reads a registered training split
through ``benchmark.training.data.pairs_from_dataset`` (so it works for every training dataset the
registry knows), decodes each image exactly as the trainer does (``read_frame``: ``cv2.imread(p, 0)``
then a letterbox to ``size``, INTER_AREA and zero padding) and writes the rows with Hugging Face
``datasets`` (``save_to_disk``). ``afloc-bench train afloc --prepared DIR`` then reads the frames
from the memory-mapped table instead of decoding image files: a full-size MIMIC-CXR JPEG costs tens
of milliseconds to decode and shrink, a prepared row a copy of 50 kB.

Rows (one per pair, in the loader's order): ``image`` (the uint8 frame), ``path`` (the image file the
frame came from), ``report`` (the loader's report text), ``labels`` (the pair's label dict as JSON, or
null) and ``source_index`` (the pair's position in the loader's list). Beside them ``prepared.json``
records what was read and how: dataset, split, roots, options, size, the resize, counts and lists of
what the loader skipped, pairs without a report and (with ``skip_unreadable``) unreadable images, the
project version and a content fingerprint (SHA-256 over every row, in order).

Unreadable images stop the preparation with a one-line error naming the file, as they stop a
training run that decodes the files; ``skip_unreadable`` leaves them out instead, each counted and
listed with its reason.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset import DataError
from benchmark.geometry.frames import letterbox_array
from benchmark.io.images import read_image

log = logging.getLogger("benchmark.training.prepared")

META_FILE = "prepared.json"
FORMAT = "afloc-bench prepared training pairs"
FORMAT_VERSION = 1
RESIZE = "letterbox INTER_AREA, cv2-gray"
DECODES = ("cv2-gray", "cv2-bgr")  # gray frames (official pretraining) or colour ones (the pathology model)
COLUMNS = ("image", "path", "report", "labels", "source_index")


def read_frame(path: str | os.PathLike, size: int, decode: str = "cv2-gray") -> np.ndarray:
    """The training frame of an image file: ``cv2.imread(p, 0)`` (or the colour read ``cv2-bgr``)
    letterboxed to ``size`` (INTER_AREA, zero padding), the official pretraining input.
    ``PretrainingData._frame`` makes the same two calls (without importing this module into its
    workers); a test holds the two to the same bytes."""
    return letterbox_array(read_image(path, decode), size)


def frame_shape(size: int, decode: str) -> tuple[int, ...]:
    return (size, size) if decode == "cv2-gray" else (size, size, 3)


def features(size: int, decode: str = "cv2-gray"):
    """The table's columns. The frame is a fixed-shape uint8 ``Array2D`` (``Array3D`` in colour): stored
    raw, it is read as a zero-copy view of the memory map (no decode at all; a PNG/JPEG blob would need
    one per read), at ``size * size`` bytes a row (50 kB at 224; three times that in colour)."""
    from datasets import Array2D, Array3D, Features, Value

    shape = frame_shape(size, decode)
    image = Array2D(shape=shape, dtype="uint8") if len(shape) == 2 else Array3D(shape=shape, dtype="uint8")
    return Features({"image": image, "path": Value("string"), "report": Value("string"), "labels": Value("string"),
                     "source_index": Value("int64")})


def labels_json(labels: dict | None) -> str | None:
    if labels is None:
        return None
    return json.dumps(labels, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o))


class _Fingerprint:
    """SHA-256 over the rows in order (text fields and frame bytes), independent of Arrow's layout."""

    def __init__(self, size: int, decode: str = "cv2-gray"):
        read = "" if decode == "cv2-gray" else f" decode={decode}"  # gray sets keep their fingerprints
        self.h = hashlib.sha256(f"{FORMAT} {FORMAT_VERSION} size={size}{read}\n".encode())

    def add(self, path: str, report: str, labels: str | None, frame: np.ndarray) -> None:
        self.h.update(json.dumps([path, report, labels]).encode() + b"\0")
        self.h.update(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())

    def hexdigest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def _decode(job: tuple[str, int, str]) -> tuple[bool, Any]:
    """Pool worker: ``(True, frame)`` or ``(False, reason)`` for a file that cannot be read (a return
    value, not an exception, so the main process names the file in one line)."""
    path, size, decode = job
    try:
        return True, read_frame(path, size, decode)
    except DataError as exc:
        return False, exc.expected


def _decoded(paths: Sequence[str], size: int, num_proc: int, decode: str = "cv2-gray") -> Iterator[tuple[bool, Any]]:
    """Decoded frames in input order, from ``num_proc`` threads (OpenCV decodes and resizes without
    holding the GIL). Threads, not processes: a forked worker can hang on a lock that another thread
    of the parent (OpenCV's or torch's pool) held at the fork, and a spawned one re-imports the
    caller's main module. At most ``16 * num_proc`` frames wait to be written."""
    from benchmark.parallel import ordered_map

    yield from ordered_map(_decode, ((p, size, decode) for p in paths), num_proc, window=16 * num_proc)


@dataclass
class _Writing:
    """State the row generator shares with ``write_prepared`` (same process)."""

    unreadable: list[dict[str, str]]
    fingerprint: _Fingerprint
    n_rows: int = 0


def write_prepared(pairs: Sequence[Any], out: str | os.PathLike, *, size: int = 224, num_proc: int = 1,
                   meta: dict[str, Any] | None = None, skip_unreadable: bool = False,
                   progress: bool = True, decode: str = "cv2-gray") -> dict[str, Any]:
    """Decode ``pairs`` (``Pair`` or ``(path, report)``) into the prepared folder ``out``; returns its
    metadata. The folder appears complete or not at all (written beside it, then renamed)."""
    import datasets

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not an empty folder; choose another --out or remove it")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    rows = []
    for k, p in enumerate(pairs):
        path, report = (str(p.image_path), p.report) if hasattr(p, "image_path") else (str(p[0]), p[1])
        rows.append((path, report, labels_json(getattr(p, "labels", None)), k))
    if not rows:
        raise DataError(out, "no image-report pairs to prepare")
    from benchmark.progress import Progress

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.work-{os.getpid()}"
    staged = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    state = _Writing([], _Fingerprint(size, decode))
    bar = Progress(len(rows), f"prepare {len(rows)} images at {size}x{size}", unit="img", enabled=progress)

    def generate(rows, size, num_proc, skip_unreadable, decode):
        for (path, report, labels, k), (ok, got) in zip(rows, _decoded([r[0] for r in rows], size, num_proc, decode)):
            bar.update(1)
            if not ok:
                if not skip_unreadable:
                    raise DataError(path, f"{got} (training reads every image; --skip-unreadable leaves such "
                                          "images out, each counted in prepared.json)")
                state.unreadable.append({"path": path, "reason": got})
                continue
            state.fingerprint.add(path, report, labels, got)
            state.n_rows += 1
            yield {"image": got, "path": path, "report": report, "labels": labels, "source_index": k}

    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the project's progress line instead of datasets' bars
    t0 = time.time()
    try:
        try:
            ds = datasets.Dataset.from_generator(
                generate, features=features(size, decode), cache_dir=str(work), fingerprint=uuid.uuid4().hex,
                gen_kwargs={"rows": rows, "size": size, "num_proc": num_proc, "skip_unreadable": skip_unreadable,
                            "decode": decode})
        except datasets.exceptions.DatasetGenerationError as exc:  # datasets wraps what the generator raised
            if isinstance(exc.__cause__, DataError):
                raise exc.__cause__ from None
            raise
        bar.close()
        if ds.num_rows != state.n_rows:
            raise RuntimeError(f"wrote {ds.num_rows} rows, decoded {state.n_rows}")
        log.info("writing %d rows to %s", ds.num_rows, out)
        ds.save_to_disk(str(staged))
        from benchmark import __version__

        resize = RESIZE if decode == "cv2-gray" else RESIZE.replace("cv2-gray", decode)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **(meta or {}), "size": size, "resize": resize,
               "decode": decode,
               "n_pairs": ds.num_rows, "n_unreadable": len(state.unreadable), "unreadable": state.unreadable,
               "fingerprint": state.fingerprint.hexdigest(),
               "arrow_fingerprint": datasets.load_from_disk(str(staged))._fingerprint,
               "afloc_bench_version": __version__, "datasets_version": datasets.__version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 1)}
        (staged / META_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        del ds
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staged, out)
    finally:
        bar.close()
        if bars:
            datasets.enable_progress_bars()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
    return doc


def prepare(dataset: str, data_root: str | None, out: str | os.PathLike, split: str = "train", size: int = 224,
            num_proc: int = 1, dataset_options: dict[str, Any] | None = None, progress: bool = True,
            skip_unreadable: bool = False, decode: str = "cv2-gray") -> dict[str, Any]:
    """Prepare split ``split`` of registered training dataset ``dataset`` into ``out``; returns the metadata
    written to ``out/prepared.json``. Goes through ``pairs_from_dataset`` (what training reads)."""
    from benchmark.training.data import dataset_pairs

    options = dict(dataset_options or {})
    pairs, info = dataset_pairs(dataset, split, data_root, details=True, **options)
    meta = {"dataset": dataset, "split": split, "data_root": data_root, "root": info.get("root"),
            "dataset_options": options, "n_samples": info.get("n_samples"),
            "n_loader_skipped": info.get("n_loader_skipped", 0), "loader_skipped": info.get("loader_skipped", []),
            "n_without_report": info.get("n_without_report", 0), "without_report": info.get("without_report", [])}
    return write_prepared(pairs, out, size=size, num_proc=num_proc, meta=meta, skip_unreadable=skip_unreadable,
                          progress=progress, decode=decode)


# ------------------------------------------------------------------------------------------------
class PreparedFrames:
    """Frames of a prepared table by row: ``frames[row]`` is a writable uint8 ``(size, size)`` copy of the
    row's frame, read through a zero-copy view of the memory-mapped Arrow buffers (no decode).

    Pickles as the ``datasets.Dataset`` (a reference to the folder's files, not the frames), so a
    DataLoader worker or another process re-opens the same memory map; the views are rebuilt on first use.
    """

    def __init__(self, dataset: Any, size: int, folder: str | os.PathLike, decode: str = "cv2-gray"):
        self.dataset, self.size, self.folder = dataset, int(size), str(folder)
        self.shape = frame_shape(self.size, decode)
        self._starts: list[int] | None = None
        self._views: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_starts": None, "_views": None}

    def _build(self) -> None:
        import pyarrow as pa

        column = self.dataset.data.table.column("image")
        starts, views, n = [], [], 0
        for chunk in column.chunks:
            storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            flat = storage
            for _ in self.shape:  # list<list<uint8>> (list<list<list<uint8>>> in colour) -> the values
                flat = flat.flatten()
            if flat.null_count or len(flat) != len(chunk) * int(np.prod(self.shape)):
                raise DataError(self.folder, f"image column does not hold {'x'.join(map(str, self.shape))} uint8 "
                                             "frames")
            views.append(flat.to_numpy(zero_copy_only=True).reshape(len(chunk), *self.shape))
            starts.append(n)
            n += len(chunk)
        self._starts, self._views = starts, views

    def __getitem__(self, row: int) -> np.ndarray:
        if self._views is None:
            self._build()
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"{self.folder}: row {row} of {len(self)}")
        c = bisect.bisect_right(self._starts, row) - 1
        return np.array(self._views[c][row - self._starts[c]])


@dataclass
class Prepared:
    """An opened prepared folder: its metadata, the table and the frames by row."""

    folder: Path
    meta: dict[str, Any]
    dataset: Any  # datasets.Dataset, memory-mapped
    frames: PreparedFrames

    def pairs(self) -> list[Any]:
        """The rows as ``Pair``s, in row order (row k is the frame source's row k)."""
        from benchmark.training.data import Pair

        t = self.dataset.data.table
        paths, reports, labels = (t.column(c).to_pylist() for c in ("path", "report", "labels"))
        return [Pair(p, r, None if lab is None else json.loads(lab)) for p, r, lab in zip(paths, reports, labels)]

    def info(self) -> dict[str, Any]:
        """What a training run records of its data source (``train_config.json``)."""
        m = self.meta
        keys = ("dataset", "split", "data_root", "root", "size", "n_pairs", "n_samples", "n_loader_skipped",
                "n_without_report", "n_unreadable", "fingerprint", "afloc_bench_version")
        return {"source": "prepared", "prepared": str(self.folder), **{k: m.get(k) for k in keys}}


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """``prepared.json`` of ``folder`` (only the metadata; cheap), with one-line errors."""
    folder = Path(folder)
    hint = "a folder written by `afloc-bench prepare`"
    if not folder.is_dir():
        raise DataError(folder, f"no such folder (expected {hint})")
    path = folder / META_FILE
    if not path.is_file():
        raise DataError(folder, f"no {META_FILE} (expected {hint})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(path, f"not the metadata of {hint}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"format version {meta.get('format_version')!r}; this version reads "
                              f"{FORMAT_VERSION} (prepare the set again)")
    for key in ("dataset", "split", "size", "n_pairs", "fingerprint"):
        if key not in meta:
            raise DataError(path, f"no {key!r} entry")
    return meta


def load_prepared(folder: str | os.PathLike, image_size: int | None = None, *, verify: bool = False) -> Prepared:
    """Open a prepared folder (``datasets.load_from_disk``: memory-mapped, nothing read into memory) and
    check it against its ``prepared.json`` and the frame size training reads (``image_size``).
    ``verify`` also recomputes the content fingerprint (reads every row)."""
    import datasets

    folder = Path(folder)
    meta = read_meta(folder)
    size = int(meta["size"])
    if image_size is not None and size != int(image_size):
        raise DataError(folder, f"frames of {size}x{size}, but training reads {image_size}x{image_size} frames "
                                f"(prepare the set again with --size {image_size})")
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - any failure to open the table is a data error naming the folder
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(folder, f"cannot open the Arrow table ({type(exc).__name__}: {first})") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    if not isinstance(ds, datasets.Dataset):
        raise DataError(folder, "holds a DatasetDict; expected the single table `afloc-bench prepare` writes")
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(folder, f"table without the column(s) {missing}")
    feat = ds.features["image"]
    decode = str(meta.get("decode", "cv2-gray"))
    if decode not in DECODES:
        raise DataError(folder, f"decode {decode!r} in {META_FILE}; expected one of {', '.join(DECODES)}")
    shape = frame_shape(size, decode)
    kind = datasets.Array2D if len(shape) == 2 else datasets.Array3D
    if not isinstance(feat, kind) or tuple(feat.shape) != shape or feat.dtype != "uint8":
        raise DataError(folder, f"image column is {feat}; expected uint8 frames of {'x'.join(map(str, shape))} "
                                f"({META_FILE})")
    if ds.num_rows != int(meta["n_pairs"]):
        raise DataError(folder, f"table has {ds.num_rows} rows, {META_FILE} says {meta['n_pairs']}")
    if meta.get("arrow_fingerprint") and ds._fingerprint != meta["arrow_fingerprint"]:
        raise DataError(folder, f"the Arrow table is not the one {META_FILE} describes (fingerprint "
                                f"{ds._fingerprint}, expected {meta['arrow_fingerprint']})")
    if ds._indices is not None:
        raise DataError(folder, "table with an indices mapping; expected the flat table `afloc-bench prepare` writes")
    prepared = Prepared(folder, meta, ds, PreparedFrames(ds, size, folder, decode))
    if verify:
        got = content_fingerprint(prepared)
        if got != meta["fingerprint"]:
            raise DataError(folder, f"content fingerprint {got}, {META_FILE} says {meta['fingerprint']}")
    return prepared


def content_fingerprint(prepared: Prepared) -> str:
    """The SHA-256 ``prepare`` records, recomputed from the table."""
    fp = _Fingerprint(int(prepared.meta["size"]), str(prepared.meta.get("decode", "cv2-gray")))
    for k, pair in enumerate(prepared.dataset.data.table.select(["path", "report", "labels"]).to_pylist()):
        fp.add(pair["path"], pair["report"], pair["labels"], prepared.frames[k])
    return fp.hexdigest()


def describe(meta: dict[str, Any]) -> str:
    """One summary line of a preparation."""
    skips = (f"{meta.get('n_loader_skipped', 0)} skipped by the loader, {meta.get('n_without_report', 0)} "
             f"without a report, {meta.get('n_unreadable', 0)} unreadable images left out")
    return (f"prepared {meta['n_pairs']} pairs of {meta['dataset']}/{meta['split']} at {meta['size']}x{meta['size']} "
            f"in {meta.get('seconds', 0):.0f} s ({skips})")

