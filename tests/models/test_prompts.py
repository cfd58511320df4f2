"""Prompts from instance masks: boxes, points, grid snapping, determinism, multimask selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from samtune.config import PromptConfig
from samtune.models.prompts import (box_from_mask, boxes_to_mask, grid_centres, make_prompts,
                                    select_best)

S = 48


def disk(cx: float, cy: float, r: float, size: int = S) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    return torch.from_numpy((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)


def ring(size: int = S) -> torch.Tensor:
    return disk(24, 24, 14, size) & ~disk(24, 24, 9, size)


def crescent(size: int = S) -> torch.Tensor:
    return disk(24, 24, 14, size) & ~disk(30, 24, 12, size)


@st.composite
def blobs(draw: st.DrawFn) -> torch.Tensor:
    """K×S×S masks, each a union of 1–3 disks centred on pixels (so never empty)."""
    k = draw(st.integers(1, 3))
    masks = []
    for _ in range(k):
        m = torch.zeros(S, S, dtype=torch.bool)
        for _ in range(draw(st.integers(1, 3))):
            m |= disk(draw(st.integers(0, S - 1)), draw(st.integers(0, S - 1)),
                      draw(st.floats(0.5, 12)))
        masks.append(m)
    return torch.stack(masks)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_box_from_mask_is_tight_and_inclusive() -> None:
    m = torch.zeros(2, S, S, dtype=torch.bool)
    m[0, 5:10, 7:20] = True
    m[1, 0, S - 1] = True
    assert box_from_mask(m).tolist() == [[7, 5, 19, 9], [S - 1, 0, S - 1, 0]]
    assert torch.equal(boxes_to_mask(box_from_mask(m), S), m)  # rectangles fill back exactly
    with pytest.raises(ValueError, match=r"\[1\] are empty"):
        box_from_mask(torch.stack([m[0], torch.zeros(S, S, dtype=torch.bool)]))


@settings(max_examples=40, deadline=None)
@given(masks=blobs(), shift=st.integers(0, 10), seed=st.integers(0, 2**31))
def test_boxes_contain_mask_within_shift(masks: torch.Tensor, shift: int, seed: int) -> None:
    cfg = PromptConfig(box=True, bbox_shift=shift)
    boxes = make_prompts(masks, cfg, gen(seed)).boxes
    tight = box_from_mask(masks)
    filled = boxes_to_mask(boxes, S)
    assert (filled | ~masks).all()  # every mask pixel lies in its box
    sign = torch.tensor([-1, -1, 1, 1])
    grow = (boxes - tight) * sign
    assert (grow >= 0).all() and (grow <= shift).all()
    assert (boxes >= 0).all() and (boxes <= S - 1).all()
    assert torch.equal(boxes, boxes.round())


def test_zero_shift_gives_tight_box() -> None:
    masks = torch.stack([disk(10, 30, 4), crescent()])
    boxes = make_prompts(masks, PromptConfig(bbox_shift=0), gen()).boxes
    assert torch.equal(boxes, box_from_mask(masks))
    assert boxes[0].tolist() == [6, 26, 14, 34]


@settings(max_examples=40, deadline=None)
@given(masks=blobs(), n_pos=st.integers(0, 4), n_neg=st.integers(0, 4),
       centre=st.booleans(), shift=st.integers(0, 6), seed=st.integers(0, 2**31),
       snap=st.one_of(st.none(), st.integers(2, 20)))
def test_points_inside_and_outside(masks: torch.Tensor, n_pos: int, n_neg: int, centre: bool,
                                   shift: int, seed: int, snap: int | None) -> None:
    cfg = PromptConfig(box=False, bbox_shift=shift, positive_points=n_pos,
                       negative_points=n_neg, center_point=centre, grid_snap=snap)
    if not (n_pos or n_neg or centre):
        with pytest.raises(ValueError, match="no prompt"):
            make_prompts(masks, cfg, gen(seed))
        return
    p = make_prompts(masks, cfg, gen(seed))
    pos = max(n_pos, int(centre))
    assert p.points.shape == (len(masks), pos + n_neg, 2)
    assert p.boxes is None
    tight = box_from_mask(masks)
    margin = max(shift, 1)
    for k, mask in enumerate(masks):
        labels = p.point_labels[k]
        if snap is None:  # fewer pixels than points asked for → padding
            n_ok = min(pos, int(mask.sum()))
            assert (labels[:n_ok] == 1).all() and (labels[n_ok:pos] == -1).all()
        assert pos == 0 or labels[0] == 1  # a mask always yields at least one positive
        xy = (p.points[k] + 0.5).floor().long()  # the pixel a (snapped) point lands on
        inside = mask[xy[:, 1], xy[:, 0]]
        assert inside[labels == 1].all()
        assert not inside[labels == 0].any()
        assert (labels[pos:] != 1).all()
        x0, y0, x1, y1 = tight[k].tolist()
        neg = xy[labels == 0]
        near = ((neg[:, 0] >= x0 - margin) & (neg[:, 0] <= x1 + margin)
                & (neg[:, 1] >= y0 - margin) & (neg[:, 1] <= y1 + margin))
        assert near.all()  # blobs never fill their grown box, so negatives stay near
        positives = xy[labels == 1].tolist()
        assert len(positives) == len({tuple(q) for q in positives})  # without replacement
        if centre and snap is None:
            crop = np.pad(mask.numpy(), 1)
            dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
            assert dist[xy[0, 1], xy[0, 0]] == pytest.approx(dist.max())


@pytest.mark.parametrize("shape", [ring, crescent])
def test_centre_point_lies_inside_non_convex_shapes(shape) -> None:
    mask = shape()
    ys, xs = mask.nonzero(as_tuple=True)
    centroid = (int(xs.float().mean().round()), int(ys.float().mean().round()))
    assert not mask[centroid[1], centroid[0]]  # the centroid would miss the object
    p = make_prompts(mask[None], PromptConfig(box=False, center_point=True), gen())
    x, y = p.points[0, 0].long().tolist()
    assert p.point_labels.tolist() == [[1]]
    assert mask[y, x]
    if shape is ring:  # the ring is 5 px thick: its centre line is ~2 px from both edges
        assert 2 <= ((x - 24) ** 2 + (y - 24) ** 2) ** 0.5 - 9 <= 4


def test_grid_snap_lands_on_grid_centres() -> None:
    masks = torch.stack([disk(20, 20, 10), ring()])
    n = 8  # S=48 → centres at 3, 9, 15, …, 45
    cfg = PromptConfig(box=False, positive_points=3, negative_points=2, center_point=True,
                       grid_snap=n)
    p = make_prompts(masks, cfg, gen())
    centres = set(grid_centres(n, S).tolist())
    assert centres == {3.0 + 6 * i for i in range(n)}
    assert {v for v in p.points.flatten().tolist()} <= centres
    xy = p.points.long()
    for k in range(2):
        labels = p.point_labels[k]
        assert labels.tolist() == [1, 1, 1, 0, 0]
        inside = masks[k][xy[k, :, 1], xy[k, :, 0]]
        assert inside[:3].all() and not inside[3:].any()


def test_grid_snap_falls_back_when_no_centre_hits() -> None:
    mask = disk(5, 5, 1)[None]  # pixels 4–6: the 6-px grid's centres 3 and 9 both miss it
    cfg = PromptConfig(box=False, positive_points=1, grid_snap=8)
    p = make_prompts(mask, cfg, gen())
    x, y = p.points[0, 0].long().tolist()
    assert mask[0, y, x] and p.point_labels.tolist() == [[1]]


def test_padding_when_too_few_candidates() -> None:
    full = torch.ones(1, S, S, dtype=torch.bool)
    p = make_prompts(full, PromptConfig(box=False, positive_points=1, negative_points=2), gen())
    assert p.point_labels.tolist() == [[1, -1, -1]]  # nothing lies outside the mask
    assert p.points[0, 1:].abs().sum() == 0
    tiny = torch.zeros(1, S, S, dtype=torch.bool)
    tiny[0, 10, 10:12] = True  # two pixels, three positives asked for
    p = make_prompts(tiny, PromptConfig(box=False, positive_points=3), gen())
    assert p.point_labels.tolist() == [[1, 1, -1]]
    assert sorted(p.points[0, :2].tolist()) == [[10.0, 10.0], [11.0, 10.0]]


def test_deterministic_given_generator() -> None:
    masks = torch.stack([disk(20, 20, 10), crescent()])
    cfg = PromptConfig(bbox_shift=5, positive_points=3, negative_points=3)
    a, b = make_prompts(masks, cfg, gen(7)), make_prompts(masks, cfg, gen(7))
    for f in ("boxes", "points", "point_labels"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    c = make_prompts(masks, cfg, gen(8))
    assert not (torch.equal(a.boxes, c.boxes) and torch.equal(a.points, c.points))


def test_mask_prompt_and_empty_slice() -> None:
    masks = torch.stack([disk(20, 20, 10), ring()])
    logits = torch.randn(2, 1, 12, 12, requires_grad=True)
    cfg = PromptConfig(mask_prompt=True)
    p = make_prompts(masks, cfg, gen(), prev_logits=logits)
    assert torch.equal(p.mask_inputs, logits) and not p.mask_inputs.requires_grad
    assert make_prompts(masks, cfg, gen()).mask_inputs is None  # first round: no logits yet
    with pytest.raises(ValueError, match="2×1×s×s"):
        make_prompts(masks, cfg, gen(), prev_logits=torch.zeros(2, 3, 12, 12))
    empty = make_prompts(torch.zeros(0, S, S, dtype=torch.bool),
                         PromptConfig(positive_points=2), gen())
    assert empty.boxes.shape == (0, 4) and empty.points.shape == (0, 2, 2) and len(empty) == 0
    with pytest.raises(ValueError, match="empty"):
        make_prompts(torch.zeros(1, S, S, dtype=torch.bool), PromptConfig(), gen())


def test_select_best_picks_argmax() -> None:
    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.8]])
    best, best_iou = select_best(logits, iou)
    assert best.shape == (2, 1, 2, 2) and best_iou.shape == (2, 1)
    assert torch.equal(best[0, 0], logits[0, 1]) and torch.equal(best[1, 0], logits[1, 0])
    assert best_iou.flatten().tolist() == pytest.approx([0.9, 0.8])
