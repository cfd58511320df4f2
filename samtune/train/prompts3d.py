"""Training prompts for 3D models (SAM-Med3D): points in crop-voxel index order.

SAM-Med3D's prompt encoder embeds points only (it has no box embedding). Its training draws the
first click uniformly from the error region of an empty prediction, i.e. a random voxel of the
ground truth (uni-medical/SAM-Med3D `train.py`, click type "random"); the corrective rounds
follow (`train.prompts.click_rounds`, `samtune.train.interactive`). So here:

- positive points: max(1, positive_points, center_point) per instance; with `center_point` the
  first is the instance's centre (the click rule's first click, as evaluation makes it), the
  others uniform foreground voxels. `box: true` asks for no box on a 3D model: it is met by
  this first positive click (documented in `PromptConfig`).
- negative points: uniform background voxels of the crop.
- mask_inputs: the previous low-res logits with `mask_prompt`, as in 2D.
"""
from __future__ import annotations

import numpy as np
import torch

from samtune.config import PromptConfig
from samtune.inference.clicks import next_click
from samtune.models.base import Prompts

__all__ = ["make_prompts_3d"]


def _uniform(mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n voxel indices (n×3 float) drawn uniformly (with replacement) from `mask`'s voxels."""
    where = mask.nonzero().float()
    if len(where) == 0:
        where = torch.zeros(1, 3)
    return where[torch.randint(len(where), (n,), generator=generator)]


def make_prompts_3d(masks: torch.Tensor, cfg: PromptConfig, generator: torch.Generator,
                    prev_logits: torch.Tensor | None = None) -> Prompts:
    """K instance masks K×D×H×W (bool, the crop) → Prompts: points K×P×3 (array index order,
    as SAM-Med3D's official code passes them) with point_labels K×P (1 positive, 0 negative),
    mask_inputs = prev_logits (K×1×d×h×w) when cfg.mask_prompt. Empty instances → ValueError."""
    if masks.ndim != 4:
        raise ValueError(f"masks must be K×D×H×W, got shape {tuple(masks.shape)}")
    cpu = masks.detach().bool().cpu()
    if len(cpu) and not cpu.flatten(1).any(dim=1).all():
        raise ValueError("an instance mask is empty: nothing to prompt")
    n_pos = max(1, cfg.positive_points, int(cfg.center_point))
    points, labels = [], []
    for mask in cpu:
        pos = _uniform(mask, n_pos, generator)
        if cfg.center_point:
            click = next_click(np.zeros(mask.shape, bool), mask.numpy())
            pos[0] = torch.tensor(click.coord if click else (0, 0, 0), dtype=torch.float32)
        neg = _uniform(~mask, cfg.negative_points, generator)
        points.append(torch.cat([pos, neg]))
        labels.append(torch.tensor([1] * n_pos + [0] * cfg.negative_points))
    k, p = len(cpu), n_pos + cfg.negative_points
    prompts = Prompts(
        points=(torch.stack(points) if k else torch.zeros(0, p, 3)).to(masks.device),
        point_labels=(torch.stack(labels) if k else torch.zeros(0, p, dtype=torch.long)
                      ).to(masks.device))
    if cfg.mask_prompt and prev_logits is not None:
        prompts.mask_inputs = prev_logits.detach()
    return prompts
