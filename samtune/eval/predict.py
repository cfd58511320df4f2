"""Slice-wise prediction over whole volumes, and reassembly on the original voxel grid.

Grids: the *slice grid* is the converted image (convert.img_size², what the PNGs hold); the
*model grid* is model.img_size². Images go slice grid → model grid (bilinear, as the training
loader does), prompts are scaled the same way, probabilities come back model grid → slice grid
(bilinear) and are thresholded at 0.5 there; `slicing.mask_to_original` then undoes pad, resize
and reorientation exactly (nearest), so a prediction lands on the source I×J×K grid.

Per slice, one encoder pass serves every prompt (all instances of all classes). Instances of one
class are united; where classes overlap the one with the higher probability wins.

The `oracle` model (samtune.models.oracle) answers each prompt with its ground-truth instance
resampled slice grid → model grid → slice grid (nearest), through this same path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from samtune.config import ConvertConfig, PromptConfig
from samtune.data.cases import Volume
from samtune.data.convert import slice_annotations
from samtune.data.render import SliceGrid
from samtune.data.slicing import mask_to_original
from samtune.models.base import Embeddings, PromptableModel, Prompts
from samtune.models.prompts import make_prompts, select_best
from samtune.train.data import normalize

__all__ = ["SlicePredictor", "Instances", "gt_instances", "predict_with_gt_prompts",
           "label_slice", "reassemble"]
log = logging.getLogger(__name__)


@dataclass
class Instances:
    """Ground-truth instances of one canonical slice on the slice grid: masks K×S×S bool,
    labels K (class ids)."""

    masks: np.ndarray
    labels: np.ndarray


def gt_instances(vol: Volume, cfg: ConvertConfig, classes: Sequence[int], grid: SliceGrid
                 ) -> dict[int, Instances]:
    """Canonical slice index → its ground-truth instances, exactly as `convert` annotates them
    (one per 8-connected component per class, components under min_component_area dropped)."""
    if vol.label is None:
        return {}
    anns, _ = slice_annotations(vol, cfg, list(classes), grid.geometry)
    out = {}
    for k, items in anns.items():
        rles = [{"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"]}
                for a in items]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        out[k] = Instances(masks, np.array([a["category_id"] for a in items], dtype=np.int64))
    return out


@dataclass
class SlicePredictor:
    """A model ready to predict slices: normalisation stats (mean, std on 0–255, or None for the
    model's own), device, and the slice-grid size."""

    model: PromptableModel
    slice_size: int
    stats: tuple[Sequence[float], Sequence[float]] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def scale(self) -> float:
        """model grid pixels per slice-grid pixel."""
        return self.model.img_size / self.slice_size

    @property
    def is_oracle(self) -> bool:
        return bool(getattr(self.model, "is_oracle", False))

    def encode(self, u8: np.ndarray) -> Embeddings | None:
        """N×S×S×C uint8 slices (C 1 or 3) → embeddings of the batch (None for the oracle)."""
        if self.is_oracle:
            return None
        x = torch.from_numpy(np.ascontiguousarray(u8)).to(self.device, torch.float32)
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        s = self.model.img_size
        if x.shape[-1] != s:
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False,
                              antialias=s < x.shape[-1]).clamp_(0, 255)
        return self.model.encode(self.normalized(x))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×s×s on 0–255 → normalised with `stats` (or the model's own statistics)."""
        return self.model.normalize(x) if self.stats is None else normalize(x, *self.stats)

    def to_model_grid(self, masks: np.ndarray) -> torch.Tensor:
        """K×S×S bool on the slice grid → K×s×s bool on the model grid (nearest)."""
        t = torch.from_numpy(masks).to(self.device, torch.uint8)[None]
        s = self.model.img_size
        if t.shape[-1] == s:
            return t[0].bool()
        return F.interpolate(t, (s, s), mode="nearest")[0].bool()

    def decode(self, emb: Embeddings | None, b: int, gt: np.ndarray | None,
               prompt_cfg: PromptConfig, generator: torch.Generator, *,
               boxes: np.ndarray | None = None) -> np.ndarray:
        """Prompts of slice b → K×S×S probabilities on the slice grid.

        Prompts come from ground-truth masks `gt` (K×S×S, slice grid) under `prompt_cfg`, or are
        the given `boxes` K×4 (x0, y0, x1, y1, slice-grid pixels)."""
        if self.is_oracle:
            if gt is None:
                raise ValueError("the oracle model needs ground-truth masks for its prompts")
            on_model = self.to_model_grid(gt)[None].float()
            back = F.interpolate(on_model, (self.slice_size,) * 2, mode="nearest")[0]
            return back.cpu().numpy()
        if boxes is not None:
            prompts = Prompts(boxes=torch.as_tensor(boxes, dtype=torch.float32,
                                                    device=self.device) * self.scale)
        elif gt is not None:
            prompts = make_prompts(self.to_model_grid(gt), prompt_cfg, generator)
        else:
            raise ValueError("decode needs ground-truth masks or boxes")
        logits, iou = self.model.decode(emb, b, prompts, multimask=prompt_cfg.multimask)
        if logits.shape[1] > 1:
            logits, _ = select_best(logits, iou)
        up = F.interpolate(logits.float(), (self.slice_size,) * 2, mode="bilinear",
                           align_corners=False)
        return torch.sigmoid(up[:, 0]).cpu().numpy()


def label_slice(probs: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """K×S×S probabilities with class ids K → S×S label map (0 background): per class the max
    over its instances; a pixel takes the most probable class above 0.5."""
    if len(labels) == 0:
        return np.zeros((size, size), np.int32)
    classes = np.unique(labels)
    per_class = np.stack([probs[labels == c].max(axis=0) for c in classes])
    best = per_class.argmax(axis=0)
    return np.where(per_class.max(axis=0) > 0.5, classes[best], 0).astype(np.int32)


def reassemble(grid: SliceGrid, slice_labels: dict[int, np.ndarray]) -> np.ndarray:
    """Canonical slice index → S×S label map on the slice grid, to an I×J×K int32 label volume
    on the source grid (slices not given stay 0)."""
    out = np.zeros(grid.volume.shape, np.int32)
    for k, lab in slice_labels.items():
        arr, index = mask_to_original(lab, grid.transform(k))
        out[index] = arr
    return out


def predict_with_gt_prompts(predictor: SlicePredictor, grid: SliceGrid,
                            instances: dict[int, Instances], prompt_cfg: PromptConfig, *,
                            batch_size: int = 8, seed: int = 0) -> dict[int, np.ndarray]:
    """Every slice holding ground-truth instances, prompted from them (one box / point set per
    instance, all decoded against the slice's one embedding) → canonical slice → S×S label map.
    Prompt jitter (prompt_cfg.bbox_shift) is drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    keys = sorted(instances)
    out: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for start in range(0, len(keys), batch_size):
            batch = keys[start:start + batch_size]
            emb = predictor.encode(grid.images(batch))
            for b, k in enumerate(batch):
                inst = instances[k]
                probs = predictor.decode(emb, b, inst.masks, prompt_cfg, generator)
                out[k] = label_slice(probs, inst.labels, predictor.slice_size)
    return out
