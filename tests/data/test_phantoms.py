"""Synthetic phantoms: determinism, HU ranges, physical tube size, disease, dataset layouts."""
from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from scipy import ndimage

from samtune.config import PhantomConfig
from samtune.data.cases import DataError
from samtune.data.io import read_image
from samtune.data.layouts.phantoms import MARKER, write_dataset
from samtune.data.phantoms import (
    GENERATOR_VERSION,
    make_anatomy,
    make_phantom,
    phantom_affine,
)

SHAPE, SPACING = (48, 48, 32), (0.8, 0.8, 1.25)
TINY = dict(shape=SHAPE, spacing=SPACING, n_normal=2, n_diseased=2, n_test=1)


@pytest.fixture(scope="module")
def normal():
    return make_phantom(SHAPE, SPACING, seed=7)


def test_same_seed_same_arrays_other_seed_other_tree(normal):
    image, label = make_phantom(SHAPE, SPACING, seed=7)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.shape == label.shape == SHAPE
    np.testing.assert_array_equal(image, normal[0])
    np.testing.assert_array_equal(label, normal[1])
    other_image, other_label = make_phantom(SHAPE, SPACING, seed=8)
    overlap = (label & other_label).sum() / max(label.sum(), 1)
    assert overlap < 0.8  # a different tree, not the same one with other noise
    assert not np.array_equal(other_image, image)


def test_hu_ranges(normal):
    image, label = normal
    assert set(np.unique(label)) == {0, 1}
    assert 250 <= image[label == 1].mean() <= 500
    corners = np.concatenate([image[:3, :3].ravel(), image[-3:, -3:].ravel()])
    assert abs(corners.mean() + 1000) < 10 and 10 < corners.std() < 40  # air with σ≈25 noise
    assert image.min() >= -1024
    an = make_anatomy(SHAPE, SPACING, seed=7)
    i, j = np.round(an.heart_centre / np.asarray(SPACING[:2])).astype(int)
    assert 150 <= image[i - 1:i + 2, j - 1:j + 2, 12:20].mean() <= 290  # blood pool
    assert (image[label == 0] > 600).sum() == 0  # no calcium in a normal phantom


@pytest.mark.parametrize("seed", range(4))
def test_label_fraction_and_z_coverage(seed):
    _, label = make_phantom(SHAPE, SPACING, seed=seed, lesions=False)
    assert 0.002 < label.mean() < 0.08
    per_slice = label.sum(axis=(0, 1))
    assert (per_slice > 0).mean() >= 0.75
    assert 2 <= ndimage.label(label[:, :, SHAPE[2] // 2])[1] <= 12  # small axial blobs
    assert ndimage.label(label, np.ones((3, 3, 3)))[1] == 2  # two trees, connected, apart


@pytest.mark.parametrize("spacing", [(0.6, 0.9, 1.25), (0.4, 0.4, 0.625)])
def test_trunk_cross_section_is_a_disc_of_the_stated_radius_in_mm(spacing):
    shape = (64, 48, 32)
    an = make_anatomy(shape, spacing, seed=3, lesions=False)
    _, label = make_phantom(shape, spacing, seed=3, lesions=False)
    sp = np.asarray(spacing)
    for trunk in (b for b in an.branches if b.parent is None):
        n = int(np.argmin(np.abs(trunk.points[:, 2] - (trunk.points[0, 2] - 4.0))))  # 4 mm down
        p, r = trunk.points[n], trunk.radii[n]
        k = int(round(p[2] / sp[2]))
        p = trunk.points[np.argmin(np.abs(trunk.points[:, 2] - k * sp[2]))]
        blobs, _ = ndimage.label(label[:, :, k])
        i, j = np.round(p[:2] / sp[:2]).astype(int)
        blob = blobs == blobs[i, j]
        assert blobs[i, j] > 0
        tangent = np.diff(trunk.points[max(n - 5, 0):n + 5], axis=0).mean(axis=0)
        cos_tilt = abs(tangent[2]) / np.linalg.norm(tangent)
        area = blob.sum() * sp[0] * sp[1]
        assert area == pytest.approx(np.pi * r**2 / cos_tilt, rel=0.25)
        width_i, width_j = blob.any(1).sum() * sp[0], blob.any(0).sum() * sp[1]
        assert abs(width_i - 2 * r) <= sp[0] + 0.2 * r and abs(width_j - 2 * r) <= sp[1] + 0.2 * r


def test_radii_physical_on_fine_grids_and_scaled_on_coarse_ones():
    fine = make_anatomy((64, 64, 48), (0.4, 0.4, 0.625), seed=1, lesions=False)
    assert fine.branches[0].radii[0] == pytest.approx(2.0)
    assert min(b.radii.min() for b in fine.branches) == pytest.approx(0.8, rel=0.01)
    coarse = make_anatomy((64, 64, 48), (0.8, 0.8, 1.25), seed=1, lesions=False)
    assert min(b.radii.min() for b in coarse.branches) >= 1.5 * 0.8 - 1e-9  # ≥ 1.5 voxels
    assert all(b.radii[0] >= b.radii[-1] for b in coarse.branches)  # thinner along the tree
    children = [b for b in coarse.branches if b.parent is not None]
    assert len(children) >= 4
    assert all(b.radii[0] <= coarse.branches[b.parent].radii.max() for b in children)


def test_diseased_adds_plaques_outside_the_label_and_narrows_the_lumen():
    an = make_anatomy(SHAPE, SPACING, seed=7, diseased=True)
    image, label = make_phantom(SHAPE, SPACING, seed=7, diseased=True)
    healthy = make_anatomy(SHAPE, SPACING, seed=7)
    assert (image[label == 0] > 600).sum() >= 3
    assert image.max() >= 650
    assert 1 <= len(an.stenoses) <= 3 and len(an.plaques) >= 2
    for b, k, severity in an.stenoses:
        r_healthy = healthy.branches[b].radii[k]
        assert an.branches[b].radii[k] <= (1 - severity) * r_healthy * 1.05 + 1e-9


def test_lesions_are_hypodense_and_unlabelled():
    an = make_anatomy(SHAPE, SPACING, seed=11, lesions=True)
    image, label = make_phantom(SHAPE, SPACING, seed=11, lesions=True)
    _, label_without = make_phantom(SHAPE, SPACING, seed=11, lesions=False)
    np.testing.assert_array_equal(label, label_without)
    assert 1 <= len(an.lesions) <= 3
    sp = np.asarray(SPACING)
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, sp)), indexing="ij"), -1)
    for lesion in an.lesions:
        core = np.linalg.norm(grid - lesion.centre, axis=-1) <= 0.6 * lesion.radius
        assert core.any() and image[core].mean() < 35 and label[core].max() == 0


