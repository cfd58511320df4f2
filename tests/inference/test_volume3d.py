"""predict_volume_3d / predict_volume_3d_points: the oracle's geometry round trip, and the click
loop with a fake 3D model that fixes one error region per click."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from samtune.data.cases import Case, DataError, Volume
from samtune.data.io import load_volume
from samtune.data.phantoms import make_phantom, phantom_affine
from samtune.inference.clicks import mask_dice
from samtune.inference.volume3d import predict_volume_3d, predict_volume_3d_points
from samtune.models.base import Embeddings, PromptableModel, Prompts


class Oracle3D:
    """Answers every prompt with the ground-truth crop (predict_volume_3d gives it)."""

    is_oracle = True
    img_size = 128


class RegionFixer(PromptableModel):
    """A fake SAM-Med3D: 'truth' = the bright voxels of its crop; each positive click adds the
    bright component it lands on, each negative click removes the predicted component under it.
    Logits (signed distance in voxels at each 4³ block's centre) come out at S/4 and go up
    trilinearly, as the real wrapper's do (which rounds balls off: Dice ≈ 0.95 at radius 16)."""

    spatial_dims = 3

    def __init__(self, img_size: int):
        super().__init__(img_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.calls: list[Prompts] = []

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        return (self.img_size // 4,) * 3

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        fg = x > 0
        mean, std = x[fg].mean(), x[fg].std()
        return torch.where(fg, (x - mean) / std, torch.zeros_like(x))

    def encode(self, x: torch.Tensor) -> Embeddings:
        return Embeddings(x)

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        self.calls.append(prompts)
        x = emb.image[b, 0].cpu().numpy()
        truth, _ = ndimage.label(x > (x.min() + x.max()) / 2)
        mask = np.zeros(x.shape, bool)
        for p, lab in zip(prompts.points[0].long().tolist(), prompts.point_labels[0].tolist()):
            if lab == 1 and truth[tuple(p)]:
                mask |= truth == truth[tuple(p)]
            elif lab == 0:
                comp, _ = ndimage.label(mask)
                if comp[tuple(p)]:
                    mask &= comp != comp[tuple(p)]
        sdf = np.where(mask, ndimage.distance_transform_edt(mask) - 0.5,
                       0.5 - ndimage.distance_transform_edt(~mask))
        low = F.avg_pool3d(torch.from_numpy(sdf[1:, 1:, 1:]).float()[None, None], 2, stride=4)
        return low, torch.ones(1, 1)

    def upscale(self, low: torch.Tensor) -> torch.Tensor:
        return F.interpolate(low, (self.img_size,) * 3, mode="trilinear", align_corners=False)


def _blobs(spacing=(1.5, 1.5, 1.5)) -> Volume:
    """Three balls of label 1 (radii 16, 12, 8 voxels) off the diagonal, and one of label 2."""
    shape = (80, 72, 64)
    ii, jj, kk = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    for (ci, cj, ck), r, v in (((22, 20, 30), 16, 1), ((56, 50, 18), 12, 1),
                               ((60, 18, 48), 8, 1), ((18, 56, 50), 8, 2)):
        label[(ii - ci) ** 2 + (jj - cj) ** 2 + (kk - ck) ** 2 <= r * r] = v
    image = np.where(label > 0, 1000, 100).astype(np.int16)[None]
    affine = phantom_affine(shape, spacing, negative_direction=True)
    return Volume(Case("blobs", "p", ()), image, affine, label, affine)


def _phantom(spacing, shape, flip: bool) -> Volume:
    image, label = make_phantom(shape, spacing, seed=3)
    affine = phantom_affine(shape, spacing, negative_direction=flip)
    if flip:
        affine[:3, 0] *= -1  # LPS-like: i runs right → left as well
    return Volume(Case("ph", "p", ()), image[None], affine, label, affine)


@pytest.mark.parametrize("linear", [False, True])
def test_oracle_round_trip_is_exact_where_the_grids_nest(linear: bool) -> None:
    vol = _phantom((3.0, 3.0, 3.0), (32, 32, 24), flip=True)  # 3 mm → 1.5 mm → 3 mm
    pred, curves = predict_volume_3d(Oracle3D(), vol, [1], n_clicks=3, linear=linear)
    assert pred.shape == vol.shape and pred.dtype == np.uint8
    assert mask_dice(pred == 1, vol.label == 1) >= 0.99
    assert curves[1][0] == 0.0 and min(curves[1][1:]) >= 0.99 and len(curves[1]) == 4


def test_oracle_on_a_finer_than_grid_phantom_is_lossy_and_linear_helps() -> None:
    """0.8 mm phantom (tubes 1.2–3 mm radius) through the 1.5 mm grid: measured 0.806 nearest,
    0.855 linear."""
    vol = _phantom((0.8, 0.8, 0.8), (64, 64, 48), flip=True)
    dice = {lin: mask_dice(predict_volume_3d(Oracle3D(), vol, [1], n_clicks=1, linear=lin)[0]
                           == 1, vol.label == 1) for lin in (False, True)}
    assert 0.78 < dice[False] < 0.83 and 0.83 < dice[True] < 0.88


def test_each_click_fixes_one_region_and_dice_never_falls() -> None:
    vol = _blobs()
    model = RegionFixer(img_size=96)
    pred, curves = predict_volume_3d(model, vol, [1, 2, 7], n_clicks=5)
    assert sorted(curves) == [1, 2]  # 7 is absent
    curve = curves[1]
    assert curve[0] == 0.0 and all(b >= a for a, b in zip(curve, curve[1:]))
    sizes = sorted(np.bincount(ndimage.label(vol.label == 1)[0].ravel())[1:], reverse=True)
    total = sum(sizes)
    assert curve[1] == pytest.approx(2 * sizes[0] / (sizes[0] + total), abs=0.05)  # biggest first
    assert curve[1] < curve[2] < curve[3] and mask_dice(pred == 1, vol.label == 1) > 0.9
    assert mask_dice(pred == 2, vol.label == 2) > 0.8
    first = model.calls[0]  # class 1's first decode: one positive click, zero mask_inputs
    assert first.points.shape == (1, 1, 3) and first.point_labels.tolist() == [[1]]
    assert first.mask_inputs.shape == (1, 1, 24, 24, 24) and not first.mask_inputs.any()
    assert model.calls[1].points.shape == (1, 2, 3) and model.calls[1].mask_inputs.any()


def test_user_points_in_voxels_or_world_give_the_clicked_object() -> None:
    vol = _blobs()
    model = RegionFixer(img_size=96)
    ijk = np.array([[22, 20, 30], [56, 50, 18]])
    mask = predict_volume_3d_points(model, vol, ijk, [1, 1])
    comp = ndimage.label(vol.label == 1)[0]
    want = np.isin(comp, [comp[22, 20, 30], comp[56, 50, 18]])
    assert mask.dtype == bool and mask_dice(mask, want) > 0.9
    world = (vol.affine @ np.c_[ijk, np.ones(2)].T)[:3].T
    assert np.array_equal(predict_volume_3d_points(model, vol, world, [1, 1], world=True), mask)
    with pytest.raises(ValueError, match="positive"):
        predict_volume_3d_points(model, vol, ijk, [0, 0])


def test_without_a_label_simulated_clicks_are_an_error() -> None:
    vol = _blobs()
    vol.label = None
    with pytest.raises(DataError, match="ground-truth"):
        predict_volume_3d(Oracle3D(), vol, [1], n_clicks=1)


def test_oracle_on_real_spinal_cord_mri(shared_data) -> None:
    """1 mm MRI, a thin structure: measured 0.932 nearest (0.933 linear)."""
    folder = shared_data / "spinal_mri"
    vol = load_volume(Case("sc", "p", (str(folder / "sub-unf01_T2w.nii.gz"),),
                           str(folder / "sub-unf01_T2w_seg-manual.nii.gz")))
    pred, _ = predict_volume_3d(Oracle3D(), vol, [1], n_clicks=1)
    assert 0.92 < mask_dice(pred == 1, vol.label == 1) < 0.95


def test_oracle_on_real_ct_organs_at_3mm_is_exact(shared_data) -> None:
    """TotalSegmentator CT at 3 mm nests in the 1.5 mm grid: organs within the 192 mm crop come
    back exactly (spleen); the liver, 195 mm long, loses its ends to the crop (0.9996)."""
    folder = shared_data / "ct_mr_multiorgan"
    vol = load_volume(Case("ct", "p", (str(folder / "example_ct_sm.nii.gz"),),
                           str(folder / "example_seg.nii.gz")))
    pred, curves = predict_volume_3d(Oracle3D(), vol, [1, 5], n_clicks=1)
    assert mask_dice(pred == 1, vol.label == 1) == 1.0 and curves[1][1] == 1.0
    assert 0.999 < mask_dice(pred == 5, vol.label == 5) < 1.0
