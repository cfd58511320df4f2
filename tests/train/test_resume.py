"""Exact resume, config-mismatch refusal, checkpoint files and RNG state round trips."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from samtune.config import LoraConfig, ModelConfig, PromptConfig
from samtune.models.adapters import apply_method
from samtune.train import state as ckpt
from samtune.train.loop import train
from tests.train.test_loop import Blobs, tiny_cfg, tiny_model, weights_equal

# Everything that draws random numbers or carries state across steps: shuffling, instance
# subsampling (3 > max_instances 2), box jitter, sampled points, AdamW moments, warmup + cosine,
# validation with best-metric tracking.
RESUME_CFG: dict[str, Any] = {
    "epochs": 3, "batch_size": 3, "warmup_steps": 2, "scheduler": "CosineAnnealingLR",
    "scheduler_kwargs": {"eta_min": 1e-5}, "optimizer_kwargs": {"lr": 1e-3, "weight_decay": 0.01},
    "prompts": PromptConfig(bbox_shift=3, positive_points=1, negative_points=1, max_instances=2)}


def _data() -> tuple[Blobs, Blobs]:
    return Blobs(9, instances=3), Blobs(3, seed=1, instances=1)


def _comparable(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in ("samples_per_s", "peak_memory_mb")}
            for h in history]


def _model(method: str, seed: int = 0) -> torch.nn.Module:
    model = tiny_model(seed)
    if method == "lora":  # LoRA dropout draws from the global torch RNG at every step
        cfg = ModelConfig(name="sam_tiny", method="lora",
                          lora=LoraConfig(r=4, dropout=0.2, targets=["encoder_qkv", "decoder_mlp"]))
        model = apply_method(model, cfg)
    return model


@pytest.mark.parametrize("grad_accum, stop_at, method", [(1, 4, "full"), (2, 4, "full"),
                                                         (1, 5, "lora")])
def test_resume_is_exact(tmp_path: Path, grad_accum: int, stop_at: int, method: str) -> None:
    # 9 slices / batch 3 = 3 micro-batches per epoch. accum 1: 3 steps per epoch, stop at step 4
    # is mid-epoch 2. accum 2: 2 steps per epoch (2 + 1 micro-batches), step 4 ends epoch 2.
    cfg = tiny_cfg(grad_accum=grad_accum, **RESUME_CFG)
    train_data, val_data = _data()
    full = _model(method)
    whole = train(full, train_data, val_data, cfg, tmp_path / "whole")

    first = _model(method)
    part = train(first, train_data, val_data, cfg.model_copy(update={"max_steps": stop_at}),
                 tmp_path / "split")
    assert part.stopped == "max_steps" and part.steps == stop_at
    assert not weights_equal(first, full)

    # Any starting weights for what trains (the checkpoint replaces them); frozen LoRA base
    # weights come from the same build, as they would from the pretrained file.
    resumed_model = _model(method, seed=123 if method == "full" else 0)
    resumed = train(resumed_model, train_data, val_data, cfg, tmp_path / "split",
                    resume=part.last_checkpoint)
    assert resumed.steps == whole.steps == 3 * (3 if grad_accum == 1 else 2)
    assert weights_equal(resumed_model, full)  # bit for bit
    assert resumed.best_val_dice == whole.best_val_dice
    assert _comparable(resumed.history) == _comparable(whole.history)
    a, b = ckpt.load_state(whole.last_checkpoint), ckpt.load_state(resumed.last_checkpoint)
    assert torch.equal(a["rng"]["generators"]["prompts"], b["rng"]["generators"]["prompts"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_resume_with_another_config_is_refused_before_anything_changes(tmp_path: Path) -> None:
    train_data, _ = _data()
    cfg = tiny_cfg(epochs=1)
    run = train(tiny_model(), train_data, None, cfg, tmp_path)
    before = _snapshot(tmp_path)
    model = tiny_model(seed=7)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    other = tiny_cfg(epochs=1, optimizer_kwargs={"lr": 5e-4}, loss="dice_focal")
    with pytest.raises(ckpt.ConfigMismatchError) as err:
        train(model, train_data, None, other, tmp_path, resume=run.last_checkpoint)
    message = str(err.value)
    old_hash = ckpt.load_state(run.last_checkpoint)["config_hash"]
    new_hash = ckpt.config_hash({"train": other.model_dump(mode="json")})
    assert old_hash in message and new_hash in message and old_hash != new_hash
    assert "train.loss" in message and "train.optimizer_kwargs" in message
    assert _snapshot(tmp_path) == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    # A longer run (epochs, max_steps, workers are not hashed) may resume; another model may not.
    longer = tiny_cfg(epochs=2, num_workers=0, max_steps=100, cache_dir=tmp_path / "elsewhere")
    assert ckpt.config_hash({"train": longer.model_dump(mode="json")}) == old_hash
    with pytest.raises(ckpt.ConfigMismatchError, match="differing keys: model"):
        train(tiny_model(), train_data, None, cfg, tmp_path, resume=run.last_checkpoint,
              run_config={"model": {"name": "mobile_sam_tiny"}})


def test_checkpoint_is_plain_and_rebuilds_the_trained_model(tmp_path: Path) -> None:
    model = tiny_model()
    model.image_encoder.requires_grad_(False)  # frozen parts are not stored
    train(model, Blobs(3, instances=1), None, tiny_cfg(epochs=1), tmp_path)
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("image_encoder.") for k in state["model"])
    assert any(k.startswith("mask_decoder.") for k in state["model"])
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch",
                          "best_metric", "bad_validations", "config", "config_hash", "history"}
    rebuilt = tiny_model()  # same build → same frozen encoder; the checkpoint brings the rest
    rebuilt.image_encoder.requires_grad_(False)
    ckpt.load_model_weights(rebuilt, state["model"])
    assert weights_equal(rebuilt, model)
    with pytest.raises(ValueError, match="trainable parameters missing"):
        ckpt.load_model_weights(tiny_model(), state["model"])  # encoder trainable there
    assert not list(tmp_path.glob(".*tmp"))


def test_rng_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(5)
    saved = ckpt.rng_state({"prompts": gen})
    draws = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    random.seed(99), np.random.seed(99), torch.manual_seed(99), gen.manual_seed(99)
    ckpt.set_rng_state(saved, {"prompts": gen})
    assert (random.random(), np.random.rand(), torch.rand(1).item(),
            torch.rand(1, generator=gen).item()) == draws
    with pytest.raises(KeyError, match="no state for generator 'data'"):
        ckpt.set_rng_state(saved, {"data": torch.Generator()})


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ckpt.save_state({"version": ckpt.CHECKPOINT_VERSION, "step": 1}, tmp_path / "last.pt")
    good = path.read_bytes()

    def broken(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_state({"version": ckpt.CHECKPOINT_VERSION, "step": 2}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["last.pt"]
    with pytest.raises(ValueError, match="not a samtune training checkpoint"):
        torch_save = monkeypatch.undo() or torch.save
        torch_save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
        ckpt.load_state(tmp_path / "other.pt")
