"""Overlap metrics on one pair of bool masks (2D or 3D): Dice and IoU (MONAI), and the input check
`check_pair` every metric of this package uses."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


def _overlap(pred: np.ndarray, gt: np.ndarray, name: str) -> float:
    """MONAI `compute_dice` / `compute_iou` with `ignore_empty=False` on one mask pair."""
    from monai.metrics import (  # here: importing monai takes seconds
        compute_dice,
        compute_iou,
    )

    p, g = check_pair(pred, gt)
    fn = compute_dice if name == "dice" else compute_iou
    t_p, t_g = (torch.from_numpy(m.astype(np.float32))[None, None] for m in (p, g))
    return float(fn(t_p, t_g, include_background=True, ignore_empty=False).item())


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P∩G| / (|P|+|G|) of two bool masks H×W or H×W×D (MONAI `compute_dice`).
    Both empty → 1.0; exactly one empty → 0.0. Unit-free."""
    return _overlap(pred, gt, "dice")


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU |P∩G| / |P∪G| of two bool masks H×W or H×W×D (MONAI `compute_iou`).
    Both empty → 1.0; exactly one empty → 0.0. Unit-free."""
    return _overlap(pred, gt, "iou")
