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
from samtune.models.prompts import select_best

__all__ = ["click_rounds"]


def click_rounds(model: PromptableModel, emb: Embeddings, b: int, prompts: Prompts,
                 low: torch.Tensor, iou: torch.Tensor, targets: torch.Tensor, rounds: int,
                 multimask: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rounds 1…`rounds` after round 0's (low N×M×s…, iou N×M) for the N instances of image `b`
    with ground truth `targets` (N×S×S or N×S×S×S bool, the model's input grid) → each round's
    (low-res logits N×M×s…, IoU N×M). The click is taken from the best of M by predicted IoU,
    whose low-res logits become the next mask prompt. An instance already exact gets a padding
    point (label -1) and keeps being decoded."""
    xy = getattr(model, "spatial_dims", 2) == 2
    truth = targets.bool().cpu().numpy()
    out = []
    for _ in range(rounds):
        best = select_best(low, iou)[0] if low.shape[1] > 1 else low
        best = best.detach()
        with torch.no_grad():
            pred = (model.upscale(best.float())[:, 0] > 0).cpu().numpy()
        clicks = [next_click(p, t) for p, t in zip(pred, truth)]
        prompts = append_clicks(prompts, clicks, xy=xy)
        prompts.mask_inputs = best.to(low.dtype)
        low, iou = model.decode(emb, b, prompts, multimask)
        out.append((low, iou))
    return out
