"""Automatic (prompt-free) segmentation of every slice: segment-anything's automatic mask
generator, on the slice grid, with one image embedding per slice.

Per slice (SAM's `SamAutomaticMaskGenerator`, single crop, no crop layers):
1. a grid of `points_per_side`² single positive points over the slice's image (the padding
   excluded), decoded `points_per_batch` at a time against the slice's ONE embedding with
   multimask output (3 masks per point);
2. keep masks with predicted IoU ≥ `pred_iou_thresh`, then stability score (IoU of the mask
   thresholded at logit ±`stability_score_offset`) ≥ `stability_score_thresh`;
3. drop masks under `min_mask_area` pixels or over `max_mask_fraction` of the image area (the
   whole-slice / background masks a point grid always yields);
4. non-maximum suppression on the masks' boxes (`box_nms_thresh`, scored by predicted IoU).
The slice's label map is the union of the kept masks, written as `automatic_label` (one class:
the generator does not know classes). segment_anything.utils.amg does the bookkeeping
(MaskData, RLEs, stability, boxes); `remove_small_regions` is not used (it needs OpenCV, which
samtune does not depend on): the area filter works per mask instead.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    mask_to_rle_pytorch,
    rle_to_mask,
)
from torchvision.ops import batched_nms

from samtune.data.render import SliceGrid
from samtune.inference.predictor import SlicePredictor
from samtune.models.base import Embeddings, Prompts
from samtune.models.preprocess import postprocess_logits

__all__ = ["point_grid", "slice_masks", "predict_automatic"]
log = logging.getLogger(__name__)


def point_grid(points_per_side: int, resized_shape: tuple[int, int] | list[int]) -> np.ndarray:
    """N×2 (x, y) points, N = points_per_side², evenly over the nh×nw image part of the slice
    grid (slice-grid pixels; the bottom/right padding gets none)."""
    nh, nw = resized_shape
    return build_point_grid(points_per_side) * np.array([nw, nh], dtype=np.float64)


def slice_masks(predictor: SlicePredictor, emb: Embeddings | None, b: int,
                resized_shape: tuple[int, int] | list[int], cfg: Any) -> MaskData:
    """Kept masks of slice b of `emb` (steps 1–4 of the module docstring) as MaskData with
    `rles` (S×S, slice grid), `boxes` K×4 (x0, y0, x1, y1 inclusive), `iou_preds`, `stability`.

    cfg: an InferConfig (points_per_side, points_per_batch, thresholds, areas)."""
    size, (nh, nw) = predictor.slice_size, resized_shape
    predictor = replace(predictor, content=(int(nh), int(nw)))
    points = torch.as_tensor(point_grid(cfg.points_per_side, resized_shape), dtype=torch.float32,
                             device=predictor.device)
    dev = predictor.device
    data = MaskData(rles=[], boxes=torch.zeros(0, 4, device=dev),
                    iou_preds=torch.zeros(0, device=dev), stability=torch.zeros(0, device=dev))
    for start in range(0, len(points), cfg.points_per_batch):
        pts = points[start:start + cfg.points_per_batch]
        prompts = predictor.to_model_prompts(Prompts(
            points=pts[:, None, :],
            point_labels=torch.ones(len(pts), 1, dtype=torch.int64, device=dev)))
        logits, iou = predictor.model.decode(emb, b, prompts, multimask=True)
        logits, iou = logits.flatten(0, 1).float(), iou.flatten(0, 1).float()
        keep = iou >= cfg.pred_iou_thresh
        if not keep.any():
            continue
        # the family's post-processing onto the content; the padding is never part of a mask
        logits = postprocess_logits(predictor.preprocessing, logits[keep][:, None], nh, nw,
                                    predictor.model.img_size)[:, 0]
        logits = F.pad(logits, (0, size - nw, 0, size - nh), value=-1e4)
        stability = calculate_stability_score(logits, 0.0, cfg.stability_score_offset)
        stable = stability >= cfg.stability_score_thresh
        masks = logits[stable] > 0
        area = masks.flatten(1).sum(1)
        fits = (area >= max(cfg.min_mask_area, 1)) & (area <= cfg.max_mask_fraction * nh * nw)
        if fits.any():
            masks = masks[fits]
            data.cat(MaskData(rles=mask_to_rle_pytorch(masks),
                              boxes=batched_mask_to_box(masks).float(),
                              iou_preds=iou[keep][stable][fits],
                              stability=stability[stable][fits]))
    if len(data["rles"]) > 1:
        kept = batched_nms(data["boxes"], data["iou_preds"],
                           torch.zeros(len(data["rles"]), dtype=torch.int64, device=dev),
                           iou_threshold=cfg.box_nms_thresh)
        data.filter(kept)
    return data


def _union(data: MaskData, size: int) -> np.ndarray:
    """S×S bool: the union of the kept masks."""
    out = np.zeros((size, size), bool)
    for rle in data["rles"]:
        out |= rle_to_mask(rle)
    return out


def predict_automatic(predictor: SlicePredictor, grid: SliceGrid, cfg: Any
                      ) -> dict[int, np.ndarray]:
    """Every slice of `grid`, `cfg.batch_size` slices per encoder call (each slice encoded
    once) → canonical slice → S×S int32 label map (`cfg.automatic_label` where any kept mask
    is), for the slices where something was kept."""
    out: dict[int, np.ndarray] = {}
    kept = 0
    with torch.inference_mode():
        for start in range(0, grid.n_slices, cfg.batch_size):
            batch = list(range(start, min(start + cfg.batch_size, grid.n_slices)))
            emb = predictor.encode(grid.images(batch))
            for b, k in enumerate(batch):
                data = slice_masks(predictor, emb, b, grid.geometry["resized_shape"], cfg)
                union = _union(data, predictor.slice_size)
                if union.any():
                    kept += len(data["rles"])
                    out[k] = np.where(union, cfg.automatic_label, 0).astype(np.int32)
    log.info("%s: automatic masks on %d of %d slices (%d masks kept)",
             grid.volume.case.case_id, len(out), grid.n_slices, kept)
    return out
