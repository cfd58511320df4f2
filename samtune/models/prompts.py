"""Prompts from instance masks, as SAM/MedSAM training makes them, and multimask selection.

Coordinates are pixels on the model's S×S grid in (x, y) order, as `Prompts` wants; a pixel
index i is the pixel's own coordinate (SAM adds the half-pixel shift itself). Every random draw
comes from the caller's `torch.Generator` (on the CPU), in a fixed order — box jitter for all
instances first, then each instance's points — so the same generator state gives the same
prompts on any device.

Points (per instance, `P = n_pos + negative_points` columns, n_pos = max(positive_points,
center_point)):
- positives are drawn without replacement from the mask's pixels; with `center_point` the first
  is the pixel farthest from the background (maximum of the Euclidean distance transform; ties →
  first in row-major order), which lies inside even a ring or crescent;
- negatives are drawn from pixels outside the mask inside the tight (unjittered) box grown by
  `max(bbox_shift, 1)` pixels per side (hard negatives next to the object); if that region has
  none, from anywhere outside the mask;
- with `grid_snap = N` the candidates are restricted to the centres of an N×N grid over the image
  (segment-anything's `build_point_grid`: (i + ½)·S/N), the pixel floor(c + ½) a centre lands
  on deciding inside/outside; where no grid centre qualifies (a small instance, a narrow
  neighbourhood) the points stay unsnapped, so a label always tells the truth about its point;
- where fewer candidates exist than asked for, the remaining columns are padding (label -1,
  coordinate 0), which the prompt encoders ignore.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from samtune.config import PromptConfig
from samtune.models.base import Prompts


def box_from_mask(masks: torch.Tensor) -> torch.Tensor:
    """K×H×W bool → K×4 float tight boxes (x0, y0, x1, y1), inclusive pixel indices.

    An empty mask has no box: ValueError naming its index.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be K×H×W, got shape {tuple(masks.shape)}")
    masks = masks.bool()
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # K×H, K×W
    empty = (~rows.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"instance masks {empty} are empty; an empty mask has no box")
    h, w = masks.shape[1:]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def boxes_to_mask(boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """K×4 boxes (x0, y0, x1, y1, inclusive) → K×H×W bool with each whole box filled.

    The box-fill baseline's prediction; `boxes_to_mask(box_from_mask(m), S)` contains `m`.
    """
    h, w = (size, size) if isinstance(size, int) else size
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype).view(1, 1, w)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def jitter_boxes(boxes: torch.Tensor, shift: int, size: int, generator: torch.Generator
                 ) -> torch.Tensor:
    """K×4 tight boxes → each side moved outwards by an integer in [0, shift] (MedSAM style),
    clamped to [0, size - 1]. One K×4 draw from `generator`, even when shift is 0."""
    draw = torch.randint(0, shift + 1, (len(boxes), 4), generator=generator).to(boxes)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    return (boxes + sign * draw).clamp(0, size - 1)


def grid_centres(n: int, size: int) -> torch.Tensor:
    """The n centres (i + ½)·size/n of an n-per-side grid, as segment-anything's point grid."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) * size / n


def _candidates(mask: torch.Tensor, window: tuple[int, int, int, int], inside: bool,
                snap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of the S×S mask (inside=True) or of its background (False) within the inclusive
    window (x0, y0, x1, y1) → (coords C×2 float (x, y), pixel indices C×2 (row, col)).

    With `snap`, only the grid centres whose pixel qualifies (empty if none does). Working on the
    window keeps a 1024² slice with small instances cheap."""
    x0, y0, x1, y1 = window
    crop = mask[y0:y1 + 1, x0:x1 + 1]
    region = crop if inside else ~crop
    if snap is None:
        rc = region.nonzero() + torch.tensor([y0, x0])
        return rc.flip(1).float(), rc
    size = mask.shape[0]
    centres = grid_centres(snap, size)
    pix = torch.floor(centres + 0.5).long().clamp(0, size - 1)
    rows = ((pix >= y0) & (pix <= y1)).nonzero().flatten()  # grid indices inside the window
    cols = ((pix >= x0) & (pix <= x1)).nonzero().flatten()
    hit = region[pix[rows].view(-1, 1) - y0, pix[cols].view(1, -1) - x0]
    rc = hit.nonzero()
    r, c = rows[rc[:, 0]], cols[rc[:, 1]]
    coords = torch.stack([centres[c], centres[r]], dim=1).float()
    return coords, torch.stack([pix[r], pix[c]], dim=1)


