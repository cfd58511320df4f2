"""Training augmentation of one 3D crop (SAM-Med3D, `samtune.train.data3d`): the same geometry
for the image and its class masks, intensity jitter for the image alone.

In this order, each draw from the caller's generator (`slice_generator(seed, epoch, index)`):
a random affine through MONAI's `Affine` (rotation about each of the three axes up to
`rotate_deg`, one isotropic scale from `scale`, a shift of up to `shift` × S voxels per axis;
image bilinear, masks nearest, zeros outside — what torchio's `CropOrPad` pads with), flips
(flip_x → axis 0, flip_y → axis 1; off by default, laterality matters), gamma on the crop's
own [min, max] range, Gaussian noise of `noise_std` × that range. Brightness and contrast are
not applied: the model's per-crop z-score (`SamMed3D.normalize`) cancels any affine change of
intensity, so they would only cost time.
"""
from __future__ import annotations

import math

import torch
from monai.transforms import Affine

from samtune.config import AugmentConfig

__all__ = ["augment_crop"]

_DRAWS = 10  # fixed count: one augmentation's draws never shift another's


def _between(lo: float, hi: float, r: float) -> float:
    return lo + (hi - lo) * r


def _affine(image: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig,
            u: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    size = image.shape[1:]
    rotate = [math.radians(_between(-cfg.rotate_deg, cfg.rotate_deg, r)) for r in u[1:4]]
    scale = _between(*cfg.scale, u[4])
    shift = [_between(-cfg.shift, cfg.shift, r) * n for r, n in zip(u[5:8], size)]
    transform = Affine(rotate_params=rotate, scale_params=[scale] * 3, translate_params=shift,
                       padding_mode="zeros", image_only=True)
    out = torch.as_tensor(transform(image, mode="bilinear")).float()
    if len(masks):
        warped = transform(masks.to(torch.float32), mode="nearest")
        masks = torch.as_tensor(warped) > 0.5
    return out, masks


def augment_crop(image: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """1×S×S×S float image + K×S×S×S bool masks → the augmented pair, same shapes (a mask the
    geometry pushed out comes back empty; the caller drops masks below its voxel threshold)."""
    u = torch.rand(_DRAWS, generator=generator, dtype=torch.float64).tolist()
    x, m = image.float(), masks.bool()
    if u[0] < cfg.p_affine:
        x, m = _affine(x, m, cfg, u)
    v = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    if cfg.flip_x and v[0] < 0.5:
        x, m = x.flip(1), m.flip(1)
    if cfg.flip_y and v[1] < 0.5:
        x, m = x.flip(2), m.flip(2)
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo
    if span > 0 and u[8] < cfg.p_intensity:
        gamma = _between(*cfg.gamma, v[2])
        x = lo + span * ((x - lo) / span).clamp(0, 1) ** gamma
    if span > 0 and cfg.noise_std > 0 and u[9] < cfg.p_noise:
        x = x + torch.randn(x.shape, generator=generator) * (cfg.noise_std * span)
    return x.contiguous(), m.contiguous()
