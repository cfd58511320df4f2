"""Volumes on the 3D model grid (`samtune.data.grid3d`), the input of 3D (SAM-Med3D) training.

    <root>/volumes3d/images/<case_id>.nii.gz   float32, raw intensities, resampled (linear) to
                                               `spacing` mm and canonical (RAS) orientation
    <root>/volumes3d/labels/<case_id>.nii.gz   integer label map on the same grid (nearest);
                                               absent (index "label": null) for unlabelled cases
    <root>/volumes3d/index.json                {"version", "spacing", "classes" (if given),
                                               "cases": {case_id: {"split", "modality", "image",
                                               "label", "shape", "affine", "source_shape",
                                               "source_affine", "source_path",
                                               "source_label_path"}}}

Paths in the index are relative to volumes3d/; affines are 4×4 voxel → RAS mm, shapes (I, J, K).
The folder is built in a hidden sibling `.volumes3d.tmp-*` with index.json written last, then
renamed into place (a previous export is swapped out only at the very end): a crash leaves the old
export or none, never a half-written one with an index. Cases are read one at a time.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from samtune.data.cases import Case, DataError
from samtune.data.grid3d import UPSTREAM_SPACING, Grid3D
from samtune.data.io import load_volume, read_image, write_volume

__all__ = ["export_3d", "load_index", "read_case3d", "FOLDER", "INDEX"]

log = logging.getLogger(__name__)
FOLDER, INDEX, VERSION = "volumes3d", "index.json", 1


def _label_dtype(label: np.ndarray) -> np.dtype:
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _export_case(case: Case, split: str, tmp: Path, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Load, resample and write one case; its index record. Any failure names the case's file."""
    volume = load_volume(case)  # VolumeReadError (a DataError) names the file
    try:
        grid = Grid3D.build(volume, spacing)
    except DataError:
        raise
    except Exception as exc:  # torchio / SimpleITK errors do not name the file
        raise DataError(case.image_paths[0], f"cannot resample to {spacing} mm: "
                                             f"{type(exc).__name__}: {exc}") from None
    image_rel = f"images/{case.case_id}.nii.gz"
    write_volume(tmp / image_rel, grid.image.astype(np.float32), grid.affine)
    label_rel = None
    if grid.label is not None:
        label_rel = f"labels/{case.case_id}.nii.gz"
        write_volume(tmp / label_rel, grid.label.astype(_label_dtype(grid.label)), grid.affine)
    log.debug("%s: %s → %s at %s mm", case.case_id, volume.shape, grid.shape, spacing)
    return {"split": split, "modality": case.modality, "image": image_rel, "label": label_rel,
            "shape": list(grid.shape), "affine": np.asarray(grid.affine).tolist(),
            "source_shape": list(volume.shape), "source_affine": volume.affine.tolist(),
            "source_path": case.image_paths[0], "source_label_path": case.label_path}


def _check(cases: list[Case], splits: dict[str, str], out: Path) -> None:
    ids = [c.case_id for c in cases]
    bad = sorted({i for i in ids if ids.count(i) > 1 or not i or "/" in i or "\\" in i
                  or i.startswith(".")})
    if bad:
        raise DataError(None, f"case ids must be unique file names: {bad[:10]}")
    missing = [i for i in ids if i not in splits]
    if missing:
        raise DataError(None, f"{len(missing)} case(s) have no split: {missing[:10]}")
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX).is_file():
        raise DataError(out, f"exists, is not empty and is not a 3D export (no {INDEX}); "
                             "refusing to replace it")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename tmp to out, replacing a previous export only once tmp is complete."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "export")
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old / "export", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_3d(cases: Iterable[Case], splits: dict[str, str], root: str | Path,
              spacing: tuple[float, float, float] = UPSTREAM_SPACING, *,
              classes: dict[int, str] | None = None) -> Path:
    """Write `<root>/volumes3d/` (see the module docstring) for `cases`; `splits` maps every
    case_id to its split (train|val|test|infer). Returns the volumes3d folder.

    Raises DataError naming the file for a case that cannot be read or resampled, or for bad
    ids / missing splits / a non-export folder in the way; nothing is left behind then and a
    previous export stays as it was."""
    cases = list(cases)
    spacing = tuple(float(s) for s in spacing)
    out = Path(root) / FOLDER
    _check(cases, splits, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=out.parent))
    try:
        records = {c.case_id: _export_case(c, str(splits[c.case_id]), tmp, spacing)
                   for c in cases}
        index: dict[str, Any] = {"version": VERSION, "spacing": list(spacing)}
        if classes is not None:
            index["classes"] = {str(k): v for k, v in sorted(classes.items())}
        index["cases"] = dict(sorted(records.items()))
        with open(tmp / INDEX, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d volume(s) at %s mm to %s", len(records), spacing, out)
    return out


def load_index(root: str | Path) -> dict[str, Any]:
    """`<root>/volumes3d/index.json` (root: the dataset root, or the volumes3d folder itself)."""
    root = Path(root)
    folder = root if (root / INDEX).is_file() else root / FOLDER
    path = folder / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "no 3D export here (index.json missing)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable index: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("cases"), dict):
        raise DataError(path, "not a 3D export index (no 'cases' mapping)")
    return index


def read_case3d(root: str | Path, case_id: str, index: dict[str, Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One exported case → (image I×J×K float32, label I×J×K integer or None, affine 4×4);
    pass `index` (from load_index) to skip re-reading it."""
    root = Path(root)
    folder = root if (root / INDEX).is_file() else root / FOLDER
    index = load_index(folder) if index is None else index
    rec = index["cases"].get(case_id)
    if rec is None:
        raise DataError(folder / INDEX, f"no case '{case_id}'")
    image, affine, _ = read_image(folder / rec["image"])
    if list(image.shape) != list(rec["shape"]):
        raise DataError(folder / rec["image"], f"shape {image.shape} differs from the index's "
                                               f"{rec['shape']}")
    label = None
    if rec.get("label"):
        label, _, _ = read_image(folder / rec["label"])
        if label.shape != image.shape:
            raise DataError(folder / rec["label"], f"shape {label.shape} differs from the "
                                                   f"image's {image.shape}")
    return np.asarray(image, np.float32), label, affine
