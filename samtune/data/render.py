"""A volume on the output slice grid, in memory: what `convert` writes as PNG, and what 3D
prediction feeds the model, from the same code so the two can never drift apart.

    grid = SliceGrid.build(volume, convert_cfg)
    pixels = grid.images([0, 1, 2])        # 3×S×S×C uint8, exactly the PNGs' content
    record = grid.transform(1)             # the JSON geometry record of canonical slice 1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from samtune.config import ConvertConfig
from samtune.data.cases import DataError, Volume
from samtune.data.intensity import (IntensityParams, apply_intensity, channel_plan,
                                    intensity_params, luma)
from samtune.data.slicing import (CANONICAL_AXIS, resize_geometry, resize_images,
                                  slice_transform, to_canonical, view_stack)

__all__ = ["SliceGrid"]


@dataclass
class SliceGrid:
    """`volume`'s image reoriented to RAS, viewed as N slices along `cfg.axis` (N×H×W×C views,
    no copy), with the intensity mapping and the resize/pad geometry to `cfg.img_size`."""

    volume: Volume
    cfg: ConvertConfig
    views: np.ndarray
    ornt: np.ndarray
    geometry: dict[str, Any]
    params: IntensityParams
    plan: list[int]
    used: list[int]

    @classmethod
    def build(cls, vol: Volume, cfg: ConvertConfig) -> "SliceGrid":
        """Checks the image (C×I×J×K) and the label's shape; DataError names the file."""
        case, image, label = vol.case, vol.image, vol.label
        src = case.image_paths[0] if case.image_paths else case.case_id
        if image.ndim != 4:
            raise DataError(src, f"image of shape {image.shape}; expected C×I×J×K")
        if label is not None and label.shape != image.shape[1:]:
            raise DataError(case.label_path, f"label shape {label.shape} differs from the "
                                             f"image's {image.shape[1:]}")
        try:
            plan = channel_plan(image.shape[0], case.modality, cfg)
        except ValueError as exc:
            raise DataError(src, str(exc)) from None
        used = [0, 1, 2] if plan == [-1] else sorted(set(plan))
        every = used == list(range(image.shape[0]))
        params = intensity_params(image if every else image[used], case.modality, cfg)
        canon, _, ornt = to_canonical(np.moveaxis(image, 0, -1), vol.affine)
        views = view_stack(canon, CANONICAL_AXIS[cfg.axis])
        if not every:
            views = views[..., used]
        return cls(vol, cfg, views, ornt, resize_geometry(*views.shape[1:3], cfg.img_size),
                   params, plan, used)

    @property
    def n_slices(self) -> int:
        return int(self.views.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """H×W of a slice before resizing (pixels of the original grid)."""
        return int(self.views.shape[1]), int(self.views.shape[2])

    def images(self, ks: Sequence[int]) -> np.ndarray:
        """Canonical slices `ks` → len(ks)×S×S×C uint8 (C = cfg.channels' plan), as written."""
        u8 = apply_intensity(self.views[list(ks)], self.params, -1)
        u8 = resize_images(luma(u8) if self.plan == [-1] else u8, self.geometry)
        if self.plan != [-1] and self.plan != self.used:
            u8 = u8[..., [self.used.index(c) for c in self.plan]]
        return u8

    def transform(self, k: int) -> dict[str, Any]:
        """The geometry record of canonical slice k (see `slicing.slice_transform`)."""
        vol = self.volume
        return slice_transform(ornt=self.ornt, axis=self.cfg.axis, k_canonical=k,
                               original_shape=vol.shape, spacing=vol.spacing, affine=vol.affine,
                               slice_shape=self.slice_shape, img_size=self.cfg.img_size,
                               geometry=self.geometry)
