"""MedSAM/MedSAM2 .npz volumes: axes and affine equal SimpleITK's reading of the same arrays
(MedSAM2 stores `GetArrayFromImage` + `GetSpacing/GetDirection/GetOrigin`), clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from samtune.data.cases import Case, VolumeReadError
from samtune.data.io import load_volume, read_image

SPACING = (0.7, 0.9, 5.0)  # x, y, z as MedSAM2 stores GetSpacing()
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # DeepLesion's files hold this one
ORIGIN = (12.5, -30.0, 100.0)


def make_npz(path: Path, shape=(6, 20, 24), seed: int = 0, **extra) -> tuple[np.ndarray, ...]:
    """A Z×H×W image with a distinct value per voxel and a label box; returns (imgs, gts)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, shape, dtype=np.uint8)
    gts = np.zeros(shape, np.uint8)
    gts[2:4, 5:9, 3:12] = 1
    gts[4, 15, 20] = 2
    arrays = {"imgs": imgs, "gts": gts, "spacing": np.array(SPACING),
              "direction": np.array(DIRECTION), "origin": np.array(ORIGIN), **extra}
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return imgs, gts


def test_npz_matches_simpleitk_reading_of_the_same_arrays(tmp_path: Path) -> None:
    imgs, gts = make_npz(tmp_path / "CT_a.npz")
    itk = sitk.GetImageFromArray(imgs)
    itk.SetSpacing(SPACING)
    itk.SetDirection(DIRECTION)
    itk.SetOrigin(ORIGIN)
    sitk.WriteImage(itk, str(tmp_path / "ref.mha"))
    ref, ref_affine, _ = read_image(tmp_path / "ref.mha")

    case = Case("CT_a", "CT_a", (str(tmp_path / "CT_a.npz"),), str(tmp_path / "CT_a.npz"))
    vol = load_volume(case)
    assert vol.image.shape == (1, 24, 20, 6) and vol.label.shape == (24, 20, 6)
    assert np.array_equal(vol.image[0], ref) and np.allclose(vol.affine, ref_affine)
    assert vol.image[0, 7, 3, 5] == imgs[5, 3, 7]  # (i, j, k) = (x, y, z) of imgs[z, y, x]
    assert vol.label[20, 15, 4] == 2 and vol.label.sum() == 2 * 4 * 9 + 2
    assert np.array_equal(vol.label_affine, vol.affine)
    assert np.allclose(vol.spacing, SPACING)
    # voxel (0, 0, 0) sits at the ITK origin (LPS) → RAS (-x, -y, z)
    assert np.allclose(vol.affine[:3, 3], (-12.5, 30.0, 100.0))
    assert vol.source_format == "npz"


def test_npz_without_geometry_reads_1mm_identity(tmp_path: Path) -> None:
    make_npz(tmp_path / "x.npz", spacing=None, direction=None, origin=None)
    _, affine, fmt = read_image(tmp_path / "x.npz")
    assert fmt == "npz" and np.allclose(affine, np.diag([-1.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("extra, problem", [
    ({"spacing": np.array([0.7, 0.0, 5.0])}, "'spacing' must be > 0 mm"),
    ({"spacing": np.array([0.7, 5.0])}, "'spacing' must hold 3 finite numbers"),
    ({"direction": np.zeros(9)}, "'direction' .* is singular"),
    ({"origin": np.array([0.0, np.nan, 1.0])}, "'origin' must hold 3 finite numbers"),
    ({"imgs": np.zeros((20, 24), np.uint8)}, "'imgs' has shape 20×24; expected Z×H×W"),
])
def test_bad_npz_names_file_and_problem(tmp_path: Path, extra: dict, problem: str) -> None:
    make_npz(tmp_path / "bad.npz", **extra)
    with pytest.raises(VolumeReadError, match=problem) as err:
        read_image(tmp_path / "bad.npz")
    assert err.value.path == str(tmp_path / "bad.npz")


def test_npz_missing_label_array_and_corrupt_file(tmp_path: Path) -> None:
    make_npz(tmp_path / "nolabel.npz", gts=None)
    case = Case("n", "n", (str(tmp_path / "nolabel.npz"),), str(tmp_path / "nolabel.npz"))
    with pytest.raises(VolumeReadError, match="no 'gts' array in this npz"):
        load_volume(case)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(VolumeReadError, match="cannot read npz file") as err:
        read_image(tmp_path / "junk.npz")
    assert err.value.path == str(tmp_path / "junk.npz")
