"""The embedding cache's files: many slices per shard, each shard memory-mapped once.

One (weights, preprocess) folder holds `shards/<name>.pt`, each a `torch.save` of
`{"version": 1, "entries": {sha256(slice key): {"image": C×h×w, "high_res": [levels],
"raw": bool}}}` in fp16, written whole to a temporary file and renamed, so a shard is complete or
absent. A shard is filled up to `shard_bytes` (256 MiB: ~128 ViT-B slices at 1024, ~512 at 512)
before it is written; its name is a hash of its slice digests, so two processes that encode the
same slices write the same file. Reading maps each shard once per process (memory-mapped,
tensors only) and hands out views: a slice costs its fp16→fp32 cast, with no
file open, no read into a buffer and no unpickling per slice. The index (digest → shard) is built
by scanning the folder on first use and kept up to date by this process's own writes;
`refresh()` picks up shards other processes wrote.

Stores written by samtune before shards (`<xx>/<digest>.pt`, one file per slice) are ignored,
with a warning: those slices are encoded again.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from samtune.atomic import atomic_write
from samtune.models.base import Embeddings

__all__ = ["EmbeddingStore", "SHARD_BYTES"]
logger = logging.getLogger(__name__)
SHARD_BYTES = 256 * 2**20
VERSION = 1


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _entry_bytes(entry: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in [entry["image"], *entry["high_res"]])


class EmbeddingStore:
    """The shards of one (weights, preprocess) folder. No model, so DataLoader workers can read;
    pickles without its maps (a worker maps the shards again, lazily).

    Writes are buffered: `save(key, emb, flush=False)` keeps the entry in memory (readable at
    once) until `shard_bytes` are pending or `flush()` is called; `save(…)` with the default
    flush=True writes what is pending now."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES):
        self.folder = Path(folder)
        self.shard_bytes = int(shard_bytes)
        self._where: dict[str, Path] | None = None  # digest → shard file
        self._maps: dict[Path, dict[str, Any]] = {}  # shard file → its mapped entries
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        if self._pending:
            raise RuntimeError(f"{self.folder}: flush() the embedding store before sharing it")
        return {"folder": self.folder, "shard_bytes": self.shard_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["shard_bytes"])  # type: ignore[misc]

    @property
    def shard_dir(self) -> Path:
        return self.folder / "shards"

    def _index(self) -> dict[str, Path]:
        if self._where is None:
            self.refresh()
        return self._where  # type: ignore[return-value]

    def refresh(self) -> None:
        """Scan the folder for shards (written by any process) and index their slices; an
        unreadable shard is skipped with a warning naming it (its slices are recomputed)."""
        where: dict[str, Path] = dict(self._where or {})
        known = set(where.values())
        for path in sorted(self.shard_dir.glob("*.pt")):
            if path not in known and (entries := self._map(path)) is not None:
                where.update(dict.fromkeys(entries, path))
        self._where = where
        if any(p.is_dir() and len(p.name) == 2 for p in self.folder.glob("??")):
            logger.warning("%s holds per-slice files of an older samtune; they are not read "
                           "(delete the ??/ folders to free the space)", self.folder)

    def _map(self, path: Path) -> dict[str, Any] | None:
        if path not in self._maps:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if data.get("version") != VERSION:
                    raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
                self._maps[path] = data["entries"]
            except Exception as exc:  # truncated/corrupt/foreign file: recompute its slices
                logger.warning("%s: unreadable embedding shard (%s); its slices are recomputed",
                               path, exc)
                return None
        return self._maps[path]

    def __contains__(self, key: str) -> bool:
        d = digest(key)
        return d in self._pending or d in self._index()

    def __len__(self) -> int:
        return len(self._index().keys() | self._pending.keys())

    def shard_of(self, key: str) -> Path | None:
        """The shard file holding `key` (None: not written, or only pending)."""
        return self._index().get(digest(key))

    def nbytes(self) -> int:
        """Bytes on disk of all shards (indexed ones)."""
        return sum(p.stat().st_size for p in set(self._index().values()))

    def load(self, key: str, dtype: torch.dtype = torch.float32) -> Embeddings | None:
        """The stored embedding of one slice (batch 1), or None if it is not stored."""
        d = digest(key)
        entry = self._pending.get(d)
        if entry is None:
            path = self._index().get(d)
            maps = self._map(path) if path is not None else None
            if maps is None:
                return None
            entry = maps[d]
        return Embeddings(entry["image"][None].to(dtype),
                          [h[None].to(dtype) for h in entry["high_res"]], bool(entry["raw"]))

    def save(self, key: str, emb: Embeddings, flush: bool = True) -> None:
        """Add one slice's embedding (batch 1) as fp16; written with the pending ones when they
        reach `shard_bytes`, or now if `flush`."""
        entry = {"image": emb.image[0].detach().to("cpu", torch.float16).clone(),
                 "high_res": [h[0].detach().to("cpu", torch.float16).clone()
                              for h in emb.high_res], "raw": bool(emb.raw)}
        self._pending[digest(key)] = entry
        self._pending_bytes += _entry_bytes(entry)
        if flush or self._pending_bytes >= self.shard_bytes:
            self.flush()

    def save_many(self, items: Sequence[tuple[str, Embeddings]]) -> None:
        """`save` each (key, embedding), then write them (and anything pending) as shards."""
        for key, emb in items:
            self.save(key, emb, flush=False)
        self.flush()

    def flush(self) -> Path | None:
        """Write the pending entries as one shard (atomically); returns its path (None if
        nothing was pending)."""
        if not self._pending:
            return None
        entries, self._pending, self._pending_bytes = dict(sorted(self._pending.items())), {}, 0
        name = hashlib.sha256("".join(entries).encode()).hexdigest()[:24]
        path = self.shard_dir / f"{name}.pt"
        atomic_write(path, lambda f: torch.save({"version": VERSION, "entries": entries}, f))
        self._maps.pop(path, None)  # read back memory-mapped: the heap copies are freed
        self._index().update(dict.fromkeys(entries, path))
        logger.debug("%s: %d slices, %.1f MB", path, len(entries), path.stat().st_size / 2**20)
        return path
