"""The units the data layer passes around: cases (paths + identity), loaded volumes, errors.

A `Case` holds no voxels: layouts yield cases, and `samtune.data.io.load_volume` reads one when a
worker needs it, so nothing keeps more than one volume in memory per worker.

Geometry convention (the whole package): arrays are indexed (i, j, k) like nibabel, and
`affine` maps voxel indices to world millimetres in RAS+ (NIfTI convention). NRRD and MHA headers
(LPS) are converted on read and back on write.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DataError(Exception):
    """Bad input data. The message names the file (or case) and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class LayoutError(DataError):
    """A dataset folder does not match its declared layout (missing folder, duplicate ids, …)."""


class VolumeReadError(DataError):
    """A file cannot be read as an image/label volume (truncated, unknown format, wrong rank)."""


@dataclass
class Case:
    """One patient scan as found on disk.

    `image_paths` has one entry per channel (nnU-Net `_0000`, `_0001`, …). `label_path` is None for
    inference-only cases. `split` is set only by pre-split layouts (e.g. a COCO `valid/` folder,
    nnU-Net `imagesTs`, ASOCA `Testset_*`). `meta` carries layout-specific keys (e.g. the COCO
    image id for a COCO-2D case, whose `label_path` is the annotation JSON).
    """

    case_id: str
    patient_id: str
    image_paths: tuple[str, ...]
    label_path: str | None = None
    group: str | None = None
    modality: str = "CT"
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_paths"] = list(self.image_paths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Case":
        d = dict(d)
        d["image_paths"] = tuple(d["image_paths"])
        return cls(**d)

    @property
    def maps(self) -> dict[str, str]:
        """Quantitative map name → file (`meta["maps"]`, set by ingest from data.maps; a legacy
        `meta["qmap"]` path is the map named "qmap"). Empty when the case has none."""
        legacy = {"qmap": self.meta["qmap"]} if self.meta.get("qmap") else {}
        return {**legacy, **self.meta.get("maps", {})}

    @property
    def files(self) -> list[str]:
        """Every file this case reads (images, then label, then its maps by name)."""
        return (list(self.image_paths) + ([self.label_path] if self.label_path else [])
                + [path for _, path in sorted(self.maps.items())])


@dataclass
class CaseCollection:
    """What ingest returns: the cases of one dataset plus its label names.

    `labels` maps label value → class name (background 0 excluded). `fingerprints` maps each file
    path to the sha256 of its content, so a changed file (not a changed mtime) changes
    `content_hash()` and with it every cached step downstream. `skipped` maps a file the layout
    could not use (label without image, image without its label, …) to the reason.
    """

    layout: str
    root: str
    cases: list[Case]
    labels: dict[int, str]
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "root": self.root,
            "labels": {str(k): v for k, v in self.labels.items()},
            "cases": [c.to_dict() for c in self.cases],
            "fingerprints": dict(sorted(self.fingerprints.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CaseCollection":
        return cls(
            layout=d["layout"],
            root=d["root"],
            cases=[Case.from_dict(c) for c in d["cases"]],
            labels={int(k): v for k, v in d["labels"].items()},
            fingerprints=dict(d.get("fingerprints", {})),
            skipped=dict(d.get("skipped", {})),
        )

    def content_hash(self) -> str:
        """sha256 over ids, labels and file contents (not paths' mtimes)."""
        payload = self.to_dict()
        payload["fingerprints"] = sorted(self.fingerprints.values())
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def subset(self, case_ids: set[str]) -> "CaseCollection":
        keep = [c for c in self.cases if c.case_id in case_ids]
        files = {f for c in keep for f in c.files}
        fps = {k: v for k, v in self.fingerprints.items() if k in files}
        return CaseCollection(self.layout, self.root, keep, dict(self.labels), fps,
                              dict(self.skipped))


@dataclass
class Volume:
    """A loaded case.

    image: C×I×J×K (C ≥ 1 channels; a 2D image is I×J×1 with C=1 or 3).
    label: I×J×K integer label map, or None for inference-only cases.
    affine: 4×4 voxel → world (RAS+, mm) of the image; label_affine the label's own.
    """

    case: Case
    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    label_affine: np.ndarray | None = None
    source_format: str = "nifti"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])
