"""Topology metric on one pair of bool masks: centreline Dice (clDice) of thin, tubular structures.
Both empty → 1.0; exactly one empty → 0.0."""
from __future__ import annotations

import numpy as np

from samtune.eval.metrics.overlap import check_pair


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
