"""One DICOM series (single-frame slices, SimpleITK/GDCM) → an (i, j, k) array, RAS+ affine.

Geometry comes from the tags, never from file names or InstanceNumber: i runs along the row
direction (ImageOrientationPatient[0:3], spacing PixelSpacing[1]), j along the column direction
(IOP[3:6], PixelSpacing[0]), k along the slice normal n = row × column, the slices sorted by
ImagePositionPatient projected on n. The affine is therefore right-handed in LPS (a NIfTI whose k
axis ran against n comes back with k reversed: same voxels at the same world points). The k step
is the spacing of those positions; SliceThickness is metadata only. GDCM applies each slice's
RescaleSlope/Intercept (0028,1053/1052); fractional or per-slice different rescales read as
float32 so nothing is truncated.

A series that is not one regular 3D grid raises VolumeReadError naming a file and the problem:
multi-frame files, missing geometry tags, a localiser or mixed orientations/sizes, non-uniform
pixel spacing, repeated positions (4D), in-plane drift (gantry tilt), missing slices, uneven steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from samtune.data.cases import VolumeReadError
from samtune.data.io_formats import RawImage

__all__ = ["SliceHeader", "SeriesGeometry", "read_header", "check_series", "read_dicom_series"]

logger = logging.getLogger(__name__)

_LPS = np.array([-1.0, -1.0, 1.0])  # RAS ↔ LPS: negate x and y
_DRIFT_MM = 0.05  # in-plane drift of the slice positions tolerated across a series
_ENHANCED = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1",
             "1.2.840.10008.5.1.4.1.1.130"}  # Enhanced CT, MR, PET Image Storage
_STEP_REL = 0.01  # slice steps may differ from the median step by 1 % (positions are rounded)


@dataclass
class SliceHeader:
    """The tags of one DICOM file that geometry and biomarkers need (None: missing/malformed)."""

    path: Path
    series_uid: str
    patient_id: str
    modality: str
    rows: int
    columns: int
    frames: int
    position: np.ndarray | None  # (0020,0032) mm, LPS
    orientation: np.ndarray | None  # (0020,0037) row cosines then column cosines
    pixel_spacing: np.ndarray | None  # (0028,0030) [between rows, between columns] mm
    slope: float = 1.0
    intercept: float = 0.0
    thickness: float | None = None  # (0018,0050) mm
    series_number: str = ""
    image_type: str = ""
    tags: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class SeriesGeometry:
    """A checked series: slices sorted along the normal, 4×4 voxel → world (RAS+, mm) affine."""

    slices: list[SliceHeader]
    affine: np.ndarray
    slice_spacing: float  # mm between consecutive slice positions


def _numbers(text: str, n: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.split("\\")], float)
    except ValueError:
        return None
    return values if values.size == n and np.all(np.isfinite(values)) else None


def read_header(path: str | Path) -> SliceHeader:
    """Tags of one file (GDCM header only, no pixels); VolumeReadError if it is not DICOM."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[-200:]
        raise VolumeReadError(path, f"cannot read DICOM header ({problem})") from None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip(" \x00") if reader.HasMetaDataKey(key) else ""

    size = reader.GetSize()
    declared = _numbers(tag("0028|0008"), 1)  # NumberOfFrames
    frames = max(1 if declared is None else int(declared[0]), int(size[2]) if len(size) > 2 else 1)
    slope = _numbers(tag("0028|1053"), 1)
    intercept = _numbers(tag("0028|1052"), 1)
    thickness = _numbers(tag("0018|0050"), 1)
    return SliceHeader(
        path=Path(path), series_uid=tag("0020|000e"), patient_id=tag("0010|0020"),
        modality=tag("0008|0060").upper(), rows=int(size[1]), columns=int(size[0]),
        frames=frames, position=_numbers(tag("0020|0032"), 3),
        orientation=_numbers(tag("0020|0037"), 6), pixel_spacing=_numbers(tag("0028|0030"), 2),
        slope=1.0 if slope is None else float(slope[0]),
        intercept=0.0 if intercept is None else float(intercept[0]),
        thickness=None if thickness is None else float(thickness[0]),
        series_number=tag("0020|0011"), image_type=tag("0008|0008").upper(),
        tags={"series_description": tag("0008|103e"), "study_uid": tag("0020|000d"),
              "sop_class_uid": tag("0008|0016")})


