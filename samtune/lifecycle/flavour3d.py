"""The 3D side of the MLflow pyfunc (`samtune.lifecycle.flavour.SamtuneSegmenter`) for SAM-Med3D
models: a volume and point prompts in, one mask per row out.

Input row columns:
    volume        I×J×K intensities (nested list or array), on the model's grid (the
                  resampled grid of the 3D export: `convert.spacing_3d`, RAS), raw values
    points        [[i, j, k], …] voxel indices of that volume
    point_labels  [1 | 0, …] positive / negative, one per point
Output: per row an I×J×K uint8 mask (0/1): the model's crop (model.img_size³, centred on the
first positive point as CropOrPad centres on a one-voxel mask, zero-padded at the borders)
normalised as SAM-Med3D normalises it, decoded with all the points at once, and put back.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["segment_points_3d", "rows_3d", "is_3d_input"]


def is_3d_input(model_input: Any) -> bool:
    cols = model_input.keys() if isinstance(model_input, Mapping) else \
        getattr(model_input, "columns", ())
    return "volume" in cols


def rows_3d(model_input: Any) -> list[tuple[Any, Any, Any]]:
    """(volume, points, point_labels) per row of a dict or DataFrame input."""
    if isinstance(model_input, Mapping):
        return [(model_input["volume"], model_input["points"],
                 model_input.get("point_labels"))]
    labels = (model_input["point_labels"] if "point_labels" in model_input.columns
              else [None] * len(model_input))
    return list(zip(model_input["volume"], model_input["points"], labels))


@torch.inference_mode()
def segment_points_3d(model: Any, volume: Any, points: Any, labels: Any = None) -> np.ndarray:
    """One volume I×J×K and its P points (voxel indices, labels 1/0; None: all positive) →
    the I×J×K uint8 mask (see the module docstring)."""
    from samtune.data.grid3d import crop, paste, point_window
    from samtune.models.base import Prompts

    vol = np.asarray(volume, dtype=np.float32)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    labs = np.ones(len(pts), int) if labels is None else np.asarray(labels, int).reshape(-1)
    if vol.ndim != 3 or len(pts) == 0 or len(labs) != len(pts):
        raise ValueError(f"need an I×J×K volume and P ≥ 1 points with P labels, got volume "
                         f"{vol.shape}, {len(pts)} points, {len(labs)} labels")
    positive = pts[labs == 1]
    window = point_window(tuple(positive[0] if len(positive) else pts[0]), model.img_size)
    device = next(model.parameters()).device
    x = torch.from_numpy(crop(vol, window))[None, None].to(device)
    emb = model.encode(model.normalize(x))
    local = torch.as_tensor(pts - np.asarray(window.start), dtype=torch.float32)
    prompts = Prompts(points=local[None].to(device),
                      point_labels=torch.as_tensor(labs)[None].to(device))
    low, _ = model.decode(emb, 0, prompts)
    mask = (model.upscale(low)[0, 0] > 0).cpu().numpy().astype(np.uint8)
    return paste(mask, window, vol.shape)
