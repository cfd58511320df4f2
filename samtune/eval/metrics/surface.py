"""Surface metrics on one pair of binary masks: HD95 and NSD (MONAI).

Pure functions on boolean arrays `pred` and `gt` of the same shape, 2D (H×W) or 3D (H×W×D);
`spacing` is the voxel size in mm along each array axis (anisotropic allowed, one value per axis).

Empty cases are decided here, before MONAI is called, because MONAI answers them with NaN or inf
(and its metric classes then drop those values from means, MONAI issue #9095):

| metric  | both empty | exactly one empty (miss or false positive)                      |
|---------|------------|-----------------------------------------------------------------|
| hd95_mm | 0.0        | diagonal of the image extent, sqrt(sum((shape·spacing)²)) in mm |
| nsd     | 1.0        | 0.0                                                             |

No function here returns NaN or inf.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from samtune.eval.metrics.overlap import check_pair

log = logging.getLogger(__name__)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the image extent in mm, sqrt(sum((shape_i·spacing_i)²)): the worst HD95 given
    to a missed structure or a false positive on an empty case."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """H×W[×D] bool → 1×1×H×W[×D] float, the batch-first one-hot layout MONAI expects."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence the FutureWarning MONAI 1.5+ raises from its own internal call of
    `get_mask_edges(always_return_as_numpy=...)`, once per metric call (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy",
                                category=FutureWarning)
        yield


def hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the mask surfaces.

    `pred`, `gt`: H×W or H×W×D bool; `spacing`: voxel size in mm per axis. Computed by
    `monai.metrics.compute_hausdorff_distance(percentile=95, spacing=spacing)`: the larger of the
    two directed 95th percentiles of surface-voxel distances. Both empty → 0.0; exactly one empty
    → `image_diagonal_mm(shape, spacing)` (finite, larger than any distance inside the image).
    """
    p, g = check_pair(pred, gt, spacing)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return image_diagonal_mm(p.shape, spacing)
    from monai.metrics import (
        compute_hausdorff_distance,  # here: importing monai takes seconds
    )

    with _quiet_monai():
        hd = compute_hausdorff_distance(_one_hot(p), _one_hot(g), include_background=True,
                                        percentile=95, spacing=[float(s) for s in spacing])
    return float(hd.item())


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
        tolerance_mm: float = 1.0) -> float:
    """Normalized surface Dice in [0, 1]: the fraction of both surfaces lying within
    `tolerance_mm` (mm, ≥ 0) of the other surface.

    `pred`, `gt`: H×W or H×W×D bool; `spacing`: voxel size in mm per axis. Computed by
    `monai.metrics.compute_surface_dice(class_thresholds=[tolerance_mm], spacing=spacing)`; with a
    spacing, MONAI's distances (and so its thresholds) are in mm. Both empty → 1.0; exactly one
    empty → 0.0.
    """
    p, g = check_pair(pred, gt, spacing)
    if not tolerance_mm >= 0 or not math.isfinite(tolerance_mm):
        raise ValueError(f"tolerance_mm must be a finite value ≥ 0, got {tolerance_mm}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    from monai.metrics import compute_surface_dice

    with _quiet_monai():
        value = compute_surface_dice(_one_hot(p), _one_hot(g),
                                     class_thresholds=[float(tolerance_mm)],
                                     include_background=True, spacing=[float(s) for s in spacing])
    return float(value.item())
