"""Training augmentation: seeded, aligned (image and masks move together), off by default."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from samtune.config import AugmentConfig
from samtune.train.augment import augment_slice, slice_generator

GEOMETRY = AugmentConfig(enabled=True, p_affine=1.0, rotate_deg=30, scale=(0.8, 1.2), shift=0.1,
                         flip_x=True, flip_y=True, p_intensity=0.0, p_noise=0.0)


def square_case() -> tuple[np.ndarray, torch.Tensor]:
    """Image bright exactly where mask 0 is: any misalignment shows."""
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, 10:30, 15:40] = True
    masks[1, 35:44, 50:60] = True
    image = np.zeros((48, 64, 3), np.uint8)
    image[masks[0].numpy()] = 255
    return image, masks


def test_same_seed_same_output_other_seed_other_output():
    image, masks = square_case()
    cfg = AugmentConfig(enabled=True, p_affine=1.0, p_intensity=1.0, p_noise=1.0)
    a = augment_slice(image, masks, cfg, slice_generator(0, 1, 5))
    b = augment_slice(image, masks, cfg, slice_generator(0, 1, 5))
    c = augment_slice(image, masks, cfg, slice_generator(0, 2, 5))
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("index", range(6))
def test_masks_stay_aligned_with_the_image(index):
    image, masks = square_case()
    out, out_masks, kept = augment_slice(image, masks, GEOMETRY, slice_generator(3, 0, index))
    assert bool(kept[0])
    bright = torch.from_numpy(out[..., 0] > 127)
    # bilinear image vs nearest mask: they may differ only on the object's 1-pixel border
    differ = bright ^ out_masks[0]
    border = torch.nn.functional.max_pool2d(out_masks[0][None, None].float(), 3, 1, 1)[0, 0] \
        - (-torch.nn.functional.max_pool2d(-out_masks[0][None, None].float(), 3, 1, 1)[0, 0])
    assert not (differ & (border == 0)).any()
    assert out_masks[0].sum() > 0.5 * masks[0].sum()


def test_intensity_only_leaves_masks_alone_and_disabled_is_identity():
    image, masks = square_case()
    image = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    cfg = AugmentConfig(enabled=True, p_affine=0.0, p_intensity=1.0, p_noise=1.0)
    out, out_masks, kept = augment_slice(image, masks, cfg, slice_generator(0, 0, 0))
    assert torch.equal(out_masks, masks) and bool(kept.all()) and not np.array_equal(out, image)
    off = AugmentConfig(enabled=True, p_affine=0.0, p_intensity=0.0, p_noise=0.0)
    same, same_masks, _ = augment_slice(image, masks, off, slice_generator(0, 0, 0))
    assert np.array_equal(same, image) and torch.equal(same_masks, masks)


def test_an_instance_pushed_out_is_dropped():
    image, masks = square_case()
    cfg = AugmentConfig(enabled=True, p_affine=1.0, rotate_deg=0, scale=(1.0, 1.0), shift=0.5,
                        p_intensity=0.0, p_noise=0.0)
    dropped = 0
    for index in range(20):
        _, out_masks, kept = augment_slice(image, masks, cfg, slice_generator(0, 0, index))
        assert len(out_masks) == int(kept.sum()) and all(m.any() for m in out_masks)
        dropped += int((~kept).sum())
    assert dropped > 0


def test_bad_values_are_refused():
    with pytest.raises(ValidationError):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValidationError):
        AugmentConfig(p_affine=1.5)
    with pytest.raises(ValidationError):
        AugmentConfig(rotate=10)  # unknown key


def test_slice_dataset_augments_per_epoch_reproducibly(tmp_path):
    from samtune.train.data import SliceDataset
    from tests.train.test_data import make_slices, write_split

    write_split(tmp_path / "s", make_slices(3))
    cfg = AugmentConfig(enabled=True, p_affine=1.0, p_intensity=1.0)
    ds = SliceDataset(tmp_path / "s", 32, augment=cfg, seed=7)
    plain = SliceDataset(tmp_path / "s", 32)
    first = ds[1]["image"]
    assert torch.equal(first, SliceDataset(tmp_path / "s", 32, augment=cfg, seed=7)[1]["image"])
    assert not torch.equal(first, plain[1]["image"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[1]["image"])
    ds.set_epoch(0)
    assert torch.equal(first, ds[1]["image"])  # a resumed epoch draws the same