def _pick(coords: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` rows of coords C×2 drawn without replacement (all, shuffled, if C ≤ count)."""
    if count <= 0 or len(coords) == 0:
        return coords[:0]
    order = torch.randperm(len(coords), generator=generator)[:count]
    return coords[order]


def _centre_index(mask: torch.Tensor, tight: torch.Tensor, rc: torch.Tensor) -> int:
    """Index into rc (C×2 row/col) of the candidate farthest from the mask's background."""
    ys, xs = rc[:, 0], rc[:, 1]
    x0, y0, x1, y1 = tight.long().tolist()
    # The crop plus a 1-pixel background ring gives the same distances as the whole image.
    crop = np.pad(mask[y0:y1 + 1, x0:x1 + 1].numpy(), 1)
    dist = torch.from_numpy(ndimage.distance_transform_edt(crop))
    return int(dist[ys - y0 + 1, xs - x0 + 1].argmax())


def _instance_points(mask: torch.Tensor, tight: torch.Tensor, cfg: PromptConfig, n_pos: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One H×W mask → (points P×2, labels P) with P = n_pos + cfg.negative_points."""
    points = torch.zeros(n_pos + cfg.negative_points, 2)
    labels = torch.full((n_pos + cfg.negative_points,), -1, dtype=torch.long)
    size = mask.shape[0]
    box = tuple(int(v) for v in tight.long().tolist())
    if n_pos:
        coords, rc = _candidates(mask, box, True, cfg.grid_snap)
        if len(coords) == 0:  # no grid centre inside this instance: keep unsnapped points
            coords, rc = _candidates(mask, box, True, None)
        chosen = []
        if cfg.center_point:
            c = _centre_index(mask, tight, rc)
            chosen.append(coords[c:c + 1])
            coords = torch.cat([coords[:c], coords[c + 1:]])
        chosen.append(_pick(coords, n_pos - len(chosen), generator))
        pos = torch.cat(chosen)
        points[:len(pos)], labels[:len(pos)] = pos, 1
    if cfg.negative_points:
        m = max(cfg.bbox_shift, 1)
        near = (max(box[0] - m, 0), max(box[1] - m, 0), min(box[2] + m, size - 1),
                min(box[3] + m, size - 1))
        coords = torch.empty(0, 2)
        for window in (near, (0, 0, size - 1, size - 1)):  # near the object, else anywhere
            for snap in ((cfg.grid_snap, None) if cfg.grid_snap else (None,)):
                if len(coords) == 0:
                    coords, _ = _candidates(mask, window, False, snap)
        neg = _pick(coords, cfg.negative_points, generator)
        points[n_pos:n_pos + len(neg)], labels[n_pos:n_pos + len(neg)] = neg, 0
    return points, labels


def make_prompts(masks: torch.Tensor, cfg: PromptConfig, generator: torch.Generator,
                 prev_logits: torch.Tensor | None = None) -> Prompts:
    """K instance masks K×S×S (bool, model grid) of one slice → Prompts for K instances.

    boxes K×4 when cfg.box; points K×P×2 with point_labels K×P when any point is asked for;
    mask_inputs = prev_logits (K×1×s×s, detached) when cfg.mask_prompt and prev_logits is given.
    K = 0 gives empty K×… tensors. Empty instance masks → ValueError.
    """
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be K×S×S, got shape {tuple(masks.shape)}")
    n_pos = max(cfg.positive_points, int(cfg.center_point))
    n_points = n_pos + cfg.negative_points
    use_mask = cfg.mask_prompt and prev_logits is not None
    if not (cfg.box or n_points or use_mask):
        raise ValueError("the prompt config asks for no prompt: set box, positive_points, "
                         "negative_points or center_point (or mask_prompt with previous logits)")
    device, k, size = masks.device, masks.shape[0], masks.shape[1]
    cpu = masks.detach().bool().cpu()
    tight = box_from_mask(cpu) if k else torch.zeros(0, 4)
    prompts = Prompts()
    if cfg.box:
        prompts.boxes = jitter_boxes(tight, cfg.bbox_shift, size, generator).to(device)
    if n_points:
        pts = [_instance_points(cpu[i], tight[i], cfg, n_pos, generator) for i in range(k)]
        prompts.points = (torch.stack([p for p, _ in pts]) if k else torch.zeros(0, n_points, 2)
                          ).to(device)
        prompts.point_labels = (torch.stack([lab for _, lab in pts]) if k
                                else torch.zeros(0, n_points, dtype=torch.long)).to(device)
    if use_mask:
        assert prev_logits is not None
        if prev_logits.ndim != 4 or prev_logits.shape[:2] != (k, 1):
            raise ValueError(f"prev_logits must be {k}×1×s×s (one low-res logit map per "
                             f"instance), got shape {tuple(prev_logits.shape)}")
        prompts.mask_inputs = prev_logits.detach()
    return prompts


def select_best(logits: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask output N×M×h×w with predicted IoU N×M → the best-IoU mask per instance:
    (N×1×h×w, N×1). Ties go to the first mask."""
    best = iou.argmax(dim=1, keepdim=True)  # N×1
    index = best.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:])
    return logits.gather(1, index), iou.gather(1, best)
