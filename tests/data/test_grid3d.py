"""Grid3D against SAM-Med3D's own torchio pipeline (utils/infer_utils.py): Resample + ToCanonical,
CropOrPad(mask_name) windows, and data_postprocess back to the source grid."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchio as tio

from samtune.data.cases import Case, DataError, Volume
from samtune.data.grid3d import CropWindow, Grid3D, crop, mask_window, paste, point_window
from samtune.data.io import load_volume, write_volume
from samtune.data.phantoms import make_phantom
from samtune.inference.clicks import mask_dice


def _oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """An oblique, non-RAS (LPI-ish, rotated ~20–35°) voxel → world affine."""
    a, b, c = np.radians([20, -10, 35])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx @ np.diag([-1, 1, -1]) * np.asarray(spacing)
    m[:3, 3] = [10.0, -20.0, 5.0]
    return m


def _volume(spacing=(0.8, 1.1, 2.5), shape=(40, 36, 20), seed=1) -> Volume:
    image, label = make_phantom(shape, spacing, seed=seed)
    affine = _oblique_affine(spacing)
    return Volume(Case("c", "c", ()), image[None], affine, label, affine.copy())


def _upstream(subject: tio.Subject, spacing=(1.5, 1.5, 1.5)) -> tio.Subject:
    """data_preprocess steps 1–2."""
    return tio.ToCanonical()(tio.Resample(target=spacing)(subject))


def _upstream_postprocess(roi_pred: np.ndarray, roi_affine: np.ndarray, shape, affine):
    """utils/infer_utils.py data_postprocess, without its final (i,j,k) → (k,j,i) transpose."""
    pred = tio.LabelMap(tensor=torch.from_numpy(roi_pred.astype(np.float32)).unsqueeze(0),
                        affine=roi_affine)
    ref = tio.ScalarImage(tensor=torch.zeros((1, *shape)), affine=affine)
    out = tio.Resample(target=ref, image_interpolation="nearest")(pred)
    return out.data.squeeze(0).cpu().numpy().astype(np.uint8)


def test_crop_matches_crop_or_pad_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(5, 30, 3))
        size = tuple(int(s) for s in rng.integers(3, 26, 3))  # odd and even, crop and pad
        image = rng.standard_normal(shape).astype(np.float32)
        mask = (rng.random(shape) > 0.97).astype(np.uint8)
        if trial % 10 == 0:
            mask[:] = 0  # CropOrPad's fallback: the volume centre
        elif trial % 3 == 0:
            mask[:] = 0
            mask[tuple(int(rng.integers(0, s)) for s in shape)] = 1
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image[None])),
                              label=tio.LabelMap(tensor=torch.from_numpy(mask[None])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = tio.CropOrPad(size, mask_name="label")(subject)
        window = mask_window(mask, size)
        assert np.array_equal(crop(image, window), want["image"].data[0].numpy()), (shape, size)
        assert np.array_equal(crop(mask, window), want["label"].data[0].numpy())
        affine = _oblique_affine((0.7, 1.3, 2.9))
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image[None]),
                                                    affine=affine),
                              label=tio.LabelMap(tensor=torch.from_numpy(mask[None]),
                                                 affine=affine))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = tio.CropOrPad(size, mask_name="label")(subject)
        assert np.array_equal(window.affine(affine), want["image"].affine)  # bit for bit


def test_point_window_puts_the_voxel_at_the_crop_centre() -> None:
    window = point_window((3, 40, 17.4), 128)
    assert window.start == (3 - 64, 40 - 64, 17 - 64) and window.size == (128,) * 3
    mask = np.zeros((20, 50, 30), bool)
    mask[3, 40, 17] = True
    assert mask_window(mask, 128) == window


def test_paste_inverts_crop_inside_the_grid() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(1, 9, (12, 10, 8))
    window = CropWindow((-3, 2, 5), (8, 6, 7))
    back = paste(crop(a, window), window, a.shape)
    g = (slice(0, 5), slice(2, 8), slice(5, 8))
    assert np.array_equal(back[g], a[g]) and back.sum() == a[g].sum()


def test_build_equals_upstream_resample_and_canonical() -> None:
    """Oblique non-RAS affine, anisotropic spacing; the same arrays and affine given to
    upstream's pipeline: identical grid, image and label."""
    vol = _volume()
    grid = Grid3D.build(vol)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(vol.image), affine=vol.affine),
        label=tio.LabelMap(tensor=torch.from_numpy(vol.label[None]), affine=vol.affine))
    want = _upstream(subject)
    assert grid.shape == tuple(want.spatial_shape) == (21, 26, 33)
    assert np.array_equal(grid.affine, want.image.affine)
    assert np.array_equal(grid.image, want.image.data[0].numpy().astype(np.float32))
    assert np.array_equal(grid.label, want.label.data[0].numpy())
    assert np.allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 1.5)
    assert grid.source_shape == vol.shape and np.array_equal(grid.source_affine, vol.affine)