def test_small_phantom_is_fast():
    make_phantom((64, 64, 48), (0.8, 0.8, 1.25), seed=0)
    start = time.perf_counter()
    make_phantom((64, 64, 48), (0.8, 0.8, 1.25), seed=1, diseased=True)
    assert time.perf_counter() - start < 1.0  # ~0.05 s on 2 cores; generous for busy CI


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="sizes"):
        make_phantom((8, 48, 32), SPACING, seed=0)
    with pytest.raises(ValueError, match="spacings"):
        make_phantom(SHAPE, (0.8, 0.0, 1.25), seed=0)


def test_phantom_affine_centres_volume_and_flips_j():
    affine = phantom_affine(SHAPE, SPACING)
    np.testing.assert_allclose(np.diag(affine), [0.8, 0.8, 1.25, 1])
    np.testing.assert_allclose(affine @ [23.5, 23.5, 15.5, 1], [0, 0, 0, 1], atol=1e-9)
    flipped = phantom_affine(SHAPE, SPACING, negative_direction=True)
    assert flipped[1, 1] == -0.8
    np.testing.assert_allclose(flipped @ [23.5, 23.5, 15.5, 1], [0, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(flipped @ [0, 0, 0, 1], [-18.8, 18.8, -19.375, 1])
    moved = phantom_affine(SHAPE, SPACING, origin=(1, 2, 3))
    np.testing.assert_allclose(moved[:3, 3], [1, 2, 3])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def asoca(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("asoca") / "ASOCA", PhantomConfig(**TINY))


def test_asoca_layout_names_types_and_geometry(asoca):
    assert _files(asoca) == sorted([
        MARKER,
        "Normal/CTCA/Normal_1.nrrd", "Normal/CTCA/Normal_2.nrrd",
        "Normal/Annotations/Normal_1.nrrd", "Normal/Annotations/Normal_2.nrrd",
        "Normal/Testset_Normal/Normal_3.nrrd",
        "Diseased/CTCA/Diseased_1.nrrd", "Diseased/CTCA/Diseased_2.nrrd",
        "Diseased/Annotations/Diseased_1.nrrd", "Diseased/Annotations/Diseased_2.nrrd",
        "Diseased/Testset_Diseased/Diseased_3.nrrd"])
    signs = []
    for group in ("Normal", "Diseased"):
        for n in (1, 2):
            image, ih = nrrd.read(str(asoca / group / "CTCA" / f"{group}_{n}.nrrd"))
            label, lh = nrrd.read(str(asoca / group / "Annotations" / f"{group}_{n}.nrrd"))
            assert image.shape == label.shape == SHAPE
            assert image.dtype == np.int16 and label.dtype == np.uint8
            np.testing.assert_allclose(ih["space directions"], lh["space directions"])
            np.testing.assert_allclose(ih["space origin"], lh["space origin"])
            assert set(np.unique(label)) == {0, 1}
            calcium = int((image[label == 0] > 600).sum())
            assert (calcium > 0) == (group == "Diseased")
            signs.append(np.sign(read_image(asoca / group / "CTCA" / f"{group}_{n}.nrrd")[1][1, 1]))
    assert signs == [1, -1, 1, -1]  # even-numbered cases have a negative j direction


def test_flipped_cases_keep_the_anatomy_in_world_space(asoca):
    """Coronaries lie anterior (+y) of the volume centre in world space, flipped j or not."""
    for n in (1, 2):
        label, affine, _ = read_image(asoca / "Normal" / "Annotations" / f"Normal_{n}.nrrd")
        ijk = np.argwhere(label > 0).mean(axis=0)
        assert (affine @ np.append(ijk, 1))[1] > 1.0


def test_asoca_is_idempotent(asoca):
    before = {f: (asoca / f).stat().st_mtime_ns for f in _files(asoca)}
    assert write_dataset(asoca, PhantomConfig(**TINY)) == asoca
    assert {f: (asoca / f).stat().st_mtime_ns for f in _files(asoca)} == before


def test_imagecas_layout_and_byte_identical_reruns(tmp_path):
    cfg = PhantomConfig(layout="imagecas", **TINY)
    root = write_dataset(tmp_path / "ImageCAS", cfg)
    expected = [MARKER] + [f"Data/{n}.{kind}.nii.gz" for n in range(1, 5)
                           for kind in ("img", "label")]
    assert _files(root) == sorted(expected)
    for n in range(1, 5):
        image = nib.load(root / "Data" / f"{n}.img.nii.gz")
        label = nib.load(root / "Data" / f"{n}.label.nii.gz")
        assert image.shape == label.shape == SHAPE
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, label.affine)
        np.testing.assert_allclose(image.header.get_zooms(), SPACING)
        pixels, mask = np.asarray(image.dataobj), np.asarray(label.dataobj)
        assert ((pixels[mask == 0] > 600).sum() > 0) == (n > 2)  # cases 3-4 are diseased
    again = write_dataset(tmp_path / "copy", cfg)
    for f in expected:
        assert (again / f).read_bytes() == (root / f).read_bytes(), f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ImageCAS", "copy"]  # no temp leftovers


def test_changed_config_regenerates(tmp_path):
    root = write_dataset(tmp_path / "data", PhantomConfig(**TINY))
    old = (root / "Normal" / "CTCA" / "Normal_1.nrrd").read_bytes()
    cfg = PhantomConfig(**{**TINY, "n_normal": 1, "seed": 5})
    assert write_dataset(root, cfg) == root
    assert not (root / "Normal" / "CTCA" / "Normal_2.nrrd").exists()  # stale files are gone
    assert (root / "Normal" / "Testset_Normal" / "Normal_2.nrrd").exists()
    assert (root / "Normal" / "CTCA" / "Normal_1.nrrd").read_bytes() != old
    marker = json.loads((root / MARKER).read_text())
    assert PhantomConfig.model_validate(marker["config"]) == cfg
    assert marker["generator"] == GENERATOR_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_a_foreign_folder_and_accepts_an_empty_one(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "scan.nii.gz").write_bytes(b"precious")
    with pytest.raises(DataError, match="refusing to overwrite") as err:
        write_dataset(foreign, PhantomConfig(**TINY))
    assert str(foreign) in str(err.value)
    assert _files(foreign) == ["scan.nii.gz"]
    assert (foreign / "scan.nii.gz").read_bytes() == b"precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match=str(a_file)):
        write_dataset(a_file, PhantomConfig(**TINY))
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = PhantomConfig(**{**TINY, "n_normal": 1, "n_diseased": 0, "n_test": 0})
    assert _files(write_dataset(empty, cfg)) == sorted(
        [MARKER, "Normal/CTCA/Normal_1.nrrd", "Normal/Annotations/Normal_1.nrrd"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "mine"]
