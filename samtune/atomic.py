"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half.

    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write_text(path, json.dumps(summary))
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write(f)` into a temporary file beside `path` (parent folders are created), fsync, then
    os.replace it over `path`; on any error the temporary file is removed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`text` as UTF-8, atomically (see `atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
