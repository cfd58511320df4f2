"""Prediction prompted from the ground truth, as evaluation does it: every connected component of
every class on every slice is an instance (`gt_instances`; no cap, no minimum area:
convert.min_component_area filters training data only), each prompted and decoded against its
slice's one embedding (`predict_with_gt_prompts`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from samtune.config import ConvertConfig, PromptConfig
from samtune.data.cases import Volume
from samtune.data.convert import slice_annotations
from samtune.data.render import SliceGrid
from samtune.inference.predictor import SlicePredictor
from samtune.inference.reassemble import label_slice
from samtune.models.base import Embeddings


@dataclass
class Instances:
    """Ground-truth instances of one canonical slice on the slice grid: masks K×S×S bool,
    labels K (class ids)."""

    masks: np.ndarray
    labels: np.ndarray


def gt_instances(vol: Volume, cfg: ConvertConfig, classes: Sequence[int], grid: SliceGrid
                 ) -> dict[int, Instances]:
    """Canonical slice index → its ground-truth instances, exactly as `convert` annotates them
    (one per 8-connected component per class), except that no component is dropped, however
    small: cfg.min_component_area filters the training export, never the evaluation."""
    if vol.label is None:
        return {}
    anns, _ = slice_annotations(vol, cfg, list(classes), grid.geometry, min_area=0)
    out = {}
    for k, items in anns.items():
        rles = [{"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"]}
                for a in items]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        out[k] = Instances(masks, np.array([a["category_id"] for a in items], dtype=np.int64))
    return out


def predict_with_gt_prompts(predictor: SlicePredictor, grid: SliceGrid,
                            instances: dict[int, Instances], prompt_cfg: PromptConfig, *,
                            batch_size: int = 8, seed: int = 0) -> dict[int, np.ndarray]:
    """Every slice holding ground-truth instances, prompted from them (one box / point set per
    instance, each decoded against its slice's embedding) → canonical slice → S×S label map.
    `batch_size` slices per encoder call, and their instances in one decoder call.
    Prompt jitter (prompt_cfg.bbox_shift) is drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    predictor = predictor.on(grid)
    out: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for emb, batch in encoded_batches(predictor, grid, sorted(instances), batch_size):
            probs = predictor.decode_slices(
                emb, [(b, instances[k].masks) for b, k in enumerate(batch)], prompt_cfg,
                generator)
            for k, p in zip(batch, probs):
                out[k] = label_slice(p, instances[k].labels, predictor.slice_size)
    return out


def encoded_batches(predictor: SlicePredictor, grid: SliceGrid, keys: Sequence[int],
                    batch_size: int) -> Iterator[tuple[Embeddings | None, list[int]]]:
    """The canonical slices `keys` encoded `batch_size` at a time → (the batch's embeddings,
    its slice keys) (embeddings None for the oracle)."""
    for start in range(0, len(keys), batch_size):
        batch = list(keys[start:start + batch_size])
        yield predictor.encode(grid.images(batch)), batch


def embedded_slices(predictor: SlicePredictor, grid: SliceGrid, keys: Sequence[int],
                    batch_size: int) -> Iterator[tuple[Embeddings | None, int, int]]:
    """`encoded_batches` a slice at a time: (the batch's embeddings, index b in it, key)."""
    for emb, batch in encoded_batches(predictor, grid, keys, batch_size):
        for b, k in enumerate(batch):
            yield emb, b, k
