"""One interface over SAM, MedSAM, MobileSAM (segment-anything layout) and SAM2/SAM2.1/MedSAM2.

Training and evaluation only talk to `PromptableModel`:

    emb = model.encode(images)                    # images B×3×S×S, already normalised
    logits, iou = model.decode(emb, b, prompts)   # prompts of image b → N×M×s×s logits, N×M IoU
    masks = model.upscale(logits)                 # N×M×S×S logits on the input grid

so one image embedding serves every prompt of its slice, and an image with many instances never
runs the encoder twice. Coordinates are pixels on the model's S×S input grid (x, y order, like
SAM). `M` is 1, or 3 with `multimask=True`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Prompts:
    """Prompts for the N instances of one image.

    boxes: N×4 (x0, y0, x1, y1) or None; points: N×P×2 (x, y) or None with point_labels N×P
    (1 positive, 0 negative, -1 padding); mask_inputs: N×1×s×s low-res logits (SAM: 256×256 for a
    1024 input, i.e. 4× the embedding size) or None.
    """

    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    mask_inputs: torch.Tensor | None = None

    def __len__(self) -> int:
        for t in (self.boxes, self.points, self.mask_inputs):
            if t is not None:
                return int(t.shape[0])
        return 0


@dataclass
class Embeddings:
    """Encoder output for a batch. image: B×C×h×w; high_res: SAM2's finer levels (B×C'×2h×2w,
    B×C''×4h×4w), empty for the SAM family."""

    image: torch.Tensor
    high_res: list[torch.Tensor] = field(default_factory=list)
    raw: bool = False  # backbone output that `PromptableModel.finish` has not projected yet

    def select(self, b: int) -> "Embeddings":
        return Embeddings(self.image[b:b + 1], [h[b:b + 1] for h in self.high_res], self.raw)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Embeddings":
        return Embeddings(self.image.to(device, dtype),
                          [h.to(device, dtype) for h in self.high_res], self.raw)


class PromptableModel(nn.Module):
    """Base class; subclasses wrap one family and expose its three parts as attributes
    `image_encoder`, `prompt_encoder` and `mask_decoder` (for freezing and LoRA targeting)."""

    family: str = ""
    # the upstream input path (samtune.models.preprocess key); set from the zoo entry
    preprocess: str = "sam"
    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module

    def __init__(self, img_size: int, pixel_mean: tuple[float, float, float],
                 pixel_std: tuple[float, float, float]):
        super().__init__()
        self.img_size = img_size
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×S×S in 0–255 → the model input, as the family's official code normalises it:
        MedSAM min-max per image to [0, 1], the others the model's pixel mean/std."""
        if self.preprocess == "medsam":
            from samtune.models.preprocess import PREPROCESSING, normalize_images

            return normalize_images(PREPROCESSING["medsam"], images)
        return (images - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> Embeddings:
        """B×3×S×S normalised → embeddings."""
        raise NotImplementedError

    def encode_backbone(self, images: torch.Tensor) -> Embeddings:
        """The part of `encode` that belongs to the image encoder alone (what a frozen-encoder
        embedding cache stores); `finish` turns it into `encode`'s output. Default: all of it."""
        return self.encode(images)

    def finish(self, emb: Embeddings) -> Embeddings:
        """Apply the trainable projections that follow the backbone (SAM2: conv_s0/conv_s1 and
        no_mem_embed) to raw embeddings; others pass through."""
        return emb

    def decode(self, emb: Embeddings, b: int, prompts: Prompts,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of image `b` → (low-res mask logits N×M×s×s, predicted IoU N×M)."""
        raise NotImplementedError

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """N×M×s×s logits → N×M×S×S on the input grid (bilinear)."""
        return torch.nn.functional.interpolate(low_res, (self.img_size, self.img_size),
                                               mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, prompts: list[Prompts],
                multimask: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode once per image, decode each image's prompts; one (logits, iou) per image."""
        emb = self.encode(images)
        return [self.decode(emb, b, p, multimask) for b, p in enumerate(prompts)]
