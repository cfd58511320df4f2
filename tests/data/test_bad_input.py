"""Bad input answered with a reason naming the file (issue 12 §2): singular affines, zero or
negative spacing, vector-valued voxels, corrupted COCO RLE, a disk that fills mid-conversion."""
from __future__ import annotations

import errno
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import samtune.data.convert as convert_mod
from samtune.config import ConvertConfig, DataConfig, ValidateConfig
from samtune.data.cases import Case, DataError, VolumeReadError
from samtune.data.convert import convert_collection
from samtune.data.io import load_volume, read_image
from samtune.data.io_coco import rasterize_coco
from samtune.data.layouts import ingest
from samtune.data.storage import StorageFullError
from samtune.data.validate import collect_facts, run_expectations

from .test_convert import make_collection

SHAPE = (16, 16, 8)
AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])
_PIXDIM, _QFORM_CODE, _SROW = 80, 252, 280  # NIfTI-1 header offsets (pixdim[1], codes, srows)


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 500, SHAPE).astype(np.int16)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[4:9, 4:9, 2:6] = 1
    return lab


def _patched_nifti(path: Path, pixdim=None, zero_geometry: bool = False) -> Path:
    """An uncompressed NIfTI whose header bytes are patched after saving (nibabel would fix
    pixdim and the codes on save)."""
    nib.save(nib.Nifti1Image(_volume(), AFFINE), path)
    raw = bytearray(path.read_bytes())
    if pixdim is not None:
        struct.pack_into("<3f", raw, _PIXDIM, *pixdim)
    if zero_geometry:  # sform code 1 with all-zero rows, qform code 0 and pixdim zero
        struct.pack_into("<hh", raw, _QFORM_CODE, 0, 1)
        struct.pack_into("<12f", raw, _SROW, *[0.0] * 12)
        struct.pack_into("<3f", raw, _PIXDIM, 0.0, 0.0, 0.0)
    path.write_bytes(bytes(raw))
    return path


