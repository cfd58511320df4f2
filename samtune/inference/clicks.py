"""Corrective-click simulation, the rule of SAM's interactive training, SAM-Med2D and SAM-Med3D.

After a prediction, the next click goes to the error region that is largest: a false-negative
region gives a positive click, a false-positive region a negative one. Within that connected
region the click sits at its "centre", the voxel farthest from the region's border (the maximum
of the Euclidean distance transform, the image border counted as border), so a click never
lands on an ambiguous edge. Ties are broken by the lowest index, so the rule is deterministic.

Works for 2D (H×W) and 3D (D×H×W) masks alike; coordinates are array indices. Callers that
feed SAM-style models convert them (2D: (row, col) → (x, y) = (col, row)).

`click_curve` runs the rule for N rounds against any predictor and gives Dice after each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from samtune.models.base import Prompts

__all__ = ["Click", "next_click", "click_curve", "clicks_to_reach", "mask_dice",
           "append_clicks"]


@dataclass(frozen=True)
class Click:
    """One simulated click: `coord` array indices (2 or 3 ints), `positive` its sign, `area`
    the voxel count of the error region it corrects."""

    coord: tuple[int, ...]
    positive: bool
    area: int


def _largest_component(error: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask of the largest connected component of `error`, its size); full connectivity.
    Equal sizes: the component whose first voxel (C order) comes first."""
    labels, n = ndimage.label(error, structure=np.ones((3,) * error.ndim, bool))
    if n == 0:
        return np.zeros_like(error), 0
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1  # argmax returns the first maximum: lowest label
    return labels == best, int(sizes[best - 1])


def _centre(region: np.ndarray) -> tuple[int, ...]:
    """The voxel of `region` farthest from its border (the array's edge counts as border)."""
    padded = np.pad(region, 1, constant_values=False)
    dist = ndimage.distance_transform_edt(padded)[(slice(1, -1),) * region.ndim]
    flat = int(np.argmax(dist))  # first maximum in C order
    return tuple(int(i) for i in np.unravel_index(flat, region.shape))


def next_click(pred: np.ndarray, gt: np.ndarray) -> Click | None:
    """The corrective click for prediction `pred` of ground truth `gt` (bool, same shape,
    2D or 3D); None when the prediction is already exact.

    The largest connected error region wins; a false negative and a false positive of equal
    size: the false negative (adding missed structure first, as SAM-Med2D does)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim not in (2, 3):
        raise ValueError(f"next_click needs two 2D or 3D masks of one shape, got {pred.shape} "
                         f"and {gt.shape}")
    fn, fn_size = _largest_component(gt & ~pred)
    fp, fp_size = _largest_component(pred & ~gt)
    if fn_size == 0 and fp_size == 0:
        return None
    if fn_size >= fp_size:
        return Click(_centre(fn), True, fn_size)
    return Click(_centre(fp), False, fp_size)


def mask_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two bool masks; both empty → 1."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


Predict = Callable[[list[Click], "np.ndarray | None"], tuple[np.ndarray, "np.ndarray | None"]]


def click_curve(predict: Predict, gt: np.ndarray, n_clicks: int,
                first: np.ndarray | None = None) -> tuple[list[float], list[Click]]:
    """Dice after 0…n_clicks corrective clicks.

    predict(clicks, prev_logits) → (bool mask, logits to feed back or None) is the model with
    its round-0 prompt (box/points) bound in; `first`, if given, is its round-0 mask (saves one
    call). Round k adds `next_click` of round k-1's mask; an exact mask stops early and the
    curve is padded with its Dice. → (dice per round, n_clicks + 1 values; the clicks made).
    """
    if first is None:
        mask, logits = predict([], None)
    else:
        mask, logits = first, None
    clicks: list[Click] = []
    curve = [mask_dice(mask, gt)]
    for _ in range(n_clicks):
        click = next_click(mask, gt)
        if click is None:
            break
        clicks.append(click)
        mask, logits = predict(list(clicks), logits)
        curve.append(mask_dice(mask, gt))
    curve += [curve[-1]] * (n_clicks + 1 - len(curve))
    return curve, clicks


def clicks_to_reach(curve: list[float], target: float = 0.9) -> int | None:
    """The fewest clicks after which Dice ≥ target (0: the first prompt alone); None: never
    within the curve."""
    for k, d in enumerate(curve):
        if d >= target:
            return k
    return None


def append_clicks(prompts: Prompts, clicks: list[Click | None], *, xy: bool) -> Prompts:
    """Prompts of N instances plus one click each (None: a padding point, label -1, for an
    instance already exact) → new Prompts, points N×(P+1)×D. Click coordinates are array
    indices of the grid the prompts live on; `xy` (2D SAM-style models) turns (row, col)
    into (x, y); 3D models (SAM-Med3D) take the indices in array order, as upstream does.
    Boxes and mask_inputs are carried over unchanged."""
    n, dims = len(clicks), next((len(c.coord) for c in clicks if c is not None), 2)
    device = next((t.device for t in (prompts.boxes, prompts.points, prompts.mask_inputs)
                   if t is not None), torch.device("cpu"))
    new = torch.zeros(n, 1, dims, device=device)
    labels = torch.full((n, 1), -1, dtype=torch.long, device=device)
    for i, c in enumerate(clicks):
        if c is not None:
            coord = c.coord[::-1] if xy else c.coord
            new[i, 0] = torch.tensor(coord, dtype=torch.float32, device=device)
            labels[i, 0] = int(c.positive)
    if prompts.points is None:
        points, point_labels = new, labels
    else:
        points = torch.cat([prompts.points.float(), new], dim=1)
        point_labels = torch.cat([prompts.point_labels.long(), labels], dim=1)
    return Prompts(prompts.boxes, points, point_labels, prompts.mask_inputs)
