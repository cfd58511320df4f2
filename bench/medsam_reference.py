"""The reference training loop of bench/train.py: one epoch the way MedSAM's
`train_one_gpu.py` (bowang-lab/MedSAM) trains, written here so both run in one process on the
same slices.

MedSAM's dataset yields one sample per (slice, instance) pair: the slice, that instance's mask
and its box (tight box + a random shift of up to `bbox_shift` px per side). Each step takes a
batch of samples: image encoder on the batch's images (a slice with k instances is encoded k
times over the epoch), prompt encoder under no_grad (frozen), mask decoder per sample
(upstream's `MaskDecoder` takes one image per call; MedSAM's fork batches the same arithmetic),
logits upsampled to the input size, loss Dice(sigmoid) + BCE-with-logits (mean), AdamW over the
image encoder + mask decoder, fp32 (bf16 autocast where samtune runs bf16). The loss is
samtune's `dice_ce` without the IoU term (MedSAM's DiceLoss also squares the prediction; that
changes nothing of the cost), so both loops do the same work per instance.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def instance_pairs(data: Any) -> list[tuple[int, int]]:
    """(slice index, instance index) for every instance of `data`: MedSAM's samples."""
    return [(i, k) for i in range(len(data)) for k in range(len(data[i]["masks"]))]


def medsam_box(mask: np.ndarray, bbox_shift: int, rng: np.random.Generator) -> np.ndarray:
    """MedSAM's box of a H×W mask: tight box, each side moved out by 0…bbox_shift px."""
    ys, xs = np.where(mask > 0)
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    x0 = max(0, x0 - rng.integers(0, bbox_shift + 1))
    x1 = min(w, x1 + rng.integers(0, bbox_shift + 1))
    y0 = max(0, y0 - rng.integers(0, bbox_shift + 1))
    y1 = min(h, y1 + rng.integers(0, bbox_shift + 1))
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def medsam_forward(model: Any, images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """MedSAM.forward: B×3×S×S normalised, B×4 boxes → B×1×S×S logits."""
    embedding = model.image_encoder(images)  # B×256×S/16×S/16
    with torch.no_grad():
        box = torch.as_tensor(boxes, dtype=torch.float32, device=images.device)[:, None, :]
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
    pe = model.prompt_encoder.get_dense_pe()
    low = torch.cat([model.mask_decoder(image_embeddings=embedding[i:i + 1], image_pe=pe,
                                        sparse_prompt_embeddings=sparse[i:i + 1],
                                        dense_prompt_embeddings=dense[i:i + 1],
                                        multimask_output=False)[0]
                     for i in range(len(images))])
    return F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)


def reference_optimizer(model: Any) -> torch.optim.Optimizer:
    """MedSAM's AdamW (lr 1e-4, weight decay 0.01) over image encoder + mask decoder."""
    model.prompt_encoder.requires_grad_(False)
    params = list(model.image_encoder.parameters()) + list(model.mask_decoder.parameters())
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def reference_epoch(model: Any, data: Any, pairs: Sequence[tuple[int, int]], batch_size: int,
                    norm: Callable[[torch.Tensor], torch.Tensor],
                    optimizer: torch.optim.Optimizer, device: torch.device, amp: str,
                    rng: np.random.Generator, bbox_shift: int = 5) -> float:
    """One epoch over `pairs` in a random order; → its wall-clock seconds (data loading
    included, per sample as MedSAM's NpyDataset)."""
    from monai.losses import DiceLoss

    seg_loss, ce_loss = DiceLoss(sigmoid=True, reduction="mean"), torch.nn.BCEWithLogitsLoss()
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    order = rng.permutation(len(pairs))
    sync()
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        samples = [pairs[j] for j in order[start:start + batch_size]]
        items = [data[i] for i, _ in samples]
        gt = torch.stack([it["masks"][k] for it, (_, k) in zip(items, samples)])[:, None]
        boxes = np.stack([medsam_box(g[0].numpy(), bbox_shift, rng) for g in gt])
        images = torch.stack([it["image"] for it in items]).to(device)
        gt = gt.float().to(device)
        optimizer.zero_grad()
        with cast:
            pred = medsam_forward(model, norm(images), boxes)
        pred = pred.float()
        loss = seg_loss(pred, gt) + ce_loss(pred, gt)
        loss.backward()
        optimizer.step()
    sync()
    return time.perf_counter() - t0
