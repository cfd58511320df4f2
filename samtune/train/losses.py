"""Training losses for promptable segmentation: MONAI Dice+CE / Dice+focal and the IoU-head MSE.

All functions are pure (no module state) and work on the instances of a batch pooled together:

    logits   N×M×S×S  mask logits on the input grid (`model.upscale` output), M = 1 or 3
    iou_pred N×M      the decoder's IoU predictions
    target   N×S×S    bool ground-truth instance masks

3D models (SAM-Med3D) pass N×M×S×S×S logits and N×S×S×S targets: every function reduces over
all spatial axes, so the 3D loss is the same MONAI Dice+CE on volumes (upstream's DiceCELoss).

Multimask (M = 3): like SAM's training, the segmentation loss back-propagates only through the
best-matching candidate (the lowest per-instance segmentation loss), so the three outputs are
free to specialise on whole/part/sub-part; the IoU head is supervised on all M candidates (each
has a well-defined actual IoU, and ranking the candidates is what the head is for: SAM 2.1's
`supervise_all_iou`).

The per-instance segmentation loss is MONAI's: DiceLoss(sigmoid) per instance plus the
pixel-mean BCE-with-logits (`dice_ce`) or MONAI FocalLoss (`dice_focal`). Averaged over N it is
exactly `monai.losses.DiceCELoss(sigmoid=True)` / `DiceFocalLoss(sigmoid=True)` on the N×1×S×S
tensors (those do not offer a per-item reduction, which the min over M needs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

__all__ = ["LossParts", "seg_loss_per_mask", "mask_iou", "sam_loss"]

SegLoss = Literal["dice_ce", "dice_focal"]


@dataclass
class LossParts:
    """total = seg_weight·seg + iou_weight·iou (scalars); best: N indices of the supervised mask."""

    total: torch.Tensor
    seg: torch.Tensor
    iou: torch.Tensor
    best: torch.Tensor


def seg_loss_per_mask(logits: torch.Tensor, target: torch.Tensor,
                      kind: SegLoss = "dice_ce", *, dice_weight: float = 1.0,
                      pixel_weight: float = 1.0, focal_gamma: float = 2.0,
                      focal_alpha: float | None = None) -> torch.Tensor:
    """N×M×S×S logits vs N×S×S bool target → N×M per-candidate loss
    dice_weight·Dice + pixel_weight·(CE or focal), in float32 (MONAI's DiceCELoss lambda_dice /
    lambda_ce, DiceFocalLoss lambda_focal, FocalLoss gamma / alpha). Dice uses MONAI's smoothing
    (1e-5), so an empty target with an empty prediction costs ~0 Dice loss."""
    if logits.dim() not in (4, 5) or target.dim() != logits.dim() - 1 \
            or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"expected logits N×M×S×S (×S) and target N×S×S (×S), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    n, m, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    x = logits.float().reshape(n * m, 1, *spatial)
    y = target[:, None].expand(n, m, *spatial).reshape(n * m, 1, *spatial).to(x.dtype)
    dice = DiceLoss(sigmoid=True, reduction="none")(x, y).reshape(n, m)
    if kind == "dice_ce":
        pixel = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    elif kind == "dice_focal":
        pixel = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, reduction="none")(x, y)
    else:
        raise ValueError(f"unknown segmentation loss '{kind}' (dice_ce or dice_focal)")
    return dice_weight * dice + pixel_weight * pixel.flatten(1).mean(dim=1).reshape(n, m)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction (logit > 0) with the target: N×M×S×S, N×S×S → N×M.
    Empty prediction and empty target (union 0) count as IoU 1."""
    pred = (logits > 0).flatten(2)
    gt = target[:, None].flatten(2)
    inter = (pred & gt).sum(dim=-1).float()
    union = (pred | gt).sum(dim=-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, *,
             kind: SegLoss = "dice_ce", seg_weight: float = 1.0,
             iou_weight: float = 1.0, **seg_kwargs: float | None) -> LossParts:
    """The training loss of one batch of N instances (see the module docstring).

    seg: mean over instances of the best candidate's segmentation loss; iou: MSE over all N×M
    candidates between `iou_pred` and the actual IoU of each thresholded candidate (a target,
    hence detached). N = 0 is an error: the caller skips images without instances.
    seg_kwargs: `seg_loss_per_mask`'s weights (dice_weight, pixel_weight, focal_gamma/alpha).
    """
    if logits.shape[0] == 0:
        raise ValueError("sam_loss needs at least one instance")
    per_mask = seg_loss_per_mask(logits, target, kind, **seg_kwargs)  # type: ignore[arg-type]
    best = per_mask.detach().argmin(dim=1)
    seg = per_mask.gather(1, best[:, None]).mean()
    iou_target = mask_iou(logits.detach(), target)
    iou = F.mse_loss(iou_pred.float(), iou_target)
    return LossParts(seg_weight * seg + iou_weight * iou, seg, iou, best)
