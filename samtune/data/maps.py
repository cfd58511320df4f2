"""Quantitative maps (T2, T1rho, ADC …) co-registered with a case's image: found at ingest, checked
in validation, read for the qmap_* biomarkers.

A case's maps are `Case.maps` (name → file, kept in `meta["maps"]`). They come from
`data.maps` (name → path pattern relative to the dataset root, `<case>` replaced by the case id),
which every layout honours through `attach_maps`, or per case from a CSV manifest's `map_<name>`
columns (samtune.data.layouts.manifest), a manifest cell winning over the pattern. A map must have
the image's I×J×K shape and its affine (within validate.affine_tolerance_mm); `map_problems` gives
the quarantine reasons, each naming the map file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from samtune.data.cases import CaseCollection, DataError, Volume
from samtune.data.io import read_image

__all__ = ["map_path", "attach_maps", "map_problems", "map_facts", "read_maps"]
log = logging.getLogger(__name__)


def map_path(root: str | Path, pattern: str, case_id: str) -> Path:
    """`root/pattern` with `<case>` → case_id (data.maps patterns are checked to be relative)."""
    return Path(root) / pattern.replace("<case>", case_id)


def attach_maps(collection: CaseCollection, patterns: dict[str, str]) -> None:
    """Set `meta["maps"]` of every case from `patterns` (data.maps), in place. A map a case
    already has (a manifest column) is kept. A case whose map file does not exist is removed
    and its image recorded in `collection.skipped` with the missing file."""
    if not patterns:
        return
    kept = []
    for case in collection.cases:
        maps = dict(case.meta.get("maps", {}))
        missing = []
        for name, pattern in patterns.items():
            if name in maps:
                continue
            path = map_path(collection.root, pattern, case.case_id)
            if path.is_file():
                maps[name] = str(path)
            else:
                missing.append(f"map '{name}' missing: {path} does not exist (data.maps.{name})")
        if missing:
            source = case.image_paths[0] if case.image_paths else case.case_id
            collection.skipped[str(source)] = "; ".join(missing)
            log.warning("skipped %s: %s", source, "; ".join(missing))
            continue
        case.meta = {**case.meta, "maps": dict(sorted(maps.items()))}
        kept.append(case)
    collection.cases = kept


def map_problems(volume: Volume, affine_tolerance_mm: float) -> list[str]:
    """Reasons the maps of `volume.case` cannot be used with its image (C×I×J×K): unreadable,
    shape other than I×J×K, or an affine differing by more than `affine_tolerance_mm` (max
    absolute difference of the 4×4 entries, as for labels). Empty when all agree."""
    problems = []
    for name, path in sorted(volume.case.maps.items()):
        try:
            array, affine, _ = read_image(path)
        except DataError as exc:
            problems.append(f"map '{name}' unreadable: {exc}")
            continue
        shape = tuple(array.shape[:3] if array.ndim == 4 and array.shape[3] == 1 else array.shape)
        if shape != volume.shape:
            problems.append(f"map '{name}' {path}: shape {'x'.join(map(str, shape))} differs "
                            f"from image shape {'x'.join(map(str, volume.shape))}")
            continue
        diff = float(np.abs(np.asarray(affine) - np.asarray(volume.affine)).max())
        if diff > affine_tolerance_mm:
            problems.append(f"map '{name}' {path}: affine differs from image affine by "
                            f"{diff:g} mm (tolerance {affine_tolerance_mm:g} mm)")
    return problems


def map_facts(volume: Volume, affine_tolerance_mm: float) -> dict[str, Any]:
    """The validation facts of a case's maps: `map_problems` (list) and `n_map_problems`."""
    problems = map_problems(volume, affine_tolerance_mm)
    return {"map_problems": problems, "n_map_problems": len(problems)}


def read_maps(volume: Volume) -> dict[str, np.ndarray]:
    """Map name → I×J×K float32 array of `volume.case`'s maps. ValueError naming the map file
    when its shape differs from the image's (an unvalidated case); VolumeReadError when it
    cannot be read."""
    out = {}
    for name, path in sorted(volume.case.maps.items()):
        array = np.asarray(read_image(path)[0], dtype=np.float32)
        if array.ndim == 4 and array.shape[3] == 1:
            array = array[..., 0]
        if array.shape != volume.shape:
            raise ValueError(f"{path}: map '{name}' of case {volume.case.case_id} has shape "
                             f"{array.shape}, the image {volume.shape}")
        out[name] = array
    return out
