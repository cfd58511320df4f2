"""Header sanity checks behind `samtune.data.io`: a file whose geometry or voxel type cannot be
used is refused with a VolumeReadError naming the file, so validation quarantines its case with
that reason (and convert, eval and infer never see it) instead of failing later with a raw error.

- a singular or non-finite affine (e.g. a NIfTI with an all-zero sform, or qform and pixdim all
  zero): the voxels have no size or position in world space;
- a NIfTI whose header gives a zero or negative voxel spacing (pixdim) along an axis longer than
  one voxel: nibabel silently reads 0 as 1 mm and −x as x, a geometry the file never stated;
- vector-valued voxels (NIfTI RGB24, an intent-vector 5D file, an NRRD vector axis, MHA with
  several components) in the image of a CT or MR case, where a scalar volume is expected (a
  plain 4D NIfTI, I×J×K×3, is refused by `load_volume` itself as "4D image … expected 3D").
"""
from __future__ import annotations

import numpy as np

from samtune.data.cases import VolumeReadError
from samtune.data.io_formats import PICTURE_FORMATS, RawImage

__all__ = ["check_geometry", "check_scalar", "nifti_spacing_problem"]

SCALAR_MODALITIES = ("CT", "MR")
_RELATIVE_RANK_TOL = 1e-9  # smallest / largest singular value below this: singular


def nifti_spacing_problem(path: str) -> str | None:
    """What is wrong with the raw (unfixed) pixdim of a NIfTI header, or None.

    Only axes longer than one voxel count (a 2D slice may store pixdim 0 for its third axis)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as f:
        first = f.read(4)
        f.seek(0)
        sizes = (int.from_bytes(first, "little"), int.from_bytes(first, "big"))
        cls = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
        header = cls.from_fileobj(f, check=False)  # check=True would "fix" pixdim silently
    dim, pixdim = header["dim"], header["pixdim"]
    n = int(min(3, max(0, dim[0])))
    bad = [(ax, float(pixdim[ax + 1])) for ax in range(n)
           if dim[ax + 1] > 1 and not (np.isfinite(pixdim[ax + 1]) and pixdim[ax + 1] > 0)]
    if not bad:
        return None
    listed = ", ".join(f"pixdim[{ax + 1}] = {v:g}" for ax, v in bad)
    return (f"zero or negative voxel spacing in the NIfTI header ({listed}; spacing must be "
            f"> 0 mm along every axis; nibabel would silently read 0 as 1 mm and −x as x)")


def check_geometry(raw: RawImage) -> None:
    """Raise VolumeReadError naming `raw.path` for a non-finite or singular 4×4 affine, or a
    NIfTI header whose pixdim gives a zero or negative spacing."""
    m = np.asarray(raw.affine, float)[:3, :3]
    if not np.all(np.isfinite(raw.affine)):
        raise VolumeReadError(raw.path, "non-finite affine (NaN or Inf in the voxel → world "
                                        "matrix): the voxels have no position in world space")
    s = np.linalg.svd(m, compute_uv=False)
    if s[0] == 0 or s[-1] <= _RELATIVE_RANK_TOL * s[0]:
        rows = np.round(m, 6).tolist()
        raise VolumeReadError(raw.path, (
            f"singular affine: the voxel → world matrix {rows} has determinant 0, so the "
            "voxels have no size or direction (NIfTI: sform and qform all zero?); fix the header"))
    if raw.format == "nifti":
        problem = nifti_spacing_problem(raw.path)
        if problem:
            raise VolumeReadError(raw.path, problem)


def check_scalar(raw: RawImage, modality: str) -> None:
    """Raise VolumeReadError naming `raw.path` when a volume file (pictures are colour by
    nature and exempt) holds vector-valued voxels (components: RGB, vectors) but `modality`
    (CT, MR) expects a scalar volume."""
    if raw.components and modality in SCALAR_MODALITIES and raw.format not in PICTURE_FORMATS:
        n = raw.array.shape[-1]
        kind = "RGB" if n in (3, 4) else "vector"
        raise VolumeReadError(raw.path, (
            f"{kind}-valued voxels ({n} components, array {'×'.join(map(str, raw.array.shape))}"
            f", dtype {raw.array.dtype}) where a scalar {modality} volume is expected; store one "
            "component per file, or set data.modality RGB for colour images"))
