"""QC figures: valid PNGs of the promised size, colours where the masks are, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samtune.figures import (
    PALETTE,
    overlay_masks,
    qc_overlay,
    to_rgb_uint8,
    training_curves,
)
from samtune.models.base import Prompts

H, W = 48, 64


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB")).astype(int)


def _blend(grey: int, k: int) -> list[int]:
    return [int(np.rint(0.5 * grey + 0.5 * c)) for c in PALETTE[k]]


def test_overlay_masks_blends_instance_colours() -> None:
    image = np.full((4, 5), 100, np.uint8)
    masks = np.zeros((2, 4, 5), bool)
    masks[0, 0, 0] = masks[1, 3, 4] = True
    out = overlay_masks(image, masks)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == _blend(100, 0)
    assert out[3, 4].tolist() == _blend(100, 1)
    assert out[2, 2].tolist() == [100, 100, 100]
    assert to_rgb_uint8(torch.full((3, 4, 5), 300.0)).max() == 255  # 3×H×W, clipped


def test_qc_overlay_panels(tmp_path) -> None:
    image = np.full((H, W), 100, np.uint8)
    gt = np.zeros((2, H, W), bool)
    gt[0, 10:20, 10:20] = True
    gt[1, 30:40, 40:55] = True
    pred = np.zeros((1, H, W), bool)
    pred[0, 25:35, 5:15] = True
    prompts = Prompts(boxes=torch.tensor([[10.0, 10.0, 19.0, 19.0]]),
                      points=torch.tensor([[[40.0, 20.0], [50.0, 5.0]]]),
                      point_labels=torch.tensor([[1, 0]]))
    path = qc_overlay(image, gt, prompts, pred, tmp_path / "qc" / "slice.png")
    px = _png(path)
    assert px.shape == (H, 4 * W, 3)
    image_panel, gt_panel, prompt_panel, pred_panel = (px[:, i * W:(i + 1) * W] for i in range(4))
    assert image_panel[15, 15].tolist() == [100, 100, 100]
    assert gt_panel[15, 15].tolist() == _blend(100, 0)  # instance 0
    assert gt_panel[35, 47].tolist() == _blend(100, 1)  # instance 1
    assert gt_panel[30, 10].tolist() == [100, 100, 100]  # background stays grey
    assert pred_panel[30, 10].tolist() == _blend(100, 0)
    assert pred_panel[15, 15].tolist() == [100, 100, 100]
    assert prompt_panel[15, 15].tolist() == [100, 100, 100]  # inside the box: not filled
    edge = prompt_panel[18:21, 14:17].reshape(-1, 3)  # the box's bottom edge, in colour 0
    assert (np.abs(edge - PALETTE[0]).sum(axis=1) < 60).any()
    assert list((tmp_path / "qc").iterdir()) == [path]  # no temporary file left behind


def test_qc_overlay_scale_and_inputs(tmp_path) -> None:
    image = torch.full((3, H, W), 50.0)
    path = qc_overlay(image, None, {"boxes": [[1, 1, 10, 10]]}, np.zeros((H, W), bool),
                      tmp_path / "small.png", scale=0.5, title="case 1")
    assert _png(path).shape == (H // 2, 2 * W, 3)
    with pytest.raises(ValueError, match="K×48×64"):
        qc_overlay(image, np.zeros((1, 10, 10), bool), None, None, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("history", [
    [{"epoch": 1, "train_loss": 1.0, "val_dice": None, "lr": 1e-3},
     {"epoch": 2, "train_loss": 0.6, "val_dice": 0.4, "lr": 5e-4},
     {"epoch": 3, "train_loss": 0.3, "val_dice": 0.7, "lr": 1e-4}],
    {"train_loss": [1.0, 0.6, 0.3], "val_loss": [1.1, 0.8, 0.5], "val_dice": [0.1, 0.4, 0.7],
     "lr": [1e-3, 5e-4, 1e-4]},
])
def test_training_curves(tmp_path, history) -> None:
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")  # replaced atomically
    training_curves(history, path)
    px = _png(path)
    assert px.shape == (350, 1200, 3)
    line = np.abs(px - PALETTE[0]).sum(axis=2) < 30  # the first curve's colour
    # a curve in each of the three panels
    assert all(line[:, a:b].sum() > 50 for a, b in ((0, 400), (400, 800), (800, 1200)))


def test_training_curves_empty_history(tmp_path) -> None:
    px = _png(training_curves([], tmp_path / "empty.png"))
    assert px.shape == (350, 1200, 3)
    assert (np.abs(px - PALETTE[0]).sum(axis=2) < 30).sum() == 0
