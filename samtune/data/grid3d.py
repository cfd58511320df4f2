"""The 3D model grid of one volume (SAM-Med3D's 1.5 mm isotropic RAS grid) and crop windows on it.

Built exactly as SAM-Med3D's official inference (utils/infer_utils.py, `data_preprocess`) builds
it, with torchio itself: `tio.Resample(spacing)` of a Subject(image ScalarImage, label LabelMap)
(image linear, label nearest; each image keeps its direction and its centre, size =
floor(old size · old spacing / new spacing)), then `tio.ToCanonical()` (an axis permutation/flip
to the nearest RAS+ orientation; an oblique volume stays oblique). The image is resampled in its
stored dtype, as upstream reads it through SimpleITK (int16 CT stays int16, interpolated values
cast back to int16 by ITK), and kept here as float32 (lossless for int16). Upstream reads the
file with SimpleITK, samtune with nibabel: their affines can differ by ~1e-7 mm, enough to flip
the halfway ties described below on a few voxels (tests/data/test_grid3d.py bounds it).

Crops follow `tio.CropOrPad(mask_name=..., target_shape=S)`: the window is centred on the
mask's bounding box (centre = mean(bb_min, bb_max + 1), moved down by half a voxel when the
target size's parity and the centre's (integer or half) disagree), so a one-voxel mask at v with
an even S gives the window [v - S/2, v + S/2). A window that leaves the grid is zero-padded, as
CropOrPad pads (padding_mode 0, image and label alike).

`to_source` maps a prediction back as upstream's `data_postprocess` does: `tio.Resample(target=
reference image of the source affine/shape)`, nearest, from the crop's own affine (so the crop's
padded part can still reach source voxels beyond the model grid's floor-truncated extent), onto
the whole source grid (a 128³ crop onto 512²×300: 0.4 s). The grids are centred on each other,
so whole planes of source voxels can fall exactly halfway between two model voxels; which one
nearest picks then depends on the last bits of the affines, hence crop affines computed as
torchio computes them and no sub-box shortcut: samtune's masks equal upstream's bit for bit.
`linear=True` instead resamples float probabilities linearly and thresholds them at > 0.5 (see
samtune.inference.volume3d for the figures of both).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from samtune.data.cases import DataError, Volume

__all__ = ["Grid3D", "CropWindow", "mask_window", "point_window", "crop", "paste",
           "UPSTREAM_SPACING"]

log = logging.getLogger(__name__)
UPSTREAM_SPACING = (1.5, 1.5, 1.5)
_AFFINE_TOL = 1e-4  # mm: label and image affines closer than this are one geometry


@dataclass(frozen=True)
class CropWindow:
    """A box of the model grid: voxels [start, start + size) per axis; `start` may be negative
    and start + size may pass the grid (those voxels are padding)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def affine(self, grid_affine: np.ndarray) -> np.ndarray:
        """4×4 voxel → world of the crop: the grid's affine moved to voxel `start`, computed as
        tio.CropOrPad does (pad, then crop: two nibabel apply_affine steps), bit for bit, so
        nearest-neighbour ties resolve as upstream's."""
        from nibabel.affines import apply_affine

        start = np.asarray(self.start)
        out = np.array(grid_affine, float)
        for shift in (-np.maximum(-start, 0), np.maximum(start, 0)):
            out[:3, 3] = apply_affine(out, shift)
        return out


def _window(centre: np.ndarray, size: tuple[int, int, int]) -> CropWindow:
    """CropOrPad's arithmetic: `centre` in its convention (first voxel spans [0, 1))."""
    start = []
    for c, n in zip(centre, size):
        if (n % 2 == 0) ^ (c % 1 == 0):
            c -= 0.5
        start.append(int(c - n / 2))  # integral by construction
    return CropWindow(tuple(start), tuple(int(n) for n in size))


def _size3(size: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)


def mask_window(mask: np.ndarray, size: int | tuple[int, int, int]) -> CropWindow:
    """The window `tio.CropOrPad(size, mask_name=...)` cuts around the non-zero voxels of `mask`
    (I×J×K). An empty mask: the grid-centred window, as CropOrPad falls back to (with a warning
    here, as there)."""
    size = _size3(size)
    nz = np.nonzero(mask)
    if nz[0].size == 0:
        log.warning("empty mask: crop window centred on the grid")
        start = [int(np.ceil((s - n) / 2)) if s >= n else -int(np.ceil((n - s) / 2))
                 for s, n in zip(mask.shape, size)]
        return CropWindow(tuple(start), size)
    lo = np.array([a.min() for a in nz])
    hi = np.array([a.max() for a in nz]) + 1
    return _window((lo + hi) / 2, size)


def point_window(ijk: tuple[float, float, float], size: int | tuple[int, int, int]) -> CropWindow:
    """The window CropOrPad would cut around a one-voxel mask at `ijk` (rounded to the nearest
    voxel): with an even size the voxel lands at crop index size/2 (64 for 128³)."""
    v = np.rint(np.asarray(ijk, float)).astype(int)
    return _window(v + 0.5, _size3(size))


def _overlap(window: CropWindow, shape: tuple[int, ...]) -> tuple[tuple[slice, ...],
                                                                   tuple[slice, ...]]:
    """(grid slices, crop slices) of the part of `window` inside a grid of `shape`."""
    grid, local = [], []
    for s, n, dim in zip(window.start, window.size, shape):
        a, b = max(s, 0), min(s + n, dim)
        b = max(a, b)
        grid.append(slice(a, b))
        local.append(slice(a - s, b - s))
    return tuple(grid), tuple(local)