def _folder_dataset(root: Path, bad: dict[str, Path | None]) -> None:
    """images/ + labels/ with four good cases; `bad` maps a case id to its image (already
    written) or None."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for n, cid in enumerate(["a", "b", "c", "d"]):
        nib.save(nib.Nifti1Image(_volume(n), AFFINE), root / "images" / f"{cid}.nii.gz")
    for cid in ["a", "b", "c", "d", *bad]:
        nib.save(nib.Nifti1Image(_label(), AFFINE), root / "labels" / f"{cid}.nii.gz")


def _validate(root: Path):
    collection = ingest(DataConfig(layout="folder", root=root, modality="CT"))
    cfg = ValidateConfig(hu_range=(-2048.0, 4096.0))
    return run_expectations(collect_facts(collection, cfg), cfg)


def test_singular_zero_spacing_and_rgb_cases_are_quarantined_beside_valid_ones(tmp_path):
    """The probe's folder: an all-zero sform/qform (was `TypeError: sequence item 0`), zero and
    negative pixdim (nibabel reads them as 1 mm and abs), an RGB24 NIfTI and a 4D I×J×K×3."""
    images = tmp_path / "images"
    images.mkdir()
    _patched_nifti(images / "singular.nii", zero_geometry=True)
    _patched_nifti(images / "zero.nii", pixdim=(0.0, 0.8, 2.0))
    _patched_nifti(images / "negative.nii", pixdim=(0.8, -0.8, 2.0))
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), images / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.int16), AFFINE), images / "four.nii.gz")
    bad = ["singular", "zero", "negative", "rgb", "four"]
    _folder_dataset(tmp_path, dict.fromkeys(bad))
    result = _validate(tmp_path)
    assert result.passed == ["a", "b", "c", "d"]
    assert sorted(result.failed) == sorted(bad)
    reasons = {cid: " ".join(r) for cid, r in result.failed.items()}
    assert str(images / "singular.nii") in reasons["singular"]
    assert "singular affine" in reasons["singular"]
    assert f"{images / 'zero.nii'}: zero or negative voxel spacing" in reasons["zero"]
    assert "pixdim[1] = 0" in reasons["zero"]
    assert "pixdim[2] = -0.8" in reasons["negative"] and "pixdim[1]" not in reasons["negative"]
    assert f"{images / 'rgb.nii.gz'}: RGB-valued voxels (3 components" in reasons["rgb"]
    assert "scalar CT volume is expected" in reasons["rgb"]
    assert str(images / "four.nii.gz") in reasons["four"] and "4D image" in reasons["four"]


def test_rgb_nifti_is_fine_for_an_rgb_case_and_its_spacing_is_read_as_stored(tmp_path):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"][1, 2, 3] = 7
    nib.save(nib.Nifti1Image(rgb, AFFINE), tmp_path / "rgb.nii.gz")
    vol = load_volume(Case("c", "c", (str(tmp_path / "rgb.nii.gz"),), modality="RGB"))
    assert vol.image.shape == (3, *SHAPE) and vol.image[1, 1, 2, 3] == 7
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.0))


def test_read_image_refuses_a_singular_affine_naming_the_file(tmp_path):
    path = _patched_nifti(tmp_path / "s.nii", zero_geometry=True)
    with pytest.raises(VolumeReadError, match=r"s\.nii: singular affine.*determinant 0"):
        read_image(path)


def _coco(tmp_path: Path, segmentation: dict) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({
        "images": [{"id": 3, "file_name": "p.png", "width": 5, "height": 4}],
        "categories": [{"id": 1, "name": "lesion"}],
        "annotations": [{"id": 41, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1],
                         "segmentation": [[0, 0, 2, 0, 2, 2]]},
                        {"id": 42, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1],
                         "segmentation": segmentation}]}))
    return path


@pytest.mark.parametrize("counts", ["zzzz", "\u0000\u0001garbage", [-5, 25], "x", 5])
def test_corrupted_rle_names_the_file_and_the_annotation(tmp_path, counts):
    path = _coco(tmp_path, {"size": [4, 5], "counts": counts})
    with pytest.raises(DataError) as err:
        rasterize_coco(path, 3, (5, 4))
    assert err.value.path == str(path)
    assert "annotation 42 (image 3): corrupted segmentation" in err.value.problem


def test_rle_of_another_size_names_the_annotation(tmp_path):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.ones((8, 8), np.uint8, order="F"))
    path = _coco(tmp_path, {"size": [8, 8], "counts": rle["counts"].decode()})
    with pytest.raises(DataError, match=r"annotation 42 \(image 3\).*differs from the image"):
        rasterize_coco(path, 3, (5, 4))


def test_valid_rle_still_rasterises(tmp_path):
    from pycocotools import mask as mask_utils

    mask = np.zeros((4, 5), np.uint8, order="F")
    mask[1:3, 2:4] = 1
    rle = mask_utils.encode(mask)
    path = _coco(tmp_path, {"size": [4, 5], "counts": rle["counts"].decode()})
    label = rasterize_coco(path, 3, (5, 4))
    assert label.shape == (5, 4, 1)
    assert label[..., 0].T[1:3, 2:4].tolist() == [[1, 1], [1, 1]]  # annotation 42's square
    assert label[..., 0].T[3].tolist() == [0] * 5  # outside both annotations


def test_disk_full_mid_conversion_says_where_and_how_much_and_keeps_nothing(tmp_path,
                                                                            monkeypatch):
    col = make_collection(tmp_path, n=3, shape=(24, 20, 6))
    out = tmp_path / "work" / "coco"
    real, calls = convert_mod.write_png, []

    def filling(path, *args):  # the disk fills on the first PNG of the third case
        calls.append(path)
        if path.name.startswith("case2"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args)

    monkeypatch.setattr(convert_mod, "write_png", filling)
    with pytest.raises(StorageFullError) as err:
        convert_collection(col, ConvertConfig(img_size=32, workers=1), out)
    message = str(err.value)
    assert message.startswith(f"{out.parent}: no space left on the device while converting 3")
    assert "(2 of 3 cases done)" in message and "(estimate)" in message and "free there" in message
    assert err.value.needed_bytes is not None and err.value.needed_bytes > 0
    assert len(calls) > 2 and not any(p.exists() for p in calls)  # scratch folder removed
    assert isinstance(err.value, DataError)  # run.py reports it as "run failed: …", exit 1
    assert not out.exists() and list(out.parent.iterdir()) == []
