"""3D from one prompt: boxes on one key slice, propagated through the whole volume.

- SAM family (`propagate_boxes`): slice to slice in both directions from the key slice; each
  object's next box is the bounding box of its previous prediction grown by `margin` pixels;
  an object stops when its prediction is empty (or under `min_area` pixels).
- SAM2 family (`propagate_video`): sam2's own video predictor (`SAM2VideoPredictor`) with the
  slices as frames, the boxes added on the key frame, propagated forward then backward; its
  memory attention carries the objects from frame to frame.

Key slice: the caller's, or `key_slice_of` = the middle of the ground truth's extent along the
slice axis; its boxes are the ground-truth instances' tight boxes there (one per instance).
Every mask is on the slice grid (see samtune.inference.predictor) and returned as label maps.
"""
from __future__ import annotations

import logging
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from samtune.config import PromptConfig
from samtune.data.render import SliceGrid
from samtune.inference.gt_prompts import Instances
from samtune.inference.predictor import SlicePredictor
from samtune.inference.reassemble import label_slice

__all__ = ["key_slice_of", "key_boxes", "propagate_boxes", "propagate_video"]
log = logging.getLogger(__name__)


def key_slice_of(instances: dict[int, Instances]) -> int:
    """The middle canonical slice of the ground truth's extent; ValueError when it is empty."""
    if not instances:
        raise ValueError("no ground-truth instance in the volume: no key slice to prompt")
    ks = sorted(instances)
    return ks[len(ks) // 2] if ks[len(ks) // 2] in instances else ks[0]


def key_boxes(inst: Instances) -> np.ndarray:
    """K×4 tight boxes (x0, y0, x1, y1; slice-grid pixels, x1/y1 exclusive) of the instances."""
    boxes = []
    for m in inst.masks:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def _box_of(mask: np.ndarray, margin: int, size: int) -> np.ndarray | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    return np.array([max(cols[0] - margin, 0), max(rows[0] - margin, 0),
                     min(cols[-1] + 1 + margin, size), min(rows[-1] + 1 + margin, size)],
                    np.float32)


def propagate_boxes(predictor: SlicePredictor, grid: SliceGrid, key: int, boxes: np.ndarray,
                    labels: np.ndarray, *, margin: int = 2, min_area: int = 1,
                    key_instances: Instances | None = None) -> dict[int, np.ndarray]:
    """SAM-family propagation → canonical slice → S×S label map (slices reached only).

    boxes K×4 on the key slice (slice-grid pixels), labels K class ids. The oracle model needs
    the ground truth, so it is not propagated (its prediction is the key slice only)."""
    cfg = PromptConfig(box=True, bbox_shift=0)
    predictor = predictor.on(grid)
    size = predictor.slice_size
    out: dict[int, np.ndarray] = {}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        emb = predictor.encode(grid.images([key]))
        probs = predictor.decode(emb, 0, key_instances.masks if key_instances else None, cfg,
                                 generator, boxes=None if predictor.is_oracle else boxes)
        out[key] = label_slice(probs, labels, size)
        start = [(_box_of(p > 0.5, margin, size)) for p in probs]
        for step in (1, -1):
            live = [(i, b) for i, b in enumerate(start) if b is not None]
            k = key + step
            while live and 0 <= k < grid.n_slices and not predictor.is_oracle:
                idx = [i for i, _ in live]
                emb = predictor.encode(grid.images([k]))
                probs = predictor.decode(emb, 0, None, cfg, generator,
                                         boxes=np.stack([b for _, b in live]))
                out[k] = label_slice(probs, labels[idx], size)
                masks = probs > 0.5
                live = [(i, _box_of(m, margin, size)) for i, m in zip(idx, masks)
                        if m.sum() >= min_area]
                k += step
    log.info("propagated %d objects from slice %d over %d slices", len(boxes), key, len(out))
    return out


def propagate_video(predictor: SlicePredictor, grid: SliceGrid, key: int, boxes: np.ndarray,
                    labels: np.ndarray) -> dict[int, np.ndarray]:
    """SAM2-family propagation with sam2's video predictor → canonical slice → S×S label map.

    All slices are frames prepared as the model's input (`SlicePredictor.prepare`: the family's
    resize and normalisation of each slice's content); object i is box i on the key frame (the
    video predictor scales it from the content's h×w); masks come back on the content, padded
    to the slice grid."""
    from sam2 import sam2_video_predictor as svp

    from samtune.models.sam2 import build_video_predictor

    video = build_video_predictor(predictor.model)
    predictor = predictor.on(grid)
    size, (nh, nw) = predictor.slice_size, predictor.content_shape
    images = torch.cat([predictor.prepare(grid.images(range(start, min(start + 16,
                                                                         grid.n_slices))))
                        for start in range(0, grid.n_slices, 16)])

    def frames_loader(**_: object) -> tuple[torch.Tensor, int, int]:
        return images, nh, nw  # the video is the slices' content: boxes and masks in its pixels

    out: dict[int, np.ndarray] = {}
    with torch.inference_mode(), mock.patch.object(svp, "load_video_frames", frames_loader):
        state = video.init_state(video_path=f"<{grid.volume.case.case_id}>")
        for i, box in enumerate(boxes):
            video.add_new_points_or_box(state, frame_idx=key, obj_id=i, box=box)
        for reverse in (False, True):
            for k, obj_ids, logits in video.propagate_in_video(state, start_frame_idx=key,
                                                               reverse=reverse):
                probs = torch.sigmoid(logits[:, 0].float())
                probs = F.pad(probs, (0, size - nw, 0, size - nh)).cpu().numpy()
                out[k] = label_slice(probs, labels[list(obj_ids)], size)
    log.info("sam2 video propagation of %d objects from slice %d over %d slices", len(boxes),
             key, len(out))
    return out
