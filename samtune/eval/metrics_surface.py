"""Surface and centreline metrics on one pair of binary masks: HD95, NSD (MONAI) and clDice.

Pure functions on boolean arrays `pred` and `gt` of the same shape, 2D (H×W) or 3D (H×W×D);
`spacing` is the voxel size in mm along each array axis (anisotropic allowed, one value per axis).

Empty cases are decided here, before MONAI is called, because MONAI answers them with NaN or inf
(and its metric classes then drop those values from means, MONAI issue #9095):

| metric  | both empty | exactly one empty (miss or false positive)                      |
|---------|------------|-----------------------------------------------------------------|
| hd95_mm | 0.0        | diagonal of the image extent, sqrt(sum((shape·spacing)²)) in mm |
| nsd     | 1.0        | 0.0                                                             |
| cldice  | 1.0        | 0.0                                                             |

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

log = logging.getLogger(__name__)


def check_pair(pred: np.ndarray, gt: np.ndarray,
               spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a mask pair (same shape, 2D or 3D; spacing one positive mm value per axis) and
    return both as bool arrays."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape or p.ndim not in (2, 3):
        raise ValueError(f"pred and gt must be 2D or 3D masks of one shape, got {p.shape} "
                         f"and {g.shape}")
    if spacing is not None:
        if len(spacing) != p.ndim or any(not s > 0 for s in spacing):
            raise ValueError(f"spacing must hold {p.ndim} positive values (mm), got {spacing}")
    return p, g


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
    from monai.metrics import compute_hausdorff_distance  # here: importing monai takes seconds

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


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Centreline of a 2D or 3D bool mask (`skimage.morphology.skeletonize`, Lee's method in
    3D). A non-empty mask whose skeleton vanishes (a blob of a voxel or two) is its own
    skeleton, so a tiny structure still counts."""
    from skimage.morphology import skeletonize

    skel = skeletonize(mask).astype(bool)
    if mask.any() and not skel.any():
        return mask.copy()
    return skel


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centreline Dice (Shit et al., CVPR 2021) in [0, 1] of two bool masks H×W or H×W×D.

    tprec = |skel(pred) ∩ gt| / |skel(pred)|, tsens = |skel(gt) ∩ pred| / |skel(gt)|,
    clDice = 2·tprec·tsens / (tprec + tsens) (0 when both are 0). Unit-free: skeletons are taken
    on the voxel grid as stored, so spacing plays no part. Both empty → 1.0; exactly one empty →
    0.0.
    """
    p, g = check_pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    skel_p, skel_g = skeleton(p), skeleton(g)
    tprec = np.count_nonzero(skel_p & g) / np.count_nonzero(skel_p)
    tsens = np.count_nonzero(skel_g & p) / np.count_nonzero(skel_g)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))
