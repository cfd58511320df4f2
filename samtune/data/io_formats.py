"""Per-format readers and writers behind `samtune.data.io` (use that module's functions).

Arrays are indexed (i, j, k); affines map voxel index → world mm in RAS+. NRRD/MHA (LPS) are
converted on read and back on write; pictures follow SimpleITK (i = column, j = row, LPS identity).
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtune.data.cases import VolumeReadError

logger = logging.getLogger(__name__)

EXTENSIONS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".npz": "npz",
              ".mha": "mha", ".mhd": "mha", ".png": "png", ".jpg": "png", ".jpeg": "png"}
VOLUME_EXTENSIONS = tuple(e for e, f in EXTENSIONS.items() if f != "png")
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg")
PICTURE_FORMATS = ("png",)
WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha")

_LPS = np.array([-1.0, -1.0, 1.0])  # RAS ↔ LPS: negate x and y
_SPACE_FLIPS = {"ras": (1, 1, 1), "right-anterior-superior": (1, 1, 1),
                "lps": (-1, -1, 1), "left-posterior-superior": (-1, -1, 1),
                "las": (-1, 1, 1), "left-anterior-superior": (-1, 1, 1)}


@dataclass
class RawImage:
    """What a reader returns: array (i, j[, k][, c]) and its RAS+ affine."""

    path: str
    array: np.ndarray
    affine: np.ndarray
    format: str
    components: bool = False  # last axis holds components (RGB, vector), not a 4th dimension


def extension(path: str | Path) -> str:
    """The file's extension as a key of EXTENSIONS ('.nii.gz' counts as one), lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _affine(m: np.ndarray, origin: np.ndarray, flip: np.ndarray) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = flip[:, None] * m
    a[:3, 3] = flip * origin
    return a + 0.0  # no negative zeros


def _read_nifti(path: str) -> RawImage:
    import nibabel as nib

    img = nib.load(path)
    arr = np.asanyarray(img.dataobj)  # stored dtype unless scl_slope/inter actually scale
    comps = False
    if arr.dtype.names:  # RGB24 / RGBA32 structured dtype
        arr = np.stack([arr[n] for n in arr.dtype.names[:3]], axis=-1)
        comps = True
    elif arr.ndim == 5 and arr.shape[3] == 1:  # intent vector: I×J×K×1×C
        arr, comps = arr[:, :, :, 0, :], True
    return RawImage(path, arr, np.asarray(img.affine, float), "nifti", comps)


def _read_nrrd(path: str) -> RawImage:
    import nrrd

    arr, hdr = nrrd.read(path, index_order="F")
    dim = int(hdr["dimension"])
    kinds = [str(k).lower() for k in hdr.get("kinds", ["domain"] * dim)]
    dirs = hdr.get("space directions")
    if dirs is not None:
        dirs = np.asarray(dirs, float)
        spatial = [a for a in range(dim) if np.all(np.isfinite(dirs[a]))]
    else:
        spatial = [a for a in range(dim) if kinds[a] in ("domain", "space")]
    others = [a for a in range(dim) if a not in spatial]
    if len(others) > 1 or len(spatial) not in (2, 3):
        raise VolumeReadError(path, f"unsupported NRRD axes (kinds {kinds})")
    comps = bool(others) and kinds[others[0]] not in ("domain", "space", "time")
    arr = np.moveaxis(arr, others[0], -1) if others else arr
    m = np.eye(3)
    if dirs is not None:
        d = dirs[spatial]  # one row per spatial axis, in space coordinates
        m[:, :] = 0
        m[: d.shape[1], : len(spatial)] = d.T
        if len(spatial) == 2:
            n = np.cross(m[:, 0], m[:, 1])
            m[:, 2] = n / np.linalg.norm(n) if np.linalg.norm(n) > 0 else (0, 0, 1)
    elif "spacings" in hdr:
        sp = np.asarray(hdr["spacings"], float)[spatial]
        m = np.diag(np.concatenate([np.where(np.isfinite(sp), sp, 1.0), [1.0] * (3 - len(sp))]))
    origin = np.zeros(3)
    if "space origin" in hdr:
        o = np.nan_to_num(np.asarray(hdr["space origin"], float))
        origin[: len(o)] = o[:3]
    space = str(hdr.get("space", "left-posterior-superior")).lower().removesuffix("-time")
    flip = _SPACE_FLIPS.get(space)
    if flip is None:  # scanner-xyz, 3D-right-handed, …: ITK reads these as LPS
        logger.warning("%s: NRRD space '%s' is not anatomical; reading it as LPS", path, space)
        flip = _SPACE_FLIPS["lps"]
    return RawImage(path, arr, _affine(m, origin, np.asarray(flip, float)), "nrrd", comps)


