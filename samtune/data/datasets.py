"""Folder-backed dataset handles passed between pipeline stages.

The data lives in a folder (PNG slices + COCO JSON); the handle carries its path, a fingerprint
that identifies the content (inputs + settings that made it), and a small summary.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from samtune.data.cases import DataError


def fingerprint_of(*parts: Any) -> str:
    """sha256 of the JSON form of `parts` (dicts sorted), for content identity."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def read_coco_json(path: Path) -> dict[str, Any]:
    """A COCO annotations file as a dict with an 'images' list; DataError naming the file else."""
    if not path.is_file():
        raise DataError(path, "annotations file not found (is this a COCO / export split folder?)")
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"malformed annotations.json: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DataError(path, "malformed annotations.json: no 'images' list")
    return coco


@dataclass
class CocoDataset:
    """A converted dataset: `root/images/*.png` + `root/annotations.json` (all slices)."""

    root: Path
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    temporary: bool = False  # root is a scratch folder the materializer may delete once stored

    @property
    def annotations(self) -> Path:
        return self.root / "annotations.json"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d


@dataclass
class SplitDataset:
    """The exported layout: `root/{train,val,test}/{images,annotations.json}`, splits.json,
    dataset.json (fingerprint, categories, counts, training-split statistics)."""

    root: Path
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)

    def split_dir(self, split: str) -> Path:
        return self.root / split

    def categories(self) -> dict[int, str]:
        """Class id → name, from dataset.json."""
        info = json.loads((self.root / "dataset.json").read_text())
        return {int(c["id"]): str(c["name"]) for c in info["categories"]}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d
