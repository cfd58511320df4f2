"""Prompted inference of a 3D model (SAM-Med3D) on one volume: the rows of a prompts file
(boxes on key slices, `samtune.inference.prompts_file`) → one click each → a label volume.

SAM-Med3D is prompted with 3D points (upstream's inference feeds clicks, never boxes), so each
row becomes one positive click at the voxel in the middle of its box on its key slice: (index
along the row's axis, box centre on the other two, rounded down). Every click is answered in its
own CropOrPad crop around it on the model grid (`predict_volume_3d_points`: 1.5 mm RAS grid,
per-crop z-score, logits back to the source grid); rows are united per label, the first row in
file order winning where two labels claim a voxel (the slice models' rule). Automatic mode has no
3D counterpart (SAM-Med3D has no automatic mask generator) and is refused at config validation.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from samtune.data.cases import Volume
from samtune.inference.prompts_file import BoxPrompt
from samtune.inference.volume3d import predict_volume_3d_points
from samtune.models.base import PromptableModel

__all__ = ["box_click", "predict_prompts_3d"]
log = logging.getLogger(__name__)


def box_click(p: BoxPrompt) -> tuple[int, int, int]:
    """The source voxel (i, j, k) a box row clicks: its key slice, the box's centre."""
    a, b = p.in_plane
    ijk = [0, 0, 0]
    ijk[p.axis] = p.index
    ijk[a] = (p.box[0] + p.box[2]) // 2
    ijk[b] = (p.box[1] + p.box[3]) // 2
    return ijk[0], ijk[1], ijk[2]


def predict_prompts_3d(model: PromptableModel, volume: Volume, rows: Sequence[BoxPrompt],
                       device: torch.device | str = "cpu") -> tuple[np.ndarray, int]:
    """One volume's prompt rows → (I×J×K int32 labels on the source grid, crops predicted)."""
    out = np.zeros(volume.shape, np.int32)
    for p in rows:
        click = np.array([box_click(p)], float)
        mask = predict_volume_3d_points(model, volume, click, np.array([1]), device=device)
        out = np.where((out == 0) & mask, p.label, out)
        log.debug("%s row %d: click %s → %d voxels", volume.case.case_id, p.row,
                  click[0].tolist(), int(mask.sum()))
    return out, len(rows)