def test_build_matches_upstream_reading_the_nifti(tmp_path) -> None:
    """Upstream reads the file with SimpleITK, samtune with nibabel: the affines agree to ~1e-7
    mm, so only nearest/truncation ties may flip (the centre plane of an even axis is a tie)."""
    vol = _volume(spacing=(0.7, 1.3, 2.9))
    write_volume(tmp_path / "img.nii.gz", vol.image[0], vol.affine)
    write_volume(tmp_path / "lab.nii.gz", vol.label, vol.affine)
    loaded = load_volume(Case("c", "c", (str(tmp_path / "img.nii.gz"),),
                              str(tmp_path / "lab.nii.gz")))
    grid = Grid3D.build(loaded)
    want = _upstream(tio.Subject(image=tio.ScalarImage(tmp_path / "img.nii.gz"),
                                 label=tio.LabelMap(tmp_path / "lab.nii.gz")))
    assert np.abs(grid.affine - want.image.affine).max() < 1e-5
    diff = np.abs(grid.image - want.image.data[0].numpy())
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert (grid.label != want.label.data[0].numpy()).sum() <= 0.01 * want.label.data.sum()


@pytest.mark.parametrize("size", [16, 24, 64])  # 64: the crop passes the grid (padded)
def test_to_source_equals_upstream_data_postprocess(size: int) -> None:
    """Upstream's chain: Resample + ToCanonical + CropOrPad(mask_name), then data_postprocess of
    the cropped label; samtune's crop window and to_source give the same source mask."""
    vol = _volume(spacing=(0.7, 1.3, 2.9))
    grid = Grid3D.build(vol)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(vol.image), affine=vol.affine),
        label=tio.LabelMap(tensor=torch.from_numpy(vol.label[None]), affine=vol.affine))
    roi = tio.CropOrPad((size,) * 3, mask_name="label")(_upstream(subject))["label"]
    want = _upstream_postprocess(roi.data[0].numpy(), roi.affine, vol.shape, vol.affine)
    window = mask_window(grid.label, size)
    got = grid.to_source(crop(grid.label, window), window)
    assert got.shape == vol.shape and want.sum() > 100
    assert np.array_equal(got.astype(np.uint8), want)
    # from the whole grid instead of the crop: only halfway ties may go the other way
    whole = grid.to_source(paste(crop(grid.label, window), window, grid.shape))
    assert 0.9 < mask_dice(whole, got) < 1.0


def test_round_trip_of_the_label_nearest_and_linear() -> None:
    """The lossy round trip (source 0.8 mm → 1.5 mm → 0.8 mm): linear probabilities beat nearest
    (measured 0.803 vs 0.855 on this phantom); an exactly nesting 3 mm grid loses nothing."""
    image, label = make_phantom((64, 64, 48), (0.8, 0.8, 0.8), seed=3)
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    grid = Grid3D.build(Volume(Case("p", "p", ()), image[None], affine, label, affine))
    nearest = mask_dice(grid.to_source(grid.label) > 0, label > 0)
    linear = mask_dice(grid.to_source(grid.label.astype(np.float32), linear=True), label > 0)
    assert 0.75 < nearest < linear < 0.95
    image, label = make_phantom((32, 32, 24), (3.0, 3.0, 3.0), seed=3)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    grid = Grid3D.build(Volume(Case("p", "p", ()), image[None], affine, label, affine))
    assert grid.shape == (64, 64, 48)
    assert np.array_equal(grid.to_source(grid.label), label)


def test_label_on_another_grid_is_an_error_naming_the_file() -> None:
    vol = _volume()
    vol.case.label_path = "/data/lab.nii.gz"
    vol.label_affine = vol.affine.copy()
    vol.label_affine[0, 3] += 2.0
    with pytest.raises(DataError, match="/data/lab.nii.gz.*affine"):
        Grid3D.build(vol)
    vol.label_affine, vol.label = vol.affine, vol.label[:-1]
    with pytest.raises(DataError, match="/data/lab.nii.gz.*shape"):
        Grid3D.build(vol)
