"""Training augmentation of one slice: the same geometry for the image and its instance masks,
intensity jitter for the image alone (torchvision.transforms.v2.functional).

The slice content (H×W×3 uint8, before the model's own preprocessing) and its masks K×H×W go
through, in this order: a random affine (rotation, isotropic scale, shift; image bilinear,
masks nearest, both filled with 0 outside), optional flips per axis (off by default: laterality
matters in medical images), brightness, contrast, gamma, Gaussian noise. Prompts are derived
from the augmented masks afterwards (the training loop), so they follow the geometry.

Randomness: every draw comes from the caller's `torch.Generator` (one per slice and epoch,
`slice_generator`, seeded from train.seed, epoch and slice index — not from batch order or
workers), so the same seed gives the same batch on every run and a resumed run reproduces it.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from samtune.config import AugmentConfig

__all__ = ["augment_slice", "slice_generator"]


def slice_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of slice `index` in `epoch` (independent of batch order and workers)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)


def augment_slice(image: np.ndarray, masks: torch.Tensor, cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """H×W×3 uint8 + K×H×W bool → (augmented H×W×3 uint8, K'×H×W bool, kept K bool): masks
    that the geometry pushed out of the image are dropped (kept says which)."""
    h, w = image.shape[:2]
    u = torch.rand(12, generator=generator, dtype=torch.float64).tolist()  # fixed draw count

    def between(lo: float, hi: float, r: float) -> float:
        return lo + (hi - lo) * r

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    m = masks.to(torch.uint8)
    if u[0] < cfg.p_affine:
        args = {"angle": between(-cfg.rotate_deg, cfg.rotate_deg, u[1]),
                "translate": [between(-cfg.shift, cfg.shift, u[2]) * w,
                              between(-cfg.shift, cfg.shift, u[3]) * h],
                "scale": between(*cfg.scale, u[4]), "shear": [0.0, 0.0]}
        x = TF.affine(x, **args, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        if len(m):
            m = TF.affine(m, **args, interpolation=InterpolationMode.NEAREST, fill=0)
    if cfg.flip_x and u[5] < 0.5:
        x, m = x.flip(-1), m.flip(-1)
    if cfg.flip_y and u[6] < 0.5:
        x, m = x.flip(-2), m.flip(-2)
    if u[7] < cfg.p_intensity:
        x = TF.adjust_brightness(x, between(1 - cfg.brightness, 1 + cfg.brightness, u[8]))
        x = TF.adjust_contrast(x, between(1 - cfg.contrast, 1 + cfg.contrast, u[9]))
        x = TF.adjust_gamma(x.clamp(0, 1), between(*cfg.gamma, u[10]))
    if cfg.noise_std > 0 and u[11] < cfg.p_noise:
        noise = torch.randn(x.shape, generator=generator)
        x = x + noise * cfg.noise_std
    out = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    kept = (m.flatten(1) > 0).any(1) if len(m) else torch.zeros(0, dtype=torch.bool)
    return np.ascontiguousarray(out), m[kept].bool(), kept
