"""Corrective-click rounds in training: the clicks land where the rule says, each round sees the
previous logits, every round's loss counts, and a run with cached embeddings never re-encodes."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from samtune.config import PromptConfig
from samtune.models.base import Embeddings, PromptableModel, Prompts
from samtune.train.interactive import click_rounds
from samtune.train.loop import train
from samtune.train.step import predict_instances
from tests.train.test_loop import Blobs, tiny_cfg, tiny_model, weights_equal


class Recorder(PromptableModel):
    """Predicts the left half of the image for round 0, then exactly what its clicks ask for
    is recorded; its logits never change, so every click answers the same error."""

    family = "sam"

    def __init__(self, size: int = 16):
        super().__init__(size, (0, 0, 0), (1, 1, 1))
        self.seen: list[Prompts] = []

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        self.seen.append(prompts)
        n, s = len(prompts), self.img_size
        low = torch.full((n, 1, s, s), -5.0)
        low[..., : s // 2] = 5.0
        return low, torch.zeros(n, 1)

    def upscale(self, low: torch.Tensor) -> torch.Tensor:
        return low


def test_clicks_follow_the_rule_in_xy_and_feed_the_previous_logits() -> None:
    model = Recorder()
    gt = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt[0, 4:12, 10:14] = True  # missed on the right (32 px) …
    gt[0, :6, :8] = True  # … and rows 6–15 of the predicted left half are false positive
    emb = Embeddings(torch.zeros(1, 1, 1, 1))
    low, iou = model.decode(emb, 0, Prompts(boxes=torch.tensor([[10., 4., 13., 11.]])))
    out = click_rounds(model, emb, [(0, model.seen[0])], [(low, iou)], [gt], 2, False)
    assert len(out) == 2 and all(len(r) == 1 for r in out)
    first, second = model.seen[1], model.seen[2]
    # the false positive (80 px) is larger than the missed 32 px: a negative click at its
    # centre, the first distance maximum (row 9, col 3; 4 px from every border) as (x, y)
    assert first.point_labels.tolist() == [[0]]
    assert first.points[0, 0].tolist() == [3.0, 9.0]
    assert torch.equal(first.boxes, model.seen[0].boxes)  # round 0's box stays
    assert torch.equal(first.mask_inputs, low)  # previous low-res logits as the mask prompt
    assert second.points.shape == (1, 2, 2) and second.point_labels.tolist() == [[0, 0]]


def test_every_round_counts_and_the_embedding_is_computed_once() -> None:
    model = tiny_model()
    data = Blobs(2, instances=2)
    batch = {"images": torch.stack([it["image"] for it in data.items]),
             "masks": [it["masks"] for it in data.items]}
    emb = model.encode(model.normalize(batch["images"]))
    gen = torch.Generator().manual_seed(0)
    cfg = PromptConfig(click_rounds=3)
    logits, iou, target = predict_instances(model, emb, batch, cfg, gen, torch.device("cpu"),
                                            max_instances=None)
    assert logits.shape[0] == 4 * 4 and target.shape[0] == 16 and iou.shape == (16, 1)
    assert torch.equal(target[:4], target[4:8])
    last = PromptConfig(click_rounds=3, click_loss="last")
    logits, _, _ = predict_instances(model, emb, batch, last, torch.Generator().manual_seed(0),
                                     torch.device("cpu"), max_instances=None)
    assert logits.shape[0] == 4


def test_training_with_click_rounds_and_cached_embeddings(tmp_path: Path) -> None:
    model, start = tiny_model(), tiny_model()
    model.image_encoder.requires_grad_(False)
    data = Blobs(4, instances=2)
    with torch.no_grad():
        embs = model.encode(model.normalize(torch.stack([it["image"] for it in data.items])))
    for i, it in enumerate(data.items):
        it["embeddings"] = embs.select(i)

    def no_encoder(images: torch.Tensor) -> None:
        raise AssertionError("the encoder ran although embeddings were given")

    model.encode = no_encoder  # type: ignore[method-assign]
    result = train(model, data, None, tiny_cfg(epochs=1, prompts=PromptConfig(
        click_rounds=2, multimask=True)), tmp_path)
    del model.encode
    assert result.stopped == "completed" and math.isfinite(result.history[0]["loss"])
    assert not weights_equal(model, start)
