"""Shared logic for folder-backed datasets: files under `<uri>/data`, identity in `meta.json`.

On a local artifact store files are hard-linked (no second copy of a large dataset); on a remote
one they are uploaded with ZenML's fileio and downloaded to a local cache folder on load.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from samtune.data.storage import StorageFullError, is_storage_full, tree_bytes


def _is_local(uri: str) -> bool:
    return "://" not in uri


def _link_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


class FolderDatasetMaterializer(BaseMaterializer):
    """Base class: subclasses set ASSOCIATED_TYPES to a dataclass with root/fingerprint/summary."""

    SKIP_REGISTRATION = True  # abstract: registered through its subclasses

    def save(self, data: Any) -> None:
        try:
            self._save(data)
        except OSError as exc:  # disk full: say where and how much, keep no partial artifact
            if not is_storage_full(exc):
                raise
            needed = tree_bytes(data.root)
            if _is_local(self.uri):
                shutil.rmtree(self.uri, ignore_errors=True)
            elif fileio.exists(self.uri):
                fileio.rmtree(self.uri)
            if getattr(data, "temporary", False):
                shutil.rmtree(data.root, ignore_errors=True)
            raise StorageFullError(self.uri, f"storing {type(data).__name__} ({data.root}) in "
                                   "the ZenML artifact store (under stack.home)", needed) from None

    def _save(self, data: Any) -> None:
        dst = os.path.join(self.uri, "data")
        if _is_local(self.uri):
            _link_tree(Path(data.root), Path(dst))
        else:
            for path in sorted(Path(data.root).rglob("*")):
                if path.is_file():
                    target = os.path.join(dst, str(path.relative_to(data.root)))
                    fileio.makedirs(os.path.dirname(target))
                    fileio.copy(str(path), target, overwrite=True)
        meta = {"fingerprint": data.fingerprint, "summary": data.summary}
        with fileio.open(os.path.join(self.uri, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        if getattr(data, "temporary", False):
            shutil.rmtree(data.root, ignore_errors=True)

    def load(self, data_type: type[Any]) -> Any:
        with fileio.open(os.path.join(self.uri, "meta.json"), "r") as f:
            meta = json.load(f)
        root = os.path.join(self.uri, "data")
        if not _is_local(self.uri):
            local = Path(tempfile.mkdtemp(prefix="samtune-artifact-"))
            for src in fileio.walk(root):
                folder, _, files = src
                for name in files:
                    rel = os.path.relpath(os.path.join(folder, name), root)
                    (local / rel).parent.mkdir(parents=True, exist_ok=True)
                    fileio.copy(os.path.join(folder, name), str(local / rel), overwrite=True)
            root = str(local)
        return data_type(root=Path(root), fingerprint=meta["fingerprint"], summary=meta["summary"])

    def compute_content_hash(self, data: Any) -> str:
        return data.fingerprint

    def extract_metadata(self, data: Any) -> dict[str, Any]:
        flat = {k: v for k, v in data.summary.items() if isinstance(v, (int, float, str))}
        return {"fingerprint": data.fingerprint, **flat}
