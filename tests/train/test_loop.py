"""The training loop on sam_tiny (64 px) and synthetic blob slices."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from samtune.config import ModelConfig, PromptConfig, TrainConfig
from samtune.models.base import PromptableModel
from samtune.models.fast_attention import use_sdpa
from samtune.models.registry import build_model
from samtune.train.data import collate
from samtune.train.loop import train
from samtune.train.state import load_model_weights, load_state, model_weights
from samtune.train.step import batch_order, dice_per_instance

SIZE = 64


class Blobs(Dataset):
    """n slices of bright discs on a dark background, as `SliceDataset` items.

    instances: per slice, a fixed count or None for a random 0–2 (so some slices are empty)."""

    def __init__(self, n: int, seed: int = 0, instances: int | None = None, size: int = SIZE):
        gen = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.items = []
        for i in range(n):
            k = instances if instances is not None else int(torch.randint(0, 3, (1,), generator=gen))
            image, masks = torch.full((size, size), 30.0), []
            for _ in range(k):
                cx, cy = torch.randint(size // 5, 4 * size // 5, (2,), generator=gen).tolist()
                r = int(torch.randint(size // 12, size // 6, (1,), generator=gen))
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                image[mask] = 200.0
                masks.append(mask)
            self.items.append({
                "image": image.expand(3, -1, -1).clone(),
                "masks": torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool),
                "labels": torch.ones(k, dtype=torch.int64), "image_id": i, "case_id": f"c{i // 4}",
                "key": f"blobs{seed}/{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def tiny_model(seed: int = 0, size: int = SIZE) -> PromptableModel:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="sam_tiny", img_size=size))


def tiny_cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"epochs": 2, "batch_size": 4, "device": "cpu",
                            "optimizer_kwargs": {"lr": 1e-3}}
    return TrainConfig(**{**base, **kw})


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_reports(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, float], int]] = []
    model = tiny_model()
    cfg = tiny_cfg(epochs=6, checkpoint_every=3)
    result = train(model, Blobs(32, instances=1), Blobs(8, seed=1, instances=1), cfg, tmp_path,
                   callback=lambda e, m, s: events.append((e, m, s)))
    assert result.stopped == "completed" and result.epochs == 6 and result.steps == 6 * 8
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    dices = [h["val_dice"] for h in result.history]  # measured: 0 → 0.77
    assert result.best_val_dice == max(dices) and result.best_val_dice > dices[0] + 0.5
    epoch_events = [e for e in events if e[0] == "epoch"]
    assert [e[2] for e in epoch_events] == [8, 16, 24, 32, 40, 48]
    for key in ("loss", "seg_loss", "iou_loss", "val_dice", "lr", "samples_per_s", "peak_memory_mb"):
        assert all(math.isfinite(e[1][key]) for e in epoch_events), key
    assert epoch_events[0][1]["peak_memory_mb"] > 50 and epoch_events[0][1]["lr"] == 1e-3
    assert events[-1][0] == "end" and events[-1][1]["best_val_dice"] == result.best_val_dice
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "epoch_0003.pt",
                                                           "epoch_0006.pt", "last.pt"]
    best = load_state(result.best_checkpoint)  # weights_only=True inside
    assert best["best_metric"] == result.best_val_dice
    assert best["epoch"] == dices.index(max(dices)) + 1
    last = load_state(result.last_checkpoint)
    assert last["step"] == 48 and last["epoch"] == 6 and last["batch_in_epoch"] == 0
    assert all(torch.equal(v, model_weights(model)[k]) for k, v in last["model"].items())


def test_max_steps_caps_and_batch_order_is_a_permutation(tmp_path: Path) -> None:
    result = train(tiny_model(), Blobs(12), None, tiny_cfg(epochs=5, max_steps=4), tmp_path)
    assert result.stopped == "max_steps" and result.steps == 4 and result.epochs == 1
    assert result.best_val_dice is None and result.best_checkpoint is None
    state = load_state(tmp_path / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 1)  # mid-epoch position
    order = batch_order(10, 4, seed=3, epoch=2)
    assert [len(b) for b in order] == [4, 4, 2] and sorted(sum(order, [])) == list(range(10))
    assert order == batch_order(10, 4, seed=3, epoch=2) != batch_order(10, 4, seed=3, epoch=3)


def test_early_stopping_on_a_flat_metric(tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=10, patience=2, optimizer="SGD", optimizer_kwargs={"lr": 0.0})
    result = train(tiny_model(), Blobs(4, instances=1), Blobs(4, seed=1, instances=1), cfg, tmp_path)
    assert result.stopped == "early_stopping" and result.epochs == 3  # best, then 2 flat
    assert len({h["val_dice"] for h in result.history}) == 1
    assert "in 2 validations" in result.message


class NaNOnEpoch:
    """Ready batches (an iterable with set_epoch); images of `bad_epoch` are NaN."""

    def __init__(self, data: Dataset, batch_size: int, bad_epoch: int):
        self.batches = [collate([data[i] for i in range(j, min(j + batch_size, len(data)))])
                        for j in range(0, len(data), batch_size)]
        self.epoch, self.bad_epoch = 0, bad_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            yield {**b, "images": b["images"] * math.nan} if self.epoch == self.bad_epoch else b


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    data = NaNOnEpoch(Blobs(8, instances=1), 4, bad_epoch=1)
    result = train(tiny_model(), data, None, tiny_cfg(epochs=3), tmp_path)
    assert result.stopped == "nan" and result.steps == 2 and result.epochs == 1
    assert "loss is nan at step 3 (epoch 2, batch 1)" in result.message
    assert str(tmp_path / "last.pt") in result.message
    state = load_state(result.last_checkpoint)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_huge_lr_stops_with_finite_last_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=3, grad_clip=None, optimizer="SGD", optimizer_kwargs={"lr": 1e10})
    result = train(tiny_model(), Blobs(8, instances=1), None, cfg, tmp_path)
    # step 1 blows the weights up, step 2's loss is NaN; last.pt is the one written at the start
    assert result.stopped == "nan" and result.steps == 1
    assert result.message.startswith("loss is nan at step 2 (epoch 1, batch 2); stopped")
    state = load_state(result.last_checkpoint)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["step"] == 0 and weights_equal(tiny_model(), _rebuilt(state))


def _rebuilt(state: dict[str, Any]) -> PromptableModel:
    model = tiny_model(seed=1)
    load_model_weights(model, state["model"])
    return model


def _one_step(data: Dataset, batch_size: int, grad_accum: int, tmp: Path) -> PromptableModel:
    model = tiny_model()
    cfg = tiny_cfg(epochs=1, batch_size=batch_size, grad_accum=grad_accum, optimizer="SGD",
                   optimizer_kwargs={"lr": 0.5}, grad_clip=None)
    train(model, data, None, cfg, tmp)
    return model


def test_grad_accumulation_matches_a_double_batch(tmp_path: Path) -> None:
    # One instance per slice: the two half-batches' means weigh instances equally → same step.
    data = Blobs(4, instances=1)
    big = _one_step(data, 4, 1, tmp_path / "a")
    accum = _one_step(data, 2, 2, tmp_path / "b")
    start = tiny_model()
    sb, sa, s0 = big.state_dict(), accum.state_dict(), start.state_dict()
    moved = max((sb[k] - s0[k]).abs().max().item() for k in sb)
    diff = max((sb[k] - sa[k]).abs().max().item() for k in sb)
    assert moved > 1e-3 and diff < 1e-5 * max(moved, 1.0)
    # Unequal instance counts (2 + 1 | 1 + 1 … ): each half-batch's mean counts once, so the
    # step differs from the pooled mean of the double batch (documented in loop.py).
    uneven = Blobs(4, seed=5, instances=None)
    assert sorted(len(it["masks"]) for it in uneven.items) != [1, 1, 1, 1]
    big, accum = _one_step(uneven, 4, 1, tmp_path / "c"), _one_step(uneven, 2, 2, tmp_path / "d")
    assert not weights_equal(big, accum)


def test_cached_embeddings_replace_the_frozen_encoder(tmp_path: Path) -> None:
    data = Blobs(4, instances=2)
    live = tiny_model()
    live.image_encoder.requires_grad_(False)
    train(live, data, None, tiny_cfg(epochs=1), tmp_path / "live")

    cached_model = tiny_model()
    cached_model.image_encoder.requires_grad_(False)
    use_sdpa(cached_model)  # as the loop encodes (train.attention: sdpa)
    with torch.no_grad():
        images = torch.stack([it["image"] for it in data.items])
        embs = cached_model.encode(cached_model.normalize(images))
    use_sdpa(cached_model, False)
    cached = Blobs(4, instances=2)
    for i, it in enumerate(cached.items):
        it["embeddings"] = embs.select(i)

    def no_encoder(images: torch.Tensor) -> None:
        raise AssertionError("the encoder ran although embeddings were given")

    cached_model.encode = no_encoder  # type: ignore[method-assign]
    train(cached_model, cached, None, tiny_cfg(epochs=1), tmp_path / "cached")
    del cached_model.encode
    sl, sc = live.state_dict(), cached_model.state_dict()
    assert all(torch.allclose(sl[k], sc[k], atol=1e-6) for k in sl)  # batching may round apart
    assert not weights_equal(live, tiny_model())


@pytest.mark.parametrize("prompts", [
    PromptConfig(multimask=True, positive_points=2, negative_points=1),
    PromptConfig(box=False, positive_points=1, mask_prompt=True, max_instances=1),
])
def test_prompt_variants_train(tmp_path: Path, prompts: PromptConfig) -> None:
    model, start = tiny_model(), tiny_model()
    result = train(model, Blobs(4, instances=2), Blobs(2, seed=1, instances=2),
                   tiny_cfg(epochs=1, prompts=prompts), tmp_path)
    assert result.stopped == "completed" and math.isfinite(result.history[0]["loss"])
    assert 0.0 <= result.best_val_dice <= 1.0 and not weights_equal(model, start)


def test_amp_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        train(tiny_model(), Blobs(2), None, tiny_cfg(amp="fp16"), tmp_path)
    with pytest.raises(ValueError, match="no val data"):
        train(tiny_model(), Blobs(2), None, tiny_cfg(scheduler="ReduceLROnPlateau"), tmp_path)
    frozen = tiny_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(frozen, Blobs(2), None, tiny_cfg(), tmp_path)
    result = train(tiny_model(), Blobs(4, instances=1), None, tiny_cfg(epochs=1, amp="bf16"), tmp_path)
    assert result.stopped == "completed" and math.isfinite(result.history[0]["loss"])


def test_dice_per_instance_hand_computed() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    target[0, :2, :2] = True  # 4 px
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, :2, :1] = 1.0  # 2 px inside: Dice 2·2/(2+4)
    assert dice_per_instance(logits, target).tolist() == pytest.approx([2 / 3, 1.0])
