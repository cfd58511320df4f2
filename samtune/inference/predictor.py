"""`SlicePredictor`: a promptable model on the slice grid of a volume, fed as its family's official
inference code does.

Grids: the *slice grid* is the converted image (convert.img_size², what the PNGs hold); the
*model grid* is model.img_size². Images go slice grid → model grid (bilinear, as the training
loader does), prompts are scaled the same way, probabilities come back model grid → slice grid
(bilinear) and are thresholded at 0.5 there; `slicing.mask_to_original` then undoes pad, resize
and reorientation exactly (nearest), so a prediction lands on the source I×J×K grid.

Per slice, one encoder pass serves every prompt (all instances of all classes). Instances of one
class are united; where classes overlap the one with the higher probability wins.

The `oracle` model (samtune.models.oracle) answers each prompt with its ground-truth instance
as seen through its grid (`oracle.answer`: the slice grid itself unless model.img_size is set),
through this same path. Evaluation prompts every component of every slice: no instance cap and
no minimum area (convert.min_component_area filters training data only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samtune.config import PromptConfig
from samtune.data.render import SliceGrid
from samtune.models.base import Embeddings, PromptableModel, Prompts
from samtune.models.normalization import normalize
from samtune.models.oracle import answer as oracle_answer
from samtune.models.pooled_decode import decode_many
from samtune.models.preprocess import (
    Preprocessing,
    coord_scale,
    get_preprocessing,
    postprocess,
    resize_to_model,
)
from samtune.models.prompts import make_prompts, select_best

__all__ = ["SlicePredictor"]
log = logging.getLogger(__name__)


@dataclass
class SlicePredictor:
    """A model ready to predict slices: normalisation stats (mean, std on 0–255, or None for the
    model's own), device, the slice-grid size, and `content`: the h×w of the image inside the
    slice grid (top-left; the rest is convert's padding), None for the whole S×S. Use `on(grid)`
    to get the predictor of one volume.

    The content is fed as the model family's official inference code feeds an image
    (`samtune.models.preprocess`: resize rule, padding, normalisation, prompt coordinates, and
    low-res logits → content → probabilities)."""

    model: PromptableModel
    slice_size: int
    stats: tuple[Sequence[float], Sequence[float]] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    content: tuple[int, int] | None = None

    def on(self, grid: SliceGrid) -> "SlicePredictor":
        """This predictor for the slices of `grid` (its resized content shape)."""
        nh, nw = grid.geometry["resized_shape"]
        return replace(self, content=(int(nh), int(nw)))

    @property
    def content_shape(self) -> tuple[int, int]:
        return self.content or (self.slice_size, self.slice_size)

    @property
    def preprocessing(self) -> Preprocessing:
        return get_preprocessing(getattr(self.model, "preprocess", "sam"))

    @property
    def coord_scale(self) -> tuple[float, float]:
        """(sx, sy): model-grid coordinate per slice-grid (content) coordinate."""
        return coord_scale(self.preprocessing, *self.content_shape, self.model.img_size)

    @property
    def is_oracle(self) -> bool:
        return bool(getattr(self.model, "is_oracle", False))

    def prepare(self, u8: np.ndarray) -> torch.Tensor:
        """N×S×S×C uint8 slices (C 1 or 3) → N×3×s×s model input: the content of each slice
        resized as upstream (`resize_to_model`), then normalised (`normalized`)."""
        nh, nw = self.content_shape
        pre, s = self.preprocessing, self.model.img_size
        x = torch.stack([resize_to_model(pre, _rgb(img[:nh, :nw]), s) for img in u8])
        return self.normalized(x.to(self.device))

    def encode(self, u8: np.ndarray) -> Embeddings | None:
        """N×S×S×C uint8 slices (C 1 or 3) → embeddings of the batch (None for the oracle)."""
        if self.is_oracle:
            return None
        return self.model.encode(self.prepare(u8))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×s×s on 0–255 → normalised with `stats` (or the model's own rule)."""
        return self.model.normalize(x) if self.stats is None else normalize(x, *self.stats)

    def to_model_prompts(self, prompts: Prompts) -> Prompts:
        """Prompts in slice-grid pixels (inside the content) → model-grid coordinates, as the
        family's predictor transforms a user's coordinates."""
        sx, sy = self.coord_scale
        nh, nw = self.content_shape
        out = Prompts(point_labels=prompts.point_labels, mask_inputs=prompts.mask_inputs)
        if prompts.boxes is not None:
            b = prompts.boxes.float().clone()
            b[:, 0::2] = b[:, 0::2].clamp(0, nw - 1) * sx
            b[:, 1::2] = b[:, 1::2].clamp(0, nh - 1) * sy
            out.boxes = b
        if prompts.points is not None:
            out.points = prompts.points.float() * torch.tensor([sx, sy], device=self.device)
        return out

    def decode_slices(self, emb: Embeddings | None, items: Sequence[tuple[int, np.ndarray]],
                      prompt_cfg: PromptConfig, generator: torch.Generator) -> list[np.ndarray]:
        """[(b, ground truth K_i×S×S of slice b), …] of one encoded batch → per item K_i×S×S
        probabilities, as `decode` gives each (prompts drawn in item order), with the
        instances of all items decoded together (`decode_many`: one mask-decoder call where
        the family allows)."""
        if self.is_oracle:
            return [self.decode(emb, b, gt, prompt_cfg, generator) for b, gt in items]
        prompts = [(b, self._gt_prompts(gt, prompt_cfg, generator)) for b, gt in items]
        return [self._probabilities(logits, iou) for logits, iou in
                decode_many(self.model, emb, prompts, prompt_cfg.multimask)]

    def to_slice_grid(self, low_res: torch.Tensor) -> torch.Tensor:
        """N×1×s'×s' low-res logits → N×S×S probabilities on the slice grid (the family's
        post-processing onto the content, zero in the padding)."""
        nh, nw = self.content_shape
        probs = postprocess(self.preprocessing, low_res, nh, nw, self.model.img_size)[:, 0]
        return F.pad(probs, (0, self.slice_size - nw, 0, self.slice_size - nh))

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
            return oracle_answer(gt, self.model.img_size)
        if boxes is not None:
            prompts = self.to_model_prompts(Prompts(boxes=torch.as_tensor(
                boxes, dtype=torch.float32, device=self.device)))
        elif gt is not None:
            prompts = self._gt_prompts(gt, prompt_cfg, generator)
        else:
            raise ValueError("decode needs ground-truth masks or boxes")
        return self._probabilities(*self.model.decode(emb, b, prompts,
                                                      multimask=prompt_cfg.multimask))

    def _gt_prompts(self, gt: np.ndarray, prompt_cfg: PromptConfig,
                    generator: torch.Generator) -> Prompts:
        """K×S×S ground truth (slice grid) → its prompts in model-grid coordinates."""
        prompts = make_prompts(torch.from_numpy(np.ascontiguousarray(gt)), prompt_cfg, generator)
        return self.to_model_prompts(_to_device(prompts, self.device))

    def _probabilities(self, logits: torch.Tensor, iou: torch.Tensor) -> np.ndarray:
        """Decoder output (N×M low-res logits, N×M IoU) → N×S×S probabilities on the slice
        grid, the best of M by predicted IoU."""
        if logits.shape[1] > 1:
            logits, _ = select_best(logits, iou)
        return self.to_slice_grid(logits).cpu().numpy()


def _rgb(img: np.ndarray) -> np.ndarray:
    """h×w×C uint8 (C 1 or 3) → h×w×3 uint8."""
    img = np.ascontiguousarray(img)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _to_device(prompts: Prompts, device: torch.device) -> Prompts:
    move = (lambda t: None if t is None else t.to(device))  # noqa: E731
    return Prompts(move(prompts.boxes), move(prompts.points), move(prompts.point_labels),
                   move(prompts.mask_inputs))
