"""Reading and writing volumes: NIfTI (nibabel), NRRD (pynrrd), MHA/MHD (SimpleITK), 2D pictures;
DICOM series are read only (`samtune.data.io_dicom`, slices sorted along their normal).

Every reader returns the array indexed (i, j, k) and a 4×4 affine voxel → world mm in RAS+.
NRRD and MHA store LPS; they are converted on read (negate the first two affine rows) and back on
write. Pictures (PNG/JPEG) follow SimpleITK: i = column, j = row, k = 0, affine diag(-1, -1, 1, 1)
(identity direction in ITK's LPS). Nothing is cached: each call reads the file again.

Format parsing lives in `samtune.data.io_formats`; this module adds the case-level logic.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from samtune.data.cases import Case, Volume, VolumeReadError
from samtune.data.io_checks import check_geometry, check_scalar
from samtune.data.io_coco import rasterize_coco
from samtune.data.io_dicom import read_dicom_series
from samtune.data.io_formats import (
    PICTURE_FORMATS,
    RawImage,
    read_raw,
    write_volume,
)

__all__ = ["read_image", "load_volume", "write_volume", "file_sha256", "integral_labels"]

logger = logging.getLogger(__name__)


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one image file.

    Returns (array, affine, format): array I×J×K for a scalar image (a 2D NIfTI/NRRD/MHA gives
    I×J, a picture I×J×1); a multi-component image (RGB/RGBA picture → RGB, NRRD vector/colour
    axis, MHA with several components, NIfTI RGB24) comes back components-last, I×J×K×C; a plain
    4D volume (time series) comes back I×J×K×T. `load_volume` turns components into channels.
    affine: 4×4 voxel index → world mm, RAS+. format: "nifti" | "nrrd" | "mha" | "png".
    Raises VolumeReadError naming the file for unknown, unreadable or corrupt files, and for
    a singular affine or a zero/negative NIfTI spacing (`samtune.data.io_checks`).
    """
    raw = read_raw(path)
    check_geometry(raw)
    return raw.array, raw.affine, raw.format


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's content, streamed (never loads the whole file)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise VolumeReadError(path, f"cannot read file: {exc.strerror or exc}") from None


def integral_labels(label: np.ndarray) -> np.ndarray:
    """Cast a float label map whose values are all integers (e.g. 0.0/1.0) to the smallest
    integer dtype that holds them (uint8, int16, int32 or int64). Any other array (integer
    already, or float with fractional/NaN values) is returned unchanged for validation to judge.
    """
    if not np.issubdtype(label.dtype, np.floating) or label.size == 0:
        return label
    if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
        return label
    lo, hi = float(label.min()), float(label.max())
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return label.astype(dtype)
    return label


def _spatial(raw: RawImage, role: str, require_3d: bool) -> list[np.ndarray]:
    """One I×J×K array per component of `raw` (checks the rank; see load_volume)."""
    arr = raw.array
    path = raw.path
    if raw.components:  # I×J×K×C (or I×J×C for a 2D multi-component volume)
        comps = [np.ascontiguousarray(arr[..., c]) for c in range(arr.shape[-1])]
    elif arr.ndim == 4 and arr.shape[3] == 1:
        comps = [arr[..., 0]]
    else:
        comps = [arr]
    out = []
    for a in comps:
        shape = "×".join(str(s) for s in a.shape)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise VolumeReadError(path, f"{a.ndim}D {role} of shape {shape}; expected a 3D volume")
        is_2d = min(a.shape) == 1 and raw.format not in PICTURE_FORMATS
        if require_3d and is_2d:
            raise VolumeReadError(path, f"2D {role} of shape {shape} where a 3D volume is expected")
        out.append(a)
    return out


def _channels_in_4th_axis(raw: RawImage) -> RawImage:
    """A 4D file whose last axis holds channels (Decathlon multi-modal) → components."""
    if raw.array.ndim == 4 and not raw.components:
        return RawImage(raw.path, raw.array, raw.affine, raw.format, components=True)
    return raw


def load_volume(case: Case, *, require_3d: bool = True) -> Volume:
    """Read a case's image channels and label into a `Volume`.

    image: C×I×J×K, one channel per `case.image_paths` entry (a multi-component file adds one
    channel per component; an RGB picture gives 3). All channels must share I×J×K.
    label: I×J×K; float labels with integral values (0.0/1.0) are cast to integers, fractional
    float labels are returned unchanged. For a COCO-2D case (`case.meta["coco_image_id"]`, label =
    annotation JSON) the label map holds category ids, later annotations overwriting earlier ones;
    a mask picture (`images/ + masks/`) holds class ids as pixel values.
    A trailing singleton 4th axis is dropped. With `require_3d`, a 2D image from a volume format
    (a single slice, I×J or I×J×1) or a 4D volume raises VolumeReadError (pictures are 2D by
    nature and always accepted). `case.meta["channels_in_4th_axis"]` (set by the nnU-Net layout
    for Decathlon multi-modal 4D files) reads the 4th axis as channels. A case with
    `case.meta["dicom_series_uid"]` (layout `dicom`) is one DICOM series: all its `image_paths`
    are the slices of one channel (`samtune.data.io_dicom`). Files are checked by
    `samtune.data.io_checks`: geometry always; a CT/MR image file must hold scalar voxels.
    """
    if not case.image_paths:
        raise VolumeReadError(case.case_id, "case has no image files")
    channels: list[np.ndarray] = []
    affine = None
    fmt = "nifti"
    series = bool(case.meta.get("dicom_series_uid"))  # all files: the slices of one channel
    for p in [case.image_paths] if series else case.image_paths:
        raw = read_dicom_series(p) if series else read_raw(p)
        check_geometry(raw)
        if case.meta.get("channels_in_4th_axis"):
            raw = _channels_in_4th_axis(raw)
        elif not series:  # a CT/MR file must hold scalar voxels (io_checks)
            check_scalar(raw, case.modality)
        comps = _spatial(raw, "image", require_3d)
        if channels and comps[0].shape != channels[0].shape:
            raise VolumeReadError(
                p, f"channel shape {comps[0].shape} differs from {channels[0].shape} of "
                   f"{case.image_paths[0]}")
        if affine is None:
            affine, fmt = raw.affine, raw.format
        channels.extend(comps)
    image = np.stack(channels) if len(channels) > 1 else channels[0][None]

    label = label_affine = None
    if case.label_path is not None:
        if "coco_image_id" in case.meta:
            size = image.shape[1:3]
            label = rasterize_coco(case.label_path, case.meta["coco_image_id"], size)
            label_affine = affine.copy()
        else:
            raw = read_raw(case.label_path, as_label=True)
            check_geometry(raw)
            comps = _spatial(raw, "label", require_3d)
            if len(comps) != 1:
                raise VolumeReadError(case.label_path,
                                      f"label has {len(comps)} components; expected one")
            label, label_affine = integral_labels(comps[0]), raw.affine
    logger.debug("loaded %s: image %s %s, label %s", case.case_id, image.shape, image.dtype,
                 None if label is None else label.dtype)
    return Volume(case=case, image=image, affine=affine, label=label,
                  label_affine=label_affine, source_format=fmt)
