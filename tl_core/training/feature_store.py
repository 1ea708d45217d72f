"""Frozen-prefix features shared between runs: safetensors files under the runs folder, plus a small
in-process memory layer for a warm worker that runs many runs.

The outputs of a frozen prefix are a pure function of what goes into it, so ``entry_key`` names an
entry by a sha256 of exactly those inputs (``features.prefix_features`` gathers them): the prefix's
weights (``weights_digest``: a hash of its state-dict tensors, never the backbone's name, since lab
weights are rebuilt under the same name), its architecture, the exact uint8 images of the split
(``tensor_digest``), the evaluation transform (size, interpolation, mean/std), the prefix depth, the
``classes`` subset, the device type and the precision.

``FeatureStore`` keeps one file per key in ``<runs folder>/feature_cache/`` (``<key>.safetensors``,
one tensor ``features`` and its sha256 in the metadata). Writes go to a temporary file in the same
folder, then ``os.replace``, so a concurrent reader never sees half a file. A file that does not load
or whose contents do not match its digest is deleted (the caller recomputes). The folder stays under
``limits.current().feature_cache_mb`` (``TL_LIMIT_FEATURE_CACHE_MB``; 0 turns the store off): a read
touches the file, and after each write the oldest files (by mtime) go first.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from tl_core import limits

FOLDER = "feature_cache"
SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600.0  # a temporary file this old was left by a writer that died
MEMORY_BYTES = 256 * 2**20  # the in-process layer keeps at most this many bytes of features

# --------------------------------------------------------------------------- keys

_digests: dict[int, tuple] = {}  # id(tensor) -> (weakref, stamp, digest)


def _forget(key: int):
    return lambda _ref: _digests.pop(key, None)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values (any device, any dtype). Remembered per tensor object
    until it changes in place (its version counter moves: optimiser steps, ``load_state_dict``, ``add_``),
    so a model's weights are hashed once. (Writing through ``.data`` bypasses the counter: don't.)"""
    stamp = (t._version, t.data_ptr(), t.dtype, tuple(t.shape), str(t.device))
    hit = _digests.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == stamp:
        return hit[2]
    flat = t.detach().contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(flat.view(torch.uint8).cpu().numpy() if flat.numel() else b"")
    digest = h.hexdigest()
    try:
        _digests[id(t)] = (weakref.ref(t, _forget(id(t))), stamp, digest)
    except TypeError:  # not weak-referenceable: just not remembered
        pass
    return digest


def weights_digest(named) -> str:
    """sha256 over ``(name, tensor)`` pairs (a state dict's items): names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(f"{name}={tensor_digest(t)};".encode())
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry_key(inputs: dict) -> str:
    """The entry name: sha256 of the key inputs (JSON with sorted keys; anything else as ``str``)."""
    return text_digest(json.dumps(inputs, sort_keys=True, default=str))


# --------------------------------------------------------------------------- memory layer


class _Memory:
    """Recently used features (CPU tensors), least recently used dropped first once over ``cap`` bytes.
    Thread-safe (a worker may run several runs at once)."""

    def __init__(self, cap: int):
        self.cap, self.items, self.lock = cap, OrderedDict(), threading.Lock()

    def get(self, key) -> torch.Tensor | None:
        with self.lock:
            t = self.items.get(key)
            if t is not None:
                self.items.move_to_end(key)
            return t

    def put(self, key, t: torch.Tensor) -> None:
        if t.nbytes > self.cap:
            return
        with self.lock:
            self.items[key] = t
            self.items.move_to_end(key)
            while sum(x.nbytes for x in self.items.values()) > self.cap:
                self.items.popitem(last=False)

    def drop(self, key) -> None:
        with self.lock:
            self.items.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


MEMORY = _Memory(MEMORY_BYTES)


# --------------------------------------------------------------------------- the store on disk


def default_folder(runs_dir: str | os.PathLike | None = None) -> Path:
    """The store's folder in the runs folder ``runs_dir`` (the run store a run belongs to), else in
    ``paths.default_runs_dir()`` (``$TL_RUNS_DIR``, else ./runs)."""
    from tl_core.paths import default_runs_dir

    return Path(runs_dir or default_runs_dir()) / FOLDER


class FeatureStore:
    """Feature tensors by key, on disk in ``folder`` (default: ``default_folder()``) under
    ``cap_bytes`` (default from ``limits.current().feature_cache_mb``; 0: off), with the memory layer
    in front. ``load(key)`` → CPU tensor or None; ``store(key, tensor)`` → whether it was written."""

    def __init__(self, folder: str | os.PathLike | None = None, cap_bytes: int | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.cap = cap_bytes if cap_bytes is not None else limits.current().feature_cache_mb * 2**20

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def _mem_key(self, key: str) -> tuple[str, str]:
        return str(self.folder.resolve()), key

    def load(self, key: str) -> torch.Tensor | None:
        """The stored features (touched: most recently used), or None (absent, evicted, or corrupt: deleted)."""
        path, mem = self.path(key), self._mem_key(key)
        try:
            os.utime(path)
        except OSError:  # absent, or evicted by another worker: the memory copy goes too
            MEMORY.drop(mem)
            return None
        cached = MEMORY.get(mem)
        if cached is not None:
            return cached
        t = self._read(path, key)
        if t is not None:
            MEMORY.put(mem, t)
        return t

    @staticmethod
    def _read(path: Path, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta, t = f.metadata() or {}, f.get_tensor("features")
            if meta.get("key") != key or meta.get("sha256") != tensor_digest(t):
                raise ValueError("contents do not match the entry")
            return t
        except Exception:  # unreadable, truncated or altered: delete, the caller recomputes
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, features: torch.Tensor) -> bool:
        """Write ``features`` atomically under ``key`` (then evict down to the cap). False when the store
        is off, the tensor alone exceeds the cap, or the disk refuses (the run goes on without it)."""
        from safetensors.torch import save_file

        t = features.detach().cpu().contiguous()
        if not self.enabled or t.nbytes > self.cap:
            return False
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TMP_PREFIX, suffix=SUFFIX)
            os.close(fd)
            save_file({"features": t}, tmp, metadata={"key": key, "sha256": tensor_digest(t)})
            os.replace(tmp, self.path(key))
        except Exception:  # disk full, read-only folder...: the run goes on, its features just aren't shared
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return False
        MEMORY.put(self._mem_key(key), t)
        self.evict()
        return True

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every stored entry, oldest first."""
        out = []
        for p in self.folder.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:  # removed meanwhile by another worker
                continue
            if p.name.startswith(TMP_PREFIX):
                if time.time() - st.st_mtime > STALE_TMP_S:
                    p.unlink(missing_ok=True)
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def evict(self) -> None:
        """Delete the least recently used entries until the folder holds at most ``cap`` bytes."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.cap:
                break
            path.unlink(missing_ok=True)
            MEMORY.drop(self._mem_key(path.name[:-len(SUFFIX)]))
            total -= size
