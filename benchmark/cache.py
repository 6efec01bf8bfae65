"""Content-addressed cache of heatmap grids, scores and embeddings.

The key is made of what determines the output: model id, checkpoint hash (or, for weights built
without a checkpoint file, a hash of the weights themselves), preprocessing id, image *content* hash
and prompt text (never a dataset name or path), so two models or
two checkpoints never share an entry and a renamed file still hits.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.records import atomic_write_bytes

_CHUNK = 1 << 20
_sha_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def file_sha256(path: str | os.PathLike, *, canonical_safetensors: bool = False) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) so large files hash once.

    ``canonical_safetensors``: for a ``.safetensors`` file, hash its header with sorted keys
    (and no padding) followed by the tensor bytes. The writer stores ``__metadata__`` in hash-map
    order, which changes from process to process, so identical tensors and metadata can be
    different bytes."""
    p = Path(path)
    st = p.stat()
    canonical = canonical_safetensors and p.suffix == ".safetensors"
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, canonical)
    with _memo_lock:
        if memo_key in _sha_memo:
            return _sha_memo[memo_key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if canonical:
            header = _safetensors_header(f)
            if header is None:  # not a readable safetensors file: its bytes (the loader says what is wrong)
                f.seek(0)
            else:
                h.update(b"safetensors-canonical\0")
                h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _memo_lock:
        _sha_memo[memo_key] = digest
    return digest


def _safetensors_header(f) -> dict | None:
    """The JSON header of an open safetensors file (position left at the tensor bytes), or None."""
    raw = f.read(8)
    if len(raw) < 8:
        return None
    n = int.from_bytes(raw, "little")
    if n <= 0 or n > 100_000_000:
        return None
    try:
        header = json.loads(f.read(n))
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


# What a training run leaves beside its weights: logs with timestamps, the optimiser's state, the
# recipe (with the machine's paths). None of it changes the model's outputs.
TRAINING_RECORD_FILES = frozenset({"metrics.csv", "train_config.json", "trainer_state.json", "optimizer.safetensors"})
TRAINING_RECORD_DIRS = frozenset({"tensorboard"})


def checkpoint_sha256(path: str | os.PathLike | None) -> str:
    """sha256 of a checkpoint file, or of a folder (hash of sorted relative names and file hashes).

    A folder's training record (``TRAINING_RECORD_FILES``/``_DIRS``) is left out, and safetensors
    files are hashed in canonical form (``file_sha256``), so that two builds of bitwise-identical
    weights have one hash, the one that run records and cache keys carry.
    """
    if path is None:
        return "none"
    p = Path(path)
    if p.is_file():
        return file_sha256(p, canonical_safetensors=True)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file() and not _training_record(q.relative_to(p))):
            h.update(str(f.relative_to(p)).encode())
            h.update(file_sha256(f, canonical_safetensors=True).encode())
        return h.hexdigest()
    raise FileNotFoundError(f"{p}: checkpoint not found (expected a file or a folder)")


def _training_record(rel: Path) -> bool:
    return rel.name in TRAINING_RECORD_FILES or any(part in TRAINING_RECORD_DIRS for part in rel.parts[:-1])


def state_dict_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a torch state dict: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(kind: str, *, model_id: str, checkpoint_sha: str, preprocessing_id: str,
              image_sha: str, prompt: str | None = None, code_version: str = "",
              extra: dict[str, Any] | None = None) -> str:
    """Stable key over every input that changes the cached output (``code_version``: the adapter's,
    ``benchmark.adapter.code_version``, so a changed adapter never reads its old outputs)."""
    payload = {"kind": kind, "model": model_id, "ckpt": checkpoint_sha, "prep": preprocessing_id,
               "image": image_sha, "prompt": prompt, "code": code_version, "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_ALIGN = 64


def _pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """A JSON header (name, dtype, shape, offset of each array) then the raw bytes, each aligned.

    Not ``.npz``: a zip with one member per array costs more to open than the heatmap it holds, and
    a run reads one entry per sample, model and task. Object arrays are refused (no pickle)."""
    index, offset = [], 0
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"cache entry {name!r}: object arrays are not stored")
        index.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    head = json.dumps(index).encode()
    start = -(-(8 + len(head)) // _ALIGN) * _ALIGN
    buf = bytearray(start + offset)
    buf[:8] = len(head).to_bytes(8, "little")
    buf[8:8 + len(head)] = head
    for item, a in zip(index, arrays.values()):
        raw = np.ascontiguousarray(a).tobytes()
        buf[start + item["offset"]:start + item["offset"] + len(raw)] = raw
    return bytes(buf)


def _unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    n = int.from_bytes(payload[:8], "little")
    index = json.loads(payload[8:8 + n])
    start = -(-(8 + n) // _ALIGN) * _ALIGN
    buf = bytearray(payload)  # writable arrays, as np.load gave
    out = {}
    for item in index:
        dtype = np.dtype(item["dtype"])
        if dtype.hasobject:
            raise ValueError("object array in a cache entry")
        count = int(np.prod(item["shape"], dtype=np.int64))
        out[item["name"]] = np.frombuffer(buf, dtype=dtype, count=count,
                                          offset=start + item["offset"]).reshape(item["shape"])
    return out


class ArrayCache:
    """A folder of entries (``_pack_arrays``) addressed by ``cache_key``; writes are atomic, and each entry starts
    with the sha256 of its payload, checked on every read: a torn or altered entry is deleted,
    counted in ``corrupt`` and recomputed, never served and never fatal."""

    MAGIC = b"afloc-bench-cache-2\n"

    def __init__(self, root: str | os.PathLike, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.arrays"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        p = self._path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        n = len(self.MAGIC)
        payload = data[n + 32:]
        try:
            if data[:n] != self.MAGIC or hashlib.sha256(payload).digest() != data[n:n + 32]:
                raise ValueError("checksum mismatch")
            out = _unpack_arrays(payload)
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
            self.corrupt += 1
            self.misses += 1
            p.unlink(missing_ok=True)
            return None
        self.hits += 1
        return out

    def put(self, key: str, **arrays: np.ndarray) -> None:
        if not self.enabled:
            return
        payload = _pack_arrays({k: np.asarray(v) for k, v in arrays.items()})
        # no fsync: a torn entry (power loss) fails its checksum on read and is recomputed
        atomic_write_bytes(self._path(key), self.MAGIC + hashlib.sha256(payload).digest() + payload, durable=False)
