"""Losses against MONAI and hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss

from samtune.train.losses import mask_iou, sam_loss, seg_loss_per_mask


def _square_target(n: int = 1, size: int = 4) -> torch.Tensor:
    target = torch.zeros(n, size, size, dtype=torch.bool)
    target[:, :2, :2] = True  # 4 of 16 pixels
    return target


@pytest.mark.parametrize("kind, reference", [("dice_ce", DiceCELoss), ("dice_focal", DiceFocalLoss)])
def test_single_mask_mean_equals_monai(kind: str, reference: type) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 16, 16, generator=gen) * 3
    target = torch.rand(5, 16, 16, generator=gen) > 0.6
    ours = seg_loss_per_mask(logits, target, kind)
    assert ours.shape == (5, 1)
    expected = reference(sigmoid=True)(logits, target[:, None].float())
    assert torch.allclose(ours.mean(), expected, atol=1e-6)


def test_dice_ce_hand_computed_at_zero_logits() -> None:
    # sigmoid(0) = 0.5 everywhere: Dice = 2·0.5·4 / (0.5·16 + 4) = 1/3, BCE = ln 2 per pixel.
    loss = seg_loss_per_mask(torch.zeros(1, 1, 4, 4), _square_target(), "dice_ce")
    assert loss.item() == pytest.approx(2 / 3 + math.log(2), abs=1e-5)


def test_perfect_logits_cost_almost_nothing() -> None:
    target = _square_target()
    logits = torch.where(target, 20.0, -20.0)[:, None]
    assert seg_loss_per_mask(logits, target, "dice_ce").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown segmentation loss"):
        seg_loss_per_mask(logits, target, "dice")  # type: ignore[arg-type]


def test_mask_iou_hand_computed() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2, :3] = True  # 6 pixels
    logits = torch.full((1, 2, 4, 4), -1.0)
    logits[0, 0, 1:3, :2] = 1.0  # 4 pixels, 2 of them inside the target: IoU 2/8
    # candidate 1 predicts nothing: IoU 0
    assert mask_iou(logits, target).tolist() == [[0.25, 0.0]]
    assert mask_iou(torch.full((1, 1, 4, 4), -1.0), torch.zeros(1, 4, 4, dtype=torch.bool)).item() == 1.0


def test_multimask_supervises_only_the_best_candidate() -> None:
    target = _square_target(2)
    good = torch.where(target, 5.0, -5.0)
    logits = torch.stack([torch.zeros_like(good), good, -good], dim=1).requires_grad_()
    iou_pred = torch.zeros(2, 3)
    parts = sam_loss(logits, iou_pred, target, seg_weight=1.0, iou_weight=0.0)
    per_mask = seg_loss_per_mask(logits.detach(), target)
    assert parts.best.tolist() == [1, 1]
    assert parts.seg.item() == pytest.approx(per_mask[:, 1].mean().item(), abs=1e-6)
    parts.total.backward()
    grad = logits.grad.abs().sum(dim=(2, 3))
    assert (grad[:, 1] > 0).all() and (grad[:, [0, 2]] == 0).all()


def test_iou_loss_is_mse_on_all_candidates_with_detached_target() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2, :3] = True
    logits = torch.full((1, 2, 4, 4), -1.0)
    logits[0, 0, 1:3, :2] = 1.0  # actual IoUs: 0.25 and 0
    logits.requires_grad_()
    iou_pred = torch.tensor([[0.75, 0.5]], requires_grad=True)
    parts = sam_loss(logits, iou_pred, target, seg_weight=0.0, iou_weight=2.0)
    expected_iou = ((0.75 - 0.25) ** 2 + 0.5 ** 2) / 2
    assert parts.iou.item() == pytest.approx(expected_iou)
    assert parts.total.item() == pytest.approx(2.0 * expected_iou)
    parts.total.backward()
    assert logits.grad is None or (logits.grad == 0).all()  # the target IoU is detached
    # d/dp of 2·mean((p − t)²) = 2·2(p − t)/2
    assert iou_pred.grad[0].tolist() == pytest.approx([2 * (0.75 - 0.25), 2 * 0.5])


def test_weights_combine_and_empty_batch_is_refused() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(3, 1, 8, 8, generator=gen), torch.rand(3, 8, 8, generator=gen) > 0.5
    iou_pred = torch.rand(3, 1, generator=gen)
    parts = sam_loss(logits, iou_pred, target, kind="dice_focal", seg_weight=0.5, iou_weight=3.0)
    assert parts.total.item() == pytest.approx(0.5 * parts.seg.item() + 3.0 * parts.iou.item())
    with pytest.raises(ValueError, match="at least one instance"):
        sam_loss(logits[:0], iou_pred[:0], target[:0])
    with pytest.raises(ValueError, match="N×M×S×S"):
        seg_loss_per_mask(logits[:, 0], target)


def test_loss_weights_are_monais_lambdas():
    from monai.losses import DiceCELoss, DiceFocalLoss

    from samtune.train.losses import seg_loss_per_mask

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 16, 16, generator=g)
    target = torch.rand(3, 16, 16, generator=g) > 0.6
    y = target[:, None].float()
    ours = seg_loss_per_mask(logits, target, "dice_ce", dice_weight=0.3, pixel_weight=2.0)
    theirs = DiceCELoss(sigmoid=True, lambda_dice=0.3, lambda_ce=2.0)(logits, y)
    assert torch.allclose(ours.mean(), theirs, atol=1e-5)
    ours = seg_loss_per_mask(logits, target, "dice_focal", dice_weight=0.5, pixel_weight=4.0,
                             focal_gamma=1.5, focal_alpha=0.25)
    theirs = DiceFocalLoss(sigmoid=True, lambda_dice=0.5, lambda_focal=4.0, gamma=1.5,
                           alpha=0.25)(logits, y)
    assert torch.allclose(ours.mean(), theirs, atol=1e-5)
    default = seg_loss_per_mask(logits, target, "dice_ce")
    assert torch.allclose(default.mean(), DiceCELoss(sigmoid=True)(logits, y), atol=1e-5)
