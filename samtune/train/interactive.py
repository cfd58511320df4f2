"""Interactive training rounds (SAM's own training, SAM-Med2D, SAM-Med3D): after the first
prompt, each round adds one corrective click from the largest error region of the previous
round's mask (`samtune.inference.clicks.next_click`) and feeds that round's low-res logits back
as the mask prompt. The image embedding is computed once (or read from the embedding cache) and
serves every round; only the prompt encoder and the mask decoder run again.

The click of a round is computed from the previous prediction without gradient (it is a data
choice, as upstream detaches its previous masks); the decode of every round keeps its graph, so
the loss of every round trains the model.
"""
from __future__ import annotations

import torch

from samtune.inference.clicks import append_clicks, next_click
from samtune.models.base import Embeddings, PromptableModel, Prompts
from samtune.models.pooled_decode import decode_many
from samtune.models.prompts import select_best

__all__ = ["click_rounds"]


def click_rounds(model: PromptableModel, emb: Embeddings, items: list[tuple[int, Prompts]],
                 first: list[tuple[torch.Tensor, torch.Tensor]], targets: list[torch.Tensor],
                 rounds: int, multimask: bool) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Rounds 1…`rounds` after round 0. items: (b, prompts of image b's N_i instances); first:
    round 0's (low N_i×M×s…, iou N_i×M) per item; targets: the items' ground truth (N_i×S×S or
    N_i×S×S×S bool, the model's input grid) → per round, one (low-res logits, IoU) per item,
    every item's instances decoded together (`decode_many`). The click is taken from the best of
    M by predicted IoU, whose low-res logits become the next mask prompt. An instance already
    exact gets a padding point (label -1) and keeps being decoded."""
    xy = getattr(model, "spatial_dims", 2) == 2
    truths = [t.bool().cpu().numpy() for t in targets]
    prompts = [p for _, p in items]
    prev, out = first, []
    for _ in range(rounds):
        for i, ((low, iou), truth) in enumerate(zip(prev, truths)):
            best = (select_best(low, iou)[0] if low.shape[1] > 1 else low).detach()
            with torch.no_grad():
                pred = (model.upscale(best.float())[:, 0] > 0).cpu().numpy()
            prompts[i] = append_clicks(prompts[i], [next_click(p, t) for p, t in
                                                    zip(pred, truth)], xy=xy)
            prompts[i].mask_inputs = best.to(low.dtype)
        prev = decode_many(model, emb, [(b, p) for (b, _), p in zip(items, prompts)], multimask)
        out.append(prev)
    return out
