"""Corrective clicks: hand-built cases with a known next click, and an oracle whose Dice curve
must be non-decreasing and reach 1."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from samtune.inference.clicks import Click, click_curve, clicks_to_reach, mask_dice, next_click


def test_missed_square_gets_a_positive_click_at_its_centre() -> None:
    gt = np.zeros((20, 20), bool)
    gt[4:9, 10:15] = True  # 5×5, centre (6, 12)
    click = next_click(np.zeros_like(gt), gt)
    assert click == Click((6, 12), True, 25)


def test_false_positive_larger_than_miss_gets_a_negative_click() -> None:
    gt = np.zeros((30, 30), bool)
    gt[2:5, 2:5] = True                       # 9 voxels, predicted
    pred = gt.copy()
    pred[10:17, 20:27] = True                 # 49-voxel false positive, centre (13, 23)
    gt[25:27, 25:27] = True                   # 4-voxel miss
    assert next_click(pred, gt) == Click((13, 23), False, 49)


def test_largest_error_region_wins_and_the_border_counts_as_edge() -> None:
    gt = np.zeros((10, 40), bool)
    gt[0:3, 0:3] = True        # small miss touching the image corner
    gt[:, 20:30] = True        # 10×10 miss touching top and bottom: centre row 4 (first max)
    click = next_click(np.zeros_like(gt), gt)
    assert click is not None and click.positive and click.area == 100
    assert click.coord[1] in (24, 25) and click.coord[0] in (4, 5)


def test_equal_miss_and_false_positive_prefers_the_miss() -> None:
    gt = np.zeros((12, 12), bool)
    gt[1:4, 1:4] = True
    pred = np.zeros_like(gt)
    pred[7:10, 7:10] = True
    assert next_click(pred, gt) == Click((2, 2), True, 9)


def test_exact_prediction_needs_no_click_and_shapes_are_checked() -> None:
    gt = np.zeros((8, 8, 8), bool)
    gt[2:5, 2:5, 2:5] = True
    assert next_click(gt, gt) is None
    with pytest.raises(ValueError, match="one shape"):
        next_click(gt, gt[0])


def test_3d_click_at_the_centre_of_the_largest_missed_cube() -> None:
    gt = np.zeros((16, 16, 16), bool)
    gt[3:10, 5:12, 1:8] = True                # 7³ cube, centre (6, 8, 4)
    gt[12:15, 12:15, 12:15] = True            # 3³ miss, smaller
    click = next_click(np.zeros_like(gt), gt)
    assert click == Click((6, 8, 4), True, 343)
    pred = gt.copy()
    pred[3:10, 5:12, 1:8] = False
    pred[0:5, 0:5, 10:15] = True              # now a 5³ false positive beats the 7³ miss? no:
    click = next_click(pred, gt)              # 343 > 125, the miss still wins
    assert click == Click((6, 8, 4), True, 343)


def flip_oracle(gt: np.ndarray, first: np.ndarray):
    """A model that flips the error component under each click: it follows clicks exactly."""
    def predict(clicks: list[Click], _prev: np.ndarray | None) -> tuple[np.ndarray, None]:
        pred = first.copy()
        for c in clicks:
            labels, _ = ndimage.label(pred ^ gt, structure=np.ones((3,) * gt.ndim, bool))
            assert labels[c.coord] > 0, "a click must land inside an error region"
            assert bool(gt[c.coord]) == c.positive, "sign must match the error's kind"
            pred = pred ^ (labels == labels[c.coord])
        return pred, None
    return predict


@pytest.mark.parametrize("ndim", [2, 3])
def test_oracle_curve_is_non_decreasing_and_reaches_one(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    shape = (24,) * ndim
    gt = ndimage.binary_opening(rng.random(shape) > 0.6)
    idx = np.argwhere(gt)
    box = np.zeros_like(gt)  # round 0: the filled bounding box (false positives inside)
    box[tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0)))] = True
    predict = flip_oracle(gt, box)
    n_errors = ndimage.label(box ^ gt, structure=np.ones((3,) * ndim, bool))[1]
    curve, clicks = click_curve(predict, gt, n_errors + 2)
    assert len(curve) == n_errors + 3
    assert curve[0] == pytest.approx(mask_dice(box, gt)) and curve[0] < 1
    assert all(b >= a for a, b in zip(curve, curve[1:]))
    assert curve[-1] == 1.0 and len(clicks) == n_errors  # stops once exact
    assert clicks_to_reach(curve, 1.0) == n_errors
    assert clicks_to_reach(curve, 0.0) == 0
    assert clicks_to_reach([0.1, 0.2], 0.9) is None
