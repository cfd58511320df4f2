"""3D inference (SAM-Med3D): prompts-file rows → one click each, in its own crop; automatic
refused at config validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samtune.config import ConvertConfig, InferConfig, ModelConfig, load_config
from samtune.config.loader import ConfigError
from samtune.data.cases import Case
from samtune.data.io import read_image, write_volume
from samtune.inference.clicks import mask_dice
from samtune.inference.infer import infer_volumes, output_path
from samtune.inference.infer3d import box_click, predict_prompts_3d
from samtune.inference.model_source import LoadedModel
from samtune.inference.prompts_file import BoxPrompt
from tests.inference.test_volume3d import RegionFixer, _blobs

# ball centres of _blobs: label 1 at (22, 20, 30) r16 and (56, 50, 18) r12; label 2 at
# (18, 56, 50) r8
ROWS = [BoxPrompt("blobs", 2, 30, 1, (12, 10, 32, 30), row=1),   # centre (22, 20, 30)
        BoxPrompt("blobs", 0, 18, 2, (52, 46, 60, 54), row=2),   # centre (18, 56, 50)
        BoxPrompt("blobs", 2, 30, 3, (12, 10, 32, 30), row=3)]   # ball 1 again, label 3


def test_a_box_row_clicks_its_key_slice_at_the_box_centre() -> None:
    assert box_click(BoxPrompt("c", 2, 30, 1, (10, 12, 21, 30), row=1)) == (15, 21, 30)
    assert box_click(BoxPrompt("c", 0, 4, 1, (10, 12, 21, 30), row=1)) == (4, 15, 21)
    assert box_click(BoxPrompt("c", 1, 7, 1, (10, 12, 21, 30), row=1)) == (15, 7, 21)


def test_rows_become_clicks_united_per_label_first_row_winning() -> None:
    vol = _blobs()
    model = RegionFixer(img_size=64)
    pred, n = predict_prompts_3d(model, vol, ROWS)
    assert n == 3 and pred.shape == vol.shape
    ii, jj, kk = np.indices(vol.shape)
    ball1 = (ii - 22) ** 2 + (jj - 20) ** 2 + (kk - 30) ** 2 <= 16 ** 2
    assert mask_dice(pred == 1, ball1) > 0.9            # only the clicked ball of label 1
    assert mask_dice(pred == 2, vol.label == 2) > 0.8
    assert not (pred == 3).any()                        # row 3 claims ball 1: row 1 wins
    assert all(p.points.shape == (1, 1, 3) and p.point_labels.tolist() == [[1]]
               for p in model.calls)                    # one positive click per row


def test_infer_volumes_with_a_3d_model_writes_the_source_grid(tmp_path) -> None:
    vol = _blobs()
    src = tmp_path / "blobs.nii.gz"
    write_volume(src, vol.image[0], vol.affine)
    case = Case("blobs", "p", (str(src),), None, split="infer")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"case_id": "blobs", "axis": "k", "slice": 30, "label": 1,
                                    "box": [12, 10, 32, 30]}]))
    loaded = LoadedModel(RegionFixer(img_size=64), None, "sam_med3d", torch.device("cpu"),
                         "fake 3D", ModelConfig(name="sam_med3d_tiny"))
    cfg = InferConfig(mode="prompts", prompts_file=prompts, overlays=1)
    summary = infer_volumes(loaded, [case], ConvertConfig(img_size=64), cfg, tmp_path / "out")
    record = summary["cases"]["blobs"]
    assert record["crops_predicted"] == 1 and "slices_predicted" not in record
    array, affine, _ = read_image(output_path(tmp_path / "out", case))
    assert np.allclose(affine, vol.affine, atol=1e-6) and array.shape == vol.shape
    assert record["voxels"]["1"] == int((array == 1).sum()) > 10_000
    with pytest.raises(ValueError, match="no automatic mask generator"):
        infer_volumes(loaded, [case], ConvertConfig(img_size=64), InferConfig(),
                      tmp_path / "out")


def test_automatic_mode_with_a_3d_model_fails_at_config_validation() -> None:
    with pytest.raises(ConfigError, match="infer.mode automatic.*SAM-Med3D"):
        load_config("demo", ["model.name=sam_med3d_tiny", "infer.mode=automatic"])
