"""Biomarkers of a case with several named quantitative maps (data.maps: T2, T1rho …).

Biomarkers that need no map are computed once; each qmap_* biomarker once per map, its value
names suffixed with the map's name (`qmap_mean_t2`, `qmap_median_t1rho`), so every map gets
its own rows and its own agreement summary. The map named "qmap" (a case's legacy
`meta["qmap"]`) keeps the plain value names (`qmap_mean`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from samtune.eval.biomarkers.registry import BIOMARKERS, compute_biomarkers, validate_selection

__all__ = ["LEGACY_MAP", "needs_map", "compute_map_biomarkers"]

LEGACY_MAP = "qmap"


def needs_map(selection: Mapping[str, bool | Mapping[str, Any]]) -> bool:
    """Whether a selected biomarker needs a quantitative map (so the maps must be read)."""
    return any(BIOMARKERS[name].needs_qmap for name in validate_selection(selection))


def compute_map_biomarkers(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float],
                           selection: Mapping[str, bool | Mapping[str, Any]],
                           maps: Mapping[str, np.ndarray], *, where: str = "this case"
                           ) -> list[dict[str, Any]]:
    """`compute_biomarkers` rows (3D masks of one shape, spacing in mm) for the selection, the
    qmap_* ones per map of `maps` (name → map of the masks' shape), maps in name order, value
    names suffixed `_<name>` except for the map named "qmap". ValueError naming `where` when a
    qmap_* biomarker is selected and `maps` is empty."""
    chosen = validate_selection(selection)
    plain = {k: v for k, v in chosen.items() if not BIOMARKERS[k].needs_qmap}
    mapped = {k: v for k, v in chosen.items() if BIOMARKERS[k].needs_qmap}
    rows = compute_biomarkers(pred, gt, spacing, plain) if plain else []
    if mapped and not maps:
        raise ValueError(f"{where}: biomarker(s) {', '.join(sorted(mapped))} need a quantitative "
                         "map and the case has none; set data.maps (name → path pattern with "
                         "<case>, e.g. {t2: maps/<case>_t2.nii.gz}) or a CSV map_<name> column")
    for name, qmap in sorted(maps.items()) if mapped else ():
        for row in compute_biomarkers(pred, gt, spacing, mapped, qmap=qmap):
            suffix = "" if name == LEGACY_MAP else f"_{name}"
            rows.append({**row, "value_name": f"{row['value_name']}{suffix}"})
    return rows
