"""Quantitative-map biomarkers: statistics of a co-registered map (T2, T1rho, ADC …)
inside a mask."""
from __future__ import annotations

import math

import numpy as np

from samtune.eval.biomarkers.shape import check_inputs


def _qmap_values(mask: np.ndarray, spacing: tuple[float, float, float],
                 qmap: np.ndarray | None) -> np.ndarray:
    m, _ = check_inputs(mask, spacing)
    if qmap is None:
        raise ValueError("this biomarker needs a quantitative map (qmap=...), co-registered "
                         "with the mask; none was given")
    q = np.asarray(qmap, dtype=np.float64)
    if q.shape != m.shape:
        raise ValueError(f"qmap shape {q.shape} differs from mask shape {m.shape}")
    values = q[m]
    return values[np.isfinite(values)]


def qmap_mean(mask: np.ndarray, spacing: tuple[float, float, float], *,
              qmap: np.ndarray | None = None) -> dict[str, float]:
    """Mean of the co-registered quantitative map (e.g. T2 in ms) inside the mask, non-finite
    map voxels ignored. Empty mask (or no finite value): NaN. ValueError if qmap is missing or
    its shape differs from the mask's."""
    values = _qmap_values(mask, spacing, qmap)
    return {"qmap_mean": float(values.mean()) if values.size else math.nan}


def qmap_median(mask: np.ndarray, spacing: tuple[float, float, float], *,
                qmap: np.ndarray | None = None) -> dict[str, float]:
    """Median of the quantitative map inside the mask; as `qmap_mean` otherwise."""
    values = _qmap_values(mask, spacing, qmap)
    return {"qmap_median": float(np.median(values)) if values.size else math.nan}