def _read_mha(path: str) -> RawImage:
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    d = img.GetDimension()
    comps = img.GetNumberOfComponentsPerPixel() > 1
    arr = sitk.GetArrayFromImage(img)  # k, j, i[, c]
    arr = arr.transpose(tuple(reversed(range(d))) + ((d,) if comps else ()))
    direction = np.asarray(img.GetDirection(), float).reshape(d, d)
    spacing = np.asarray(img.GetSpacing(), float)
    n = min(d, 3)
    m, origin = np.eye(3), np.zeros(3)
    m[:n, :n] = direction[:n, :n] * spacing[:n]
    origin[:n] = np.asarray(img.GetOrigin(), float)[:n]
    return RawImage(path, arr, _affine(m, origin, _LPS), "mha", comps)


def _read_picture(path: str, as_label: bool) -> RawImage:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if as_label:
            arr = np.asarray(img.convert("L") if mode == "1" else img)
            if arr.ndim == 3:
                if mode == "LA" or np.all(arr[..., :3] == arr[..., :1]):
                    arr = arr[..., 0]
                else:
                    raise VolumeReadError(path, "colour mask; expected class ids as grey values")
        elif mode in ("L", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(img)
        elif mode in ("1", "LA"):
            arr = np.asarray(img.convert("L"))
        else:  # RGB, RGBA (alpha dropped), P (palette → colours), CMYK, YCbCr, …
            arr = np.asarray(img.convert("RGB"))
    arr = np.swapaxes(arr, 0, 1)[:, :, None]  # rows × cols → i = column, j = row, k = 0
    comps = arr.ndim == 4
    return RawImage(path, np.ascontiguousarray(arr), np.diag([-1.0, -1.0, 1.0, 1.0]), "png",
                    comps)


def read_raw(path: str | Path, *, as_label: bool = False) -> RawImage:
    """Read any supported file; every failure becomes a VolumeReadError naming the file.

    `as_label`: pictures keep palette indices/grey values as class ids; a MedSAM .npz gives `gts`.
    """
    path = str(path)
    ext = extension(path)
    fmt = EXTENSIONS.get(ext)
    if fmt is None:
        raise VolumeReadError(path, f"unknown file format '{ext or Path(path).name}' "
                                    f"(supported: {', '.join(EXTENSIONS)})")
    if not os.path.isfile(path):
        raise VolumeReadError(path, "is a folder, expected a file" if os.path.isdir(path)
                              else "file not found")
    try:
        if fmt == "nifti":
            raw = _read_nifti(path)
        elif fmt == "nrrd":
            raw = _read_nrrd(path)
        elif fmt == "mha":
            raw = _read_mha(path)
        elif fmt == "npz":  # MedSAM/MedSAM2 imgs/gts; io_npz imports this module, hence late
            from samtune.data.io_npz import read_npz
            raw = read_npz(path, as_label)
        else:
            raw = _read_picture(path, as_label)
    except (VolumeReadError, MemoryError):
        raise
    except Exception as exc:  # library errors: nibabel, pynrrd, zlib/gzip, SimpleITK, Pillow
        problem = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise VolumeReadError(path, f"cannot read {fmt} file ({type(exc).__name__}: "
                                    f"{problem})") from None
    if not raw.array.dtype.isnative:  # torch refuses big-endian arrays (old Analyze files)
        raw.array = raw.array.astype(raw.array.dtype.newbyteorder("="))
    return raw


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write an I×J×K array with its RAS+ affine as .nii/.nii.gz, .nrrd (LPS, gzip) or .mha.

    Atomic: written to a hidden temp file in the same folder, then renamed over `path` (parent
    folders are created). dtype is preserved except bool, stored as uint8; a dtype the format
    cannot hold (float16 in NRRD, …) raises ValueError and leaves `path` untouched.
    """
    path = Path(path)
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"{path}: cannot write '{ext}'; use one of {', '.join(WRITE_EXTENSIONS)}")
    array = np.asarray(array)
    affine = np.asarray(affine, float)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected an I×J×K array, got shape {array.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{path}: affine must be a finite 4×4 matrix")
    array = array.astype(np.uint8) if array.dtype == bool else array
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(ext)]
    tmp = path.parent / f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}"
    m, origin = affine[:3, :3], affine[:3, 3]
    try:
        if ext in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.Nifti1Image(array, affine, dtype=array.dtype)
            img.set_sform(affine, code=1)
            img.set_qform(affine, code=1)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(tmp))
        elif ext == ".nrrd":
            import nrrd

            header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3,
                      "space directions": (_LPS[:, None] * m).T,
                      "space origin": _LPS * origin, "encoding": "gzip"}
            nrrd.write(str(tmp), np.asarray(array), header, index_order="F")
        else:
            import SimpleITK as sitk

            spacing = np.linalg.norm(m, axis=0)
            img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
            img.SetSpacing(spacing.tolist())
            img.SetDirection(((_LPS[:, None] * m) / spacing).ravel().tolist())
            img.SetOrigin((_LPS * origin).tolist())
            sitk.WriteImage(img, str(tmp), True)
        os.replace(tmp, path)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # e.g. float16 in NRRD
        raise ValueError(f"{path}: cannot write {array.dtype} data as {ext} "
                         f"({type(exc).__name__}: {exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
