"""Interactive evaluation on the slice grid: Dice after N simulated clicks (NoC protocol, as
SAM, SAM-Med2D and micro-sam evaluate).

Per slice, every ground-truth instance (`gt_prompts.gt_instances`) is clicked alone: click 1 is
a positive click at the centre of the instance (`clicks.next_click` of an empty prediction),
decoded with multimask output and the best mask by predicted IoU kept, as SAM's predictor is
used for one ambiguous click; each next click corrects the largest error of the previous mask
(on the slice grid, where the ground truth lives), with all clicks so far and the previous
low-res logits as the mask prompt, single-mask output. The rule is deterministic. One image
embedding serves every click of a slice.

    maps = predict_with_clicks(predictor, grid, instances, 10)   # N → slice → label map
"""
from __future__ import annotations

import numpy as np
import torch

from samtune.config import PromptConfig
from samtune.data.render import SliceGrid
from samtune.inference.clicks import append_clicks, next_click
from samtune.inference.gt_prompts import Instances, embedded_slices
from samtune.inference.predictor import SlicePredictor
from samtune.inference.reassemble import label_slice
from samtune.models.base import Prompts
from samtune.models.prompts import select_best

__all__ = ["predict_with_clicks", "click_slice"]


def click_slice(predictor: SlicePredictor, emb: object, b: int, gt: np.ndarray,
                n_clicks: int) -> list[np.ndarray]:
    """K instances K×S×S (slice grid) of slice `b` of the embedded batch → the K×S×S
    probabilities after 1…n_clicks clicks (a list of n_clicks arrays). An instance predicted
    exactly gets padding points from then on (its mask stays as it is)."""
    gt = np.asarray(gt, bool)
    if predictor.is_oracle:  # the oracle is exact from the first click
        return [predictor.decode(None, b, gt, _NO_PROMPT, _GEN)] * n_clicks
    prompts, low, out = Prompts(), None, []
    pred = np.zeros_like(gt)
    for k in range(n_clicks):
        clicks = [next_click(p, t) for p, t in zip(pred, gt)]
        prompts = append_clicks(prompts, clicks, xy=True)
        prompts.mask_inputs = low
        model_prompts = predictor.to_model_prompts(_to(prompts, predictor.device))
        logits, iou = predictor.model.decode(emb, b, model_prompts, multimask=k == 0)
        if logits.shape[1] > 1:
            logits, _ = select_best(logits, iou)
        low = logits
        probs = predictor.to_slice_grid(logits).cpu().numpy()
        pred = probs > 0.5
        out.append(probs)
    return out


def predict_with_clicks(predictor: SlicePredictor, grid: SliceGrid,
                        instances: dict[int, Instances], n_clicks: int, *,
                        batch_size: int = 8) -> dict[int, dict[int, np.ndarray]]:
    """Every slice holding instances, clicked `n_clicks` times per instance → {N (1…n_clicks):
    {canonical slice: S×S label map after N clicks}}."""
    predictor = predictor.on(grid)
    out: dict[int, dict[int, np.ndarray]] = {n: {} for n in range(1, n_clicks + 1)}
    with torch.inference_mode():
        for emb, b, k in embedded_slices(predictor, grid, sorted(instances), batch_size):
            inst = instances[k]
            for n, probs in enumerate(click_slice(predictor, emb, b, inst.masks, n_clicks),
                                      start=1):
                out[n][k] = label_slice(probs, inst.labels, predictor.slice_size)
    return out


def _to(prompts: Prompts, device: torch.device) -> Prompts:
    move = (lambda t: None if t is None else t.to(device))  # noqa: E731
    return Prompts(move(prompts.boxes), move(prompts.points), move(prompts.point_labels),
                   move(prompts.mask_inputs))


_GEN = torch.Generator().manual_seed(0)  # the oracle draws nothing from it
_NO_PROMPT = PromptConfig()
