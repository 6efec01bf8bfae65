"""Images for a model, in batches: read and preprocessed in DataLoader workers, errors reported per file.

Within one dataset several models (and the two tasks of one model) often read the same files the
same way: the three sanity floors, the three CAMs of one classifier, AFLoc and its untrained
control, GLoRIA's two heatmaps. ``InputMemo`` keeps each preprocessed input for the run's next
pass over the same dataset, up to a byte budget, so a file is decoded once per way of reading it.
Batches are made of the same files in the same order with or without the memo.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmark.adapter import Adapter
from benchmark.dataset import DataError
from benchmark.run.numerics import Numerics

PREFETCH = 4  # batches each DataLoader worker decodes ahead of the model
MEMO_BYTES = 1 << 30  # preprocessed inputs kept for the dataset being run (the demo sets need < 600 MB)


class ImageSet:
    """Map-style dataset for DataLoader workers: read + preprocess, errors returned, not raised."""

    def __init__(self, paths: list[str], adapter: Adapter):
        self.paths, self.adapter = paths, adapter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from benchmark.io.images import read_image

        path = self.paths[i]
        try:
            img = read_image(path, self.adapter.decode)
        except DataError as exc:
            return path, None, None, str(exc)
        return path, self.adapter.preprocess(img), (int(img.shape[0]), int(img.shape[1])), None


def reading_key(adapter: Adapter) -> tuple:
    """What decides a preprocessed input besides the file: the code of ``preprocess``, the decode
    recipe, the preprocessing id and the input geometry (the model's task-dependent choices)."""
    fn = getattr(type(adapter).preprocess, "__qualname__", "?")
    module = getattr(type(adapter).preprocess, "__module__", "?")
    return (module, fn, adapter.decode, adapter.preprocessing_id, adapter.input_geometry)


def _nbytes(x: Any) -> int | None:
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return int(x.element_size() * x.nelement())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return None


class InputMemo:
    """Preprocessed inputs of one dataset, ``(path, reading_key) -> item``, up to ``budget`` bytes."""

    def __init__(self, budget: int = MEMO_BYTES):
        self.budget = budget
        self.scope: Any = None
        self._items: dict[tuple, tuple] = {}
        self._bytes = 0
        self.hits = 0

    def start(self, scope: Any) -> None:
        """Forget everything when the run moves to another dataset."""
        if scope != self.scope:
            self._items.clear()
            self._bytes = 0
            self.scope = scope

    def get(self, key: tuple) -> tuple | None:
        got = self._items.get(key)
        if got is not None:
            self.hits += 1
        return got

    def put(self, key: tuple, item: tuple) -> None:
        size = 0 if item[1] is None else _nbytes(item[1])
        if size is None or self._bytes + size > self.budget or key in self._items:
            return
        self._items[key] = item
        self._bytes += size


def image_batches(adapter: Adapter, paths: list[str], *, batch_size: int, num_workers: int, device: str,
                  desc: str, progress: bool, memo: InputMemo | None = None, numerics: Numerics | None = None
                  ) -> Iterator[tuple[list[str], Any, list[tuple[int, int]], list[tuple[str, str]]]]:
    """Yield ``(paths, model batch, image sizes, unreadable (path, message) pairs)`` per batch.

    Workers decode ahead of the model (``PREFETCH`` batches each); on a GPU a tensor batch is
    pinned and copied without blocking, so the copy overlaps the previous batch's compute."""
    import torch
    from torch.utils.data import DataLoader

    from benchmark.progress import Progress

    rk = reading_key(adapter)
    known = {p: memo.get((p, rk)) for p in paths} if memo is not None else {}
    misses = [p for p in paths if known.get(p) is None]
    numerics = numerics or Numerics(device=device)
    cuda = device.startswith("cuda")
    loader = DataLoader(ImageSet(misses, adapter), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=list, prefetch_factor=PREFETCH if num_workers else None) if misses else []
    decoded = (item for items in loader for item in items)  # in the order of ``misses``
    with Progress(len(paths), desc, unit="img", enabled=progress) as bar:
        for start in range(0, len(paths), batch_size):
            items = []
            for p in paths[start:start + batch_size]:
                item = known.get(p)
                if item is None:
                    item = next(decoded)
                    if memo is not None:
                        memo.put((p, rk), item)
                items.append(item)
            bar.update(len(items))
            ok = [it for it in items if it[3] is None]
            bad = [(it[0], it[3]) for it in items if it[3] is not None]
            batch = adapter.collate([it[1] for it in ok]) if ok else None
            if batch is not None and isinstance(batch, torch.Tensor):
                batch = numerics.batch_to_device(batch.pin_memory() if cuda else batch, device)
            yield [it[0] for it in ok], batch, [it[2] for it in ok], bad