def crop(array: np.ndarray, window: CropWindow, fill: float = 0) -> np.ndarray:
    """The `window` of `array` (I×J×K) → window.size, voxels outside the grid set to `fill`."""
    out = np.full(window.size, fill, dtype=array.dtype)
    g, c = _overlap(window, array.shape)
    out[c] = array[g]
    return out


def paste(values: np.ndarray, window: CropWindow, shape: tuple[int, int, int],
          fill: float = 0) -> np.ndarray:
    """A crop (window.size) put back into a grid of `shape` filled with `fill`; its padded
    part is dropped."""
    out = np.full(shape, fill, dtype=values.dtype)
    g, c = _overlap(window, shape)
    out[g] = values[c]
    return out


def _tensor(array: np.ndarray):
    """A C×I×J×K torch tensor torchio accepts (uint16/uint32/bool → int32/int64, as torchio's
    readers do)."""
    import torch

    a = np.asarray(array)
    if a.dtype == bool or a.dtype == np.uint16:
        a = a.astype(np.int32)
    elif a.dtype in (np.uint32, np.uint64):
        a = a.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(a)[None])


def _label_geometry(volume: Volume) -> np.ndarray:
    """The label as it shares the image grid; a label on another grid is a DataError."""
    path = volume.case.label_path or volume.case.case_id
    label = np.asarray(volume.label)
    if label.shape != volume.shape:
        raise DataError(path, f"label shape {label.shape} differs from the image's "
                              f"{volume.shape}")
    la = volume.label_affine
    if la is not None and not np.allclose(la, volume.affine, rtol=0, atol=_AFFINE_TOL):
        raise DataError(path, "label affine differs from the image's; resample it onto the "
                              "image grid first")
    if not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
        raise DataError(path, f"label dtype {label.dtype} is not integral")
    return label


@dataclass
class Grid3D:
    """One volume on the model grid. image: I×J×K float32 raw intensities (resampled linear);
    label: I×J×K integer map (nearest) or None; affine: 4×4 voxel → RAS mm of that grid;
    source_affine / source_shape: the volume's own grid, where predictions go back."""

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    @classmethod
    def build(cls, volume: Volume, spacing: tuple[float, float, float] = UPSTREAM_SPACING,
              channel: int = 0) -> "Grid3D":
        """Resample `volume` (image channel `channel`, and its label if any) to `spacing` mm
        and canonical orientation, as upstream does (tio.Resample then tio.ToCanonical)."""
        import torchio as tio

        spacing = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(map(float, spacing))
        path = volume.case.image_paths[0] if volume.case.image_paths else volume.case.case_id
        if volume.image.ndim != 4 or not 0 <= channel < volume.image.shape[0]:
            raise DataError(path, f"image of shape {volume.image.shape} has no channel {channel}")
        if min(volume.shape) < 2:
            raise DataError(path, f"a 3D grid needs a 3D volume, got shape {volume.shape}")
        affine = np.asarray(volume.affine, float)
        images = {"image": tio.ScalarImage(tensor=_tensor(volume.image[channel]), affine=affine)}
        if volume.label is not None:
            images["label"] = tio.LabelMap(tensor=_tensor(_label_geometry(volume)),
                                           affine=affine)
        subject = tio.ToCanonical()(tio.Resample(spacing)(tio.Subject(**images)))
        label = None
        if "label" in subject:
            label = subject["label"].data[0].numpy()
        image = subject["image"]
        return cls(image.data[0].numpy().astype(np.float32), label, np.asarray(image.affine),
                   affine, volume.shape, spacing)

    def to_source(self, values: np.ndarray, window: CropWindow | None = None, *,
                  linear: bool = False) -> np.ndarray:
        """A prediction on this grid (`window` None: the whole grid, I×J×K; else a crop,
        window.size) → the source I×J×K grid. Nearest (upstream's data_postprocess): the
        values as they are (dtype kept; 0 where the prediction does not reach). `linear`:
        float probabilities resampled linearly, → bool mask of those > 0.5."""
        import torchio as tio

        if window is None:
            window = CropWindow((0, 0, 0), self.shape)
        values = np.asarray(values)
        if values.shape != window.size:
            raise ValueError(f"prediction of shape {values.shape}, window {window.size}")
        crop_affine = window.affine(self.affine)
        target = (self.source_shape, np.asarray(self.source_affine, float))
        if linear:
            floating = tio.ScalarImage(tensor=_tensor(values.astype(np.float32)),
                                       affine=crop_affine)
            resampled = tio.Resample(target, image_interpolation="linear")(floating)
            return resampled.data[0].numpy() > 0.5
        floating = tio.LabelMap(tensor=_tensor(values), affine=crop_affine)
        resampled = tio.Resample(target, label_interpolation="nearest")(floating)
        return resampled.data[0].numpy().astype(values.dtype, copy=False)

    def to_model(self, ijk_source: np.ndarray) -> np.ndarray:
        """N×3 source voxel indices → N×3 continuous voxel indices of this grid."""
        p = np.c_[np.asarray(ijk_source, float).reshape(-1, 3), np.ones(len(ijk_source))]
        return (np.linalg.inv(self.affine) @ np.asarray(self.source_affine, float) @ p.T)[:3].T
