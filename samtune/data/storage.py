"""A full disk, said plainly: which folder filled, how much the work needed, how much is free.

`OSError: [Errno 28] No space left on device` names a file deep in a scratch folder or the
artifact store and nothing else; writers catch it and raise `StorageFullError` instead (after
removing what they had written, so nothing looks complete).
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from samtune.data.cases import DataError

__all__ = ["StorageFullError", "is_storage_full", "free_bytes", "tree_bytes", "human_bytes"]

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StorageFullError(DataError):
    """No space left (or quota exceeded) in `folder` while writing `what`.

    needed_bytes: an estimate of what the whole write needs (None: unknown); free_bytes: what
    the file system holding `folder` has left."""

    def __init__(self, folder: str | Path, what: str, needed_bytes: int | None,
                 at_least: bool = False):
        self.folder = Path(folder)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes(self.folder)
        need = "unknown" if needed_bytes is None else \
            f"{'at least ' if at_least else 'about '}{human_bytes(needed_bytes)} (estimate)"
        free = "unknown" if self.free_bytes is None else human_bytes(self.free_bytes)
        super().__init__(folder, f"no space left on the device while {what}: it needs {need}, "
                                 f"{free} free there; nothing was kept (partial output removed). "
                                 "Free space on that file system or point the folder elsewhere")


def is_storage_full(exc: BaseException) -> bool:
    """An OSError saying the disk is full or the quota exceeded."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system holding `folder` (or its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError:
        return None


def tree_bytes(root: str | Path) -> int:
    """Bytes of the regular files under `root` (0 when it is absent)."""
    total = 0
    for path in Path(root).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def human_bytes(n: int) -> str:
    """1536 → '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
