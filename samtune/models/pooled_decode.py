"""Every instance of a batch decoded in one mask-decoder call.

`PromptableModel.decode` takes the prompts of one image, as the upstream decoders do (SAM's
MaskDecoder repeats one image embedding per prompt). A batch of B images then costs B decoder
calls of a few instances each. `decode_many` pools the instances of all images whose prompts
have the same structure (boxes or not, the same number of points, mask prompt or not: the
decoder's token count must agree) into one call of the family's `decode_pooled`, which feeds
each instance its own image embedding. Families without `decode_pooled` (HQ-SAM, SAM-Med3D)
and groups of one image fall back to `decode` per image. Results come back per item, in order,
and equal one `decode` per image (tests/models/test_pooled_decode.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from samtune.models.base import Embeddings, PromptableModel, Prompts

__all__ = ["decode_many", "concat_prompts"]

Item = tuple[int, Prompts]  # (image index b in the batch, that image's prompts)


def _structure(prompts: Prompts) -> tuple:
    points = None if prompts.points is None else int(prompts.points.shape[1])
    return prompts.boxes is None, points, prompts.mask_inputs is None


def concat_prompts(prompts: Sequence[Prompts]) -> Prompts:
    """Prompts of the same structure → one Prompts of all their instances, in order."""
    def cat(name: str) -> torch.Tensor | None:
        parts = [getattr(p, name) for p in prompts]
        return None if parts[0] is None else torch.cat(parts)

    return Prompts(boxes=cat("boxes"), points=cat("points"), point_labels=cat("point_labels"),
                   mask_inputs=cat("mask_inputs"))


def decode_many(model: PromptableModel, emb: Embeddings, items: Sequence[Item],
                multimask: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(b, prompts of image b), …] → [(low-res logits N_i×M×s×s, IoU N_i×M), …] per item, as
    `model.decode(emb, b, prompts, multimask)` gives them, with as few decoder calls as the
    prompt structures allow (one when they all agree)."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(items)
    pooled = getattr(model, "decode_pooled", None)
    groups: dict[tuple, list[int]] = {}
    for i, (_, prompts) in enumerate(items):
        if len(prompts) == 0 or pooled is None:
            out[i] = model.decode(emb, items[i][0], prompts, multimask)
        else:
            groups.setdefault(_structure(prompts), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            b, prompts = items[members[0]]
            out[members[0]] = model.decode(emb, b, prompts, multimask)
            continue
        sizes = [len(items[i][1]) for i in members]
        device = emb.image.device
        index = torch.cat([torch.full((n,), items[i][0], dtype=torch.long, device=device)
                           for i, n in zip(members, sizes)])
        logits, iou = pooled(emb, index, concat_prompts([items[i][1] for i in members]),
                             multimask)
        for i, low, score in zip(members, logits.split(sizes), iou.split(sizes)):
            out[i] = (low, score)
    return out  # type: ignore[return-value]
