"""evaluate_crops / box_fill_3d, and evaluate_bundle's dispatch of 3D models to crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.data.cases import Case
from samtune.data.export3d import export_3d
from samtune.data.io import write_volume
from samtune.eval.crop_eval import box_fill_3d, evaluate_crops
from samtune.train.data3d import CropDataset
from tests.inference.test_volume3d import RegionFixer


def test_box_fill_is_the_tight_inclusive_box() -> None:
    gt = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    gt[0, 1, 2, 3] = gt[0, 3, 4, 4] = True
    out = box_fill_3d(gt)
    assert int(out.sum()) == 3 * 3 * 2 and out[0, 1:4, 2:5, 3:5].all()


@pytest.fixture()
def ball_export(tmp_path):
    shape = (40, 40, 40)
    ii, jj, kk = np.indices(shape)
    label = (((ii - 20) ** 2 + (jj - 18) ** 2 + (kk - 21) ** 2) <= 8 ** 2).astype(np.uint8)
    image = np.where(label > 0, 900.0, 100.0).astype(np.float32)
    src = tmp_path / "src"
    write_volume(src / "b.nii.gz", image, np.diag([1.5, 1.5, 1.5, 1.0]))
    write_volume(src / "b_seg.nii.gz", label, np.diag([1.5, 1.5, 1.5, 1.0]))
    case = Case("b", "p", (str(src / "b.nii.gz"),), str(src / "b_seg.nii.gz"), modality="MR")
    export_3d([case], {"b": "test"}, tmp_path / "ds", classes={1: "ball"})
    return tmp_path / "ds", label


def test_a_centre_click_on_a_ball_beats_its_box_fill(ball_export) -> None:
    root, label = ball_export
    ds = CropDataset(root, "test", 32, deterministic=True, min_voxels=1)
    model = RegionFixer(img_size=32)
    report = evaluate_crops(model, ds, device="cpu")
    m = report.metrics()
    n = int(label.sum())  # the voxelised ball of radius 8 inside its 17³ box
    assert m["instance_baseline_dice"] == pytest.approx(2 * n / (n + 17 ** 3), abs=1e-6)
    assert m["instance_dice"] > 0.9 > m["instance_baseline_dice"]
    assert report.n_slices == 1 and report.n_empty_slices == 0
    click = model.calls[0]
    assert click.points.shape == (1, 1, 3) and click.point_labels.tolist() == [[1]]
    assert click.points[0, 0].tolist() == pytest.approx([16.0, 16.0, 16.0], abs=1.0)
