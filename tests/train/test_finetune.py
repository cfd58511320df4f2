"""samtune.train.finetune pieces that need no export: QC overlays during training."""
from __future__ import annotations

from pathlib import Path

import torch

from samtune.config import ModelConfig
from samtune.models.registry import build_model
from samtune.train.finetune import qc_during_training


def _item(i: int, empty: bool = False) -> dict:
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    if not empty:
        masks[0, 20 + i:40, 10:30] = True
    return {"image": torch.rand(3, 64, 64) * 255, "masks": masks,
            "labels": torch.ones(1, dtype=torch.int64), "image_id": i, "case_id": f"c{i}"}


def test_qc_overlays_every_n_epochs_and_events_passed_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sam_tiny", img_size=64))
    data = [_item(0, empty=True), _item(1), _item(2)]
    seen: list[tuple[str, int]] = []
    cb = qc_during_training(model, data, 2, tmp_path / "qc",
                            lambda e, m, s: seen.append((e, s)), n=2)
    for epoch in range(1, 5):
        cb("epoch", {"epoch": float(epoch), "loss": 1.0}, epoch * 10)
    cb("end", {"best_val_dice": 0.5}, 40)
    names = sorted(p.name for p in (tmp_path / "qc").glob("*.png"))
    assert names == ["epoch_0002_0.png", "epoch_0002_1.png", "epoch_0004_0.png",
                     "epoch_0004_1.png"]  # the empty slice is skipped
    assert seen == [("epoch", 10), ("epoch", 20), ("epoch", 30), ("epoch", 40), ("end", 40)]
    assert model.training  # evaluation left the model in train mode
