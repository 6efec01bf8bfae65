"""Images for a model, in batches: read and preprocessed in DataLoader workers, errors reported per file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from benchmark.adapter import Adapter
from benchmark.dataset import DataError


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


def image_batches(adapter: Adapter, paths: list[str], *, batch_size: int, num_workers: int, device: str,
                  desc: str, progress: bool) -> Iterator[tuple[list[str], Any, list[tuple[int, int]],
                                                                list[tuple[str, str]]]]:
    """Yield ``(paths, model batch, image sizes, unreadable (path, message) pairs)`` per batch."""
    import torch
    from torch.utils.data import DataLoader

    from benchmark.progress import Progress

    loader = DataLoader(ImageSet(paths, adapter), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=list)
    with Progress(len(paths), desc, unit="img", enabled=progress) as bar:
        for items in loader:
            bar.update(len(items))
            ok = [it for it in items if it[3] is None]
            bad = [(it[0], it[3]) for it in items if it[3] is not None]
            batch = adapter.collate([it[1] for it in ok]) if ok else None
            if batch is not None and isinstance(batch, torch.Tensor):
                batch = batch.to(device)
            yield [it[0] for it in ok], batch, [it[2] for it in ok], bad