def _shape_key(h: SliceHeader) -> tuple:
    return (tuple(np.round(h.orientation, 3)), h.rows, h.columns)


def _check_uniform_slices(slices: list[SliceHeader]) -> None:
    """One orientation, one size, one pixel spacing; else a localiser / mixed-series reason."""
    groups: dict[tuple, list[SliceHeader]] = {}
    for h in slices:
        groups.setdefault(_shape_key(h), []).append(h)
    if len(groups) > 1:
        ordered = sorted(groups.values(), key=len, reverse=True)
        main, odd = ordered[0], [h for g in ordered[1:] for h in g]
        a, b = main[0], odd[0]
        desc = (f"{b.path.name}: {b.columns}×{b.rows} orientation "
                f"{np.round(b.orientation, 3).tolist()} vs {a.columns}×{a.rows} "
                f"{np.round(a.orientation, 3).tolist()}")
        if any("LOCALIZER" in h.image_type for h in odd) or len(odd) <= min(3, len(main) - 1):
            raise VolumeReadError(b.path, f"localiser mixed in: {len(odd)} of {len(slices)} "
                                          f"slice(s) differ from the rest in orientation or size "
                                          f"({desc}); remove them from the series")
        what = "orientations" if len({k[0] for k in groups}) > 1 else "slice sizes"
        raise VolumeReadError(b.path, f"mixed {what}: {len(groups)} groups of slices in one "
                                      f"series ({desc})")
    spacings = np.array([h.pixel_spacing for h in slices])
    if np.ptp(spacings, axis=0).max() > 1e-4 * spacings.max():
        worst = slices[int(np.abs(spacings - spacings[0]).max(axis=1).argmax())]
        raise VolumeReadError(worst.path, f"non-uniform pixel spacing: {worst.pixel_spacing} "
                                          f"vs {slices[0].pixel_spacing} mm in "
                                          f"{slices[0].path.name}")


def _check_steps(slices: list[SliceHeader], s: np.ndarray) -> float:
    """Slice steps along the normal (s sorted, mm): no repeats, gaps or uneven steps; the step."""
    n = len(slices)
    steps = np.diff(s)
    tol = max(1e-3, _STEP_REL * float(np.median(steps)))
    repeated = np.flatnonzero(steps <= tol)
    if repeated.size:
        a, b = slices[repeated[0]], slices[repeated[0] + 1]
        positions = n - repeated.size
        raise VolumeReadError(a.path, f"4D or repeated slices: {n} slices at only {positions} "
                                      f"positions ({a.path.name} and {b.path.name} both at "
                                      f"{s[repeated[0]]:.3f} mm along the normal); several "
                                      "time points or acquisitions share this SeriesInstanceUID")
    d = float(np.median(steps))
    for t, step in enumerate(steps):
        if abs(step - d) <= tol:
            continue
        a, b = slices[t], slices[t + 1]
        multiple = round(step / d)
        if multiple >= 2 and abs(step - multiple * d) <= tol * multiple:
            raise VolumeReadError(b.path, f"missing slices: a gap of {step:.4g} mm between "
                                          f"{a.path.name} and {b.path.name} where slices are "
                                          f"{d:.4g} mm apart (about {multiple - 1} slice(s) "
                                          "missing)")
        raise VolumeReadError(b.path, f"non-uniform slice spacing: steps from {steps.min():.4g} "
                                      f"to {steps.max():.4g} mm (median {d:.4g}; "
                                      f"{step:.4g} mm between {a.path.name} and {b.path.name})")
    return float((s[-1] - s[0]) / (n - 1))


