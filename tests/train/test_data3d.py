"""CropDataset / load_crop_data: crops of the 3D export as SAM-Med3D's training loader cuts them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.config import AugmentConfig
from samtune.data.cases import Case, DataError
from samtune.data.export3d import export_3d, read_case3d
from samtune.data.grid3d import crop, mask_window
from samtune.data.io import write_volume
from samtune.train.augment3d import augment_crop
from samtune.train.data3d import CT_CLAMP, CropDataset, load_crop_data, upstream_min_voxels

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # the export grid itself: no resampling


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1500, 2500, (30, 26, 22)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[3:9, 4:10, 5:9] = 1               # near a corner: crops around it pad
    label[18:26, 14:22, 10:18] = 2
    return image, label


@pytest.fixture()
def export(tmp_path):
    cases, splits = [], {}
    for i, (split, modality) in enumerate([("train", "CT"), ("train", "MR"), ("val", "CT")]):
        image, label = _volume(i)
        img, lab = tmp_path / "src" / f"c{i}.nii.gz", tmp_path / "src" / f"c{i}_seg.nii.gz"
        write_volume(img, image, AFFINE)
        write_volume(lab, label, AFFINE)
        cases.append(Case(f"c{i}", f"p{i}", (str(img),), str(lab), modality=modality))
        splits[f"c{i}"] = split
    export_3d(cases, splits, tmp_path / "ds", classes={1: "bleed", 2: "oedema"})
    return tmp_path / "ds"


def test_min_voxels_is_upstreams_threshold_scaled() -> None:
    assert upstream_min_voxels(128) == 500
    assert upstream_min_voxels(64) == 62 and upstream_min_voxels(8) == 1


def test_train_crops_are_deterministic_per_seed_and_epoch(export) -> None:
    ds = CropDataset(export, "train", 16, samples_per_case=3, seed=7)
    assert len(ds) == 6 and ds.categories == {1: "bleed", 2: "oedema"}
    first = [ds.window(i) for i in range(len(ds))]
    assert first == [CropDataset(export, "train", 16, samples_per_case=3, seed=7).window(i)
                     for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.window(i) for i in range(len(ds))] != first
    other = CropDataset(export, "train", 16, samples_per_case=3, seed=8)
    assert [other.window(i) for i in range(len(ds))] != first


def test_foreground_crops_hold_their_class_and_match_the_grid(export) -> None:
    ds = CropDataset(export, "train", 16, samples_per_case=20, foreground_fraction=1.0,
                     min_voxels=1)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
        assert item["masks"].shape[1:] == (16, 16, 16) and item["masks"].dtype == torch.bool
        assert len(item["labels"]) >= 1 and set(item["labels"].tolist()) <= {1, 2}
        case_id, window, _ = ds.window(i)
        image, label, _ = read_case3d(export, case_id)
        lab = crop(label, window)
        for m, c in zip(item["masks"], item["labels"].tolist()):
            assert torch.equal(m, torch.from_numpy(lab == c))
        raw = crop(image, window)
        if case_id == "c0":  # CT: upstream's clamp to [-1000, 1000]
            assert torch.equal(item["image"][0], torch.from_numpy(np.clip(raw, *CT_CLAMP)))
        else:
            assert torch.equal(item["image"][0], torch.from_numpy(raw))
    assert ds[0]["key"].startswith("train/")


def test_padding_outside_the_grid_is_zero(export) -> None:
    ds = CropDataset(export, "val", 16, deterministic=True, min_voxels=1)
    # class 1 sits at i=3..8: its 16-voxel window starts at i = -2 → two padded planes
    index = ds.items.index(("c2", 1))
    _, window, _ = ds.window(index)
    assert window.start[0] < 0
    item = ds[index]
    assert torch.all(item["image"][0, : -window.start[0]] == 0)
    assert not item["masks"][0, : -window.start[0]].any()


def test_val_crops_are_upstreams_mask_window_one_class_each(export) -> None:
    ds = CropDataset(export, "val", 16, deterministic=True, min_voxels=1)
    assert ds.items == [("c2", 1), ("c2", 2)]
    _, label, _ = read_case3d(export, "c2")
    for i, c in enumerate((1, 2)):
        _, window, classes = ds.window(i)
        assert window == mask_window(label == c, 16) and classes == [c]
        item = ds[i]
        assert item["labels"].tolist() == [c]
        assert int(item["masks"][0].sum()) == int((label == c).sum())  # whole structure inside


def test_masks_below_min_voxels_are_dropped(export) -> None:
    ds = CropDataset(export, "val", 16, deterministic=True, min_voxels=10_000)
    item = ds[0]
    assert item["masks"].shape == (0, 16, 16, 16) and len(item["labels"]) == 0


def test_no_foreground_in_the_split_names_the_index(export) -> None:
    with pytest.raises(DataError, match="index.json.*split 'test'"):
        CropDataset(export, "test", 16)
    train, val = load_crop_data(export, 16, seed=1)
    assert len(train) == 8 and val is not None and len(val) == 2


def test_augmentation_keeps_image_and_masks_aligned() -> None:
    image = torch.zeros(1, 16, 16, 16)
    image[0, 4:12, 4:12, 4:12] = 100.0
    masks = (image > 0).clone()
    cfg = AugmentConfig(enabled=True, p_affine=1.0, rotate_deg=30, p_intensity=0, p_noise=0)
    x, m = augment_crop(image, masks, cfg, torch.Generator().manual_seed(3))
    assert x.shape == image.shape and m.shape == masks.shape and m.dtype == torch.bool
    assert not torch.equal(m, masks)                               # it moved
    assert float(x[m].mean()) > 90 and float(x[~m].mean()) < 10    # and the image moved with it
    again = augment_crop(image, masks, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], x) and torch.equal(again[1], m)


def test_flips_and_gamma_follow_the_config() -> None:
    image = torch.arange(8.0).reshape(1, 2, 2, 2)
    masks = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    none = AugmentConfig(enabled=True, p_affine=0, p_intensity=0, p_noise=0)
    x, m = augment_crop(image, masks, none, torch.Generator().manual_seed(0))
    assert torch.equal(x, image) and torch.equal(m, masks)
    gamma = AugmentConfig(enabled=True, p_affine=0, p_intensity=1, gamma=(2.0, 2.0), p_noise=0)
    x, _ = augment_crop(image, masks, gamma, torch.Generator().manual_seed(0))
    assert torch.allclose(x, 7 * (image / 7) ** 2)                 # range [0, 7] kept
    flips = [AugmentConfig(enabled=True, p_affine=0, p_intensity=0, p_noise=0, flip_x=True)]
    seen = {bool(augment_crop(image, masks, flips[0], torch.Generator().manual_seed(s))[1]
                 [0, 1, 0, 0]) for s in range(12)}
    assert seen == {True, False}                                   # axis 0 flipped about half


def test_train_augmentation_is_reproducible_and_off_for_val(export) -> None:
    cfg = AugmentConfig(enabled=True, p_affine=1.0)
    a = CropDataset(export, "train", 16, augment=cfg, seed=2)
    b = CropDataset(export, "train", 16, augment=cfg, seed=2)
    assert torch.equal(a[1]["image"], b[1]["image"])
    assert CropDataset(export, "val", 16, augment=cfg, deterministic=True).augment is None
