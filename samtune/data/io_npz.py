"""MedSAM / MedSAM2 `.npz` volumes: `imgs` Z×H×W, `gts` Z×H×W labels, `spacing` (3,), optional
`direction` (9) and `origin` (3). Read through `samtune.data.io_formats.read_raw` (use that).

MedSAM2's preprocessing (`pre_CT_MR.py`, its DeepLesion sample data) stores
`sitk.GetArrayFromImage(img)`, indexed (z, y, x), with `spacing = img.GetSpacing()` in ITK's (x,
y, z) order; DeepLesion's files add `img.GetDirection()` (row-major 3×3) and `img.GetOrigin()`,
both in ITK's LPS world. So the arrays are transposed to (x, y, z) = (i, j, k) and the affine is
SimpleITK's (direction · diag(spacing), origin), converted LPS → RAS+ as for an MHA file. Image
(`imgs`) and label (`gts`) come from the same file through the same transposition, so they
align voxel for voxel. A file without `spacing` is read with 1 mm voxels and a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samtune.data.cases import VolumeReadError

if TYPE_CHECKING:
    from samtune.data.io_formats import RawImage

__all__ = ["IMAGE_KEY", "LABEL_KEY", "npz_keys", "npz_affine", "read_npz"]

logger = logging.getLogger(__name__)

IMAGE_KEY, LABEL_KEY = "imgs", "gts"
_LPS = np.array([-1.0, -1.0, 1.0])  # ITK's LPS world → RAS+: negate x and y


def npz_keys(path: str | Path) -> list[str]:
    """Array names in an .npz (reads only the zip directory); VolumeReadError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return list(data.files)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError (a plain .npy)
        raise VolumeReadError(path, f"cannot read npz file ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]})") from None


def _vector(path: str, data: np.lib.npyio.NpzFile, key: str, size: int,
            default: np.ndarray) -> np.ndarray:
    """`data[key]` as `size` finite floats (a 3×3 direction may come unflattened)."""
    if key not in data.files:
        return default
    v = np.asarray(data[key], dtype=float).ravel()
    if v.size != size or not np.all(np.isfinite(v)):
        raise VolumeReadError(path, f"'{key}' must hold {size} finite numbers, got "
                                    f"{np.asarray(data[key]).tolist()}")
    return v


def npz_affine(path: str, data: np.lib.npyio.NpzFile) -> np.ndarray:
    """4×4 voxel (i, j, k) = (x, y, z) → world mm, RAS+, from spacing/direction/origin (ITK)."""
    if "spacing" not in data.files:
        logger.warning("%s: no 'spacing' array; reading 1 mm voxels", path)
    spacing = _vector(path, data, "spacing", 3, np.ones(3))
    if np.any(spacing <= 0):
        raise VolumeReadError(path, f"'spacing' must be > 0 mm, got {spacing.tolist()}")
    direction = _vector(path, data, "direction", 9, np.eye(3).ravel()).reshape(3, 3)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise VolumeReadError(path, f"'direction' {direction.ravel().tolist()} is singular")
    origin = _vector(path, data, "origin", 3, np.zeros(3))
    affine = np.eye(4)
    affine[:3, :3] = _LPS[:, None] * direction * spacing[None, :]
    affine[:3, 3] = _LPS * origin
    return affine + 0.0  # no negative zeros


def read_npz(path: str, as_label: bool) -> RawImage:
    """`gts` (as_label) or `imgs` of a MedSAM .npz as a RawImage: array I×J×K (= x, y, z, the
    transpose of the stored Z×H×W), affine RAS+ (module docstring). VolumeReadError naming the
    file for a missing array, a non-3D array or bad geometry."""
    from samtune.data.io_formats import RawImage  # noqa: F811 (it imports this module late)

    key = LABEL_KEY if as_label else IMAGE_KEY
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            raise VolumeReadError(path, f"no '{key}' array in this npz (arrays: "
                                        f"{', '.join(data.files) or 'none'})")
        arr = data[key]
        if arr.ndim != 3:
            raise VolumeReadError(path, f"'{key}' has shape {'×'.join(map(str, arr.shape))}; "
                                        "expected Z×H×W (MedSAM's 3D npz)")
        affine = npz_affine(path, data)
    return RawImage(path, np.ascontiguousarray(arr.transpose(2, 1, 0)), affine, "npz")