def check_series(headers: Sequence[SliceHeader]) -> SeriesGeometry:
    """Sort one series' slices along the normal and derive its affine (see the module doc).

    Raises VolumeReadError naming a file and the first problem found (checks in the order of the
    module docstring).
    """
    if not headers:
        raise VolumeReadError(None, "empty DICOM series")
    slices = list(headers)
    first = slices[0].path
    multi = [h for h in slices if h.frames > 1]
    if multi:
        raise VolumeReadError(multi[0].path, f"multi-frame or 4D DICOM: {multi[0].frames} frames "
                                             "in one file; only single-frame series (one slice a "
                                             "file) are read")
    if len({h.series_uid for h in slices}) > 1:
        raise VolumeReadError(first, "files of several SeriesInstanceUIDs in one series")
    for name, attr in (("ImagePositionPatient (0020,0032)", "position"),
                       ("ImageOrientationPatient (0020,0037)", "orientation"),
                       ("PixelSpacing (0028,0030)", "pixel_spacing")):
        bad = [h for h in slices if getattr(h, attr) is None]
        if bad:
            enhanced = bad[0].tags.get("sop_class_uid") in _ENHANCED
            raise VolumeReadError(bad[0].path, f"{name} missing or malformed in {len(bad)} of "
                                               f"{len(slices)} slice(s)" + (
                                                   " (an enhanced, multi-frame IOD: per-frame "
                                                   "geometry is not read)" if enhanced else ""))
    if len(slices) < 2:
        raise VolumeReadError(first, "a single slice; expected a 3D series of at least 2")
    _check_uniform_slices(slices)
    row, col = slices[0].orientation[:3], slices[0].orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 \
            or abs(row @ col) > 1e-3:
        raise VolumeReadError(first, "ImageOrientationPatient is not two orthonormal cosines")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([h.position for h in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices, positions = [slices[o] for o in order], positions[order]
    s = positions @ normal
    in_plane = positions - np.outer(s, normal)
    drift = float(np.linalg.norm(in_plane - in_plane[0], axis=1).max())
    if drift > _DRIFT_MM:
        raise VolumeReadError(slices[-1].path, f"slice positions drift {drift:.3g} mm in-plane "
                                               "across the series (gantry tilt or a sheared "
                                               "stack); expected positions along the normal")
    dk = _check_steps(slices, s)
    ps = slices[0].pixel_spacing
    m = np.column_stack([row * ps[1], col * ps[0], normal * dk])
    affine = np.eye(4)
    affine[:3, :3] = _LPS[:, None] * m
    affine[:3, 3] = _LPS * positions[0]
    return SeriesGeometry(slices, affine + 0.0, dk)


def read_dicom_series(paths: Sequence[str | Path]) -> RawImage:
    """Read the files of one series as I×J×K (columns × rows × slices), affine RAS+ (format
    "dicom"). The files may come in any order. Raises VolumeReadError naming a file."""
    import SimpleITK as sitk

    geometry = check_series([read_header(p) for p in paths])
    slices = geometry.slices
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(h.path) for h in slices])
    rescales = {(h.slope, h.intercept) for h in slices}
    if len(rescales) > 1 or any(v % 1 for r in rescales for v in r):
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[-200:]
        raise VolumeReadError(slices[0].path, f"cannot read DICOM pixel data ({problem})") \
            from None
    comps = img.GetNumberOfComponentsPerPixel() > 1
    arr = sitk.GetArrayFromImage(img)  # k, j, i[, c]
    arr = arr.transpose((2, 1, 0, 3) if comps else (2, 1, 0))
    expected = (slices[0].columns, slices[0].rows, len(slices))
    if arr.shape[:3] != expected:
        raise VolumeReadError(slices[0].path, f"pixel data of shape {arr.shape[:3]}; the headers "
                                              f"give {expected}")
    logger.debug("read DICOM series %s: %s slices, %s", slices[0].series_uid, len(slices),
                 arr.dtype)
    return RawImage(str(slices[0].path), np.ascontiguousarray(arr), geometry.affine, "dicom",
                    comps)
