"""The pieces of one training step and of validation, used by `samtune.train.loop.train`.

Batches (from `samtune.train.data.collate`) are dicts with `images` B×3×S×S (0–255), `masks`
(B tensors K_b×S×S bool), `labels`, `image_ids` and optionally `embeddings` (frozen-encoder
cache). Prompts are made on the CPU from the masks with the loop's torch.Generator, so a run
draws the same prompts on any device.
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from itertools import islice
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from samtune.config import PromptConfig, TrainConfig
from samtune.models.base import Embeddings, PromptableModel
from samtune.models.normalization import normalize
from samtune.models.pooled_decode import decode_many
from samtune.models.prompts import make_prompts, select_best
from samtune.train.data import collate
from samtune.train.embedding_cache import encoder_is_frozen
from samtune.train.interactive import click_rounds
from samtune.train.prompts3d import make_prompts_3d
from samtune.train.losses import LossParts, sam_loss

__all__ = ["batch_order", "local_part", "count_batches", "epoch_batches", "make_normalizer",
           "autocast", "embed", "predict_instances", "batch_loss", "dice_per_instance",
           "validate", "validate_sums"]
logger = logging.getLogger(__name__)

Batch = dict[str, Any]


# ------------------------------------------------------------------------------ data order
def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The slices of each batch of `epoch`: a permutation that is a pure function of (seed,
    epoch), so a resumed run needs only the epoch and the batches done to continue exactly."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def local_part(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous part of a global batch of n: sizes differ by at most one, so a
    full global batch of world_size·b gives every rank b (a short last one may give 0)."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def _local_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's part of a ready (collated) batch: tensors, lists and Embeddings sliced."""
    n = len(batch["masks"])
    part = local_part(n, rank, world_size)
    out = {}
    for key, value in batch.items():
        if isinstance(value, Embeddings):
            value = Embeddings(value.image[part], [h[part] for h in value.high_res], value.raw)
        elif isinstance(value, (torch.Tensor, list, tuple)) and len(value) == n:
            value = value[part]
        out[key] = value
    return out


EMPTY_BATCH: Batch = {"images": torch.zeros(0, 3, 0, 0), "masks": [], "labels": [],
                      "image_ids": [], "case_ids": [], "keys": []}


def count_batches(data: Dataset | Iterable[Batch], batch_size: int) -> int:
    if isinstance(data, Dataset):
        return -(-len(data) // batch_size)  # type: ignore[arg-type]
    return len(data)  # type: ignore[arg-type]


def epoch_batches(data: Dataset | Iterable[Batch], batch_size: int, seed: int, epoch: int,
                  skip: int = 0, shuffle: bool = True, num_workers: int = 0, *, rank: int = 0,
                  world_size: int = 1, pin_memory: bool = False) -> Iterator[Batch]:
    """This rank's batches of one epoch from the `skip`-th on.

    A map-style Dataset (items as `SliceDataset`'s) is batched here in `batch_order` (or in
    index order without shuffle) with `collate`. Anything else is an iterable of ready batches
    used as it is (its `set_epoch(epoch)` is called when it has one): it must give the same
    batches for the same epoch for a resume to be exact; skipped batches are still loaded.

    Distributed: global batches of batch_size·world_size are formed as above and each rank
    takes its `local_part` (ready batches are sliced the same way), so N ranks see together
    exactly the slices one process sees with N times the batch. A rank whose part of a short
    last batch is empty gets `EMPTY_BATCH`.

    Loading: with `num_workers` the PNG/RLE decode (and augmentation) runs in worker processes,
    4 batches ahead each; `pin_memory` (CUDA) pins the batches for asynchronous copies."""
    if isinstance(data, Dataset):
        for obj in (data, getattr(data, "dataset", None)):  # augmentation draws per epoch
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        n, size = len(data), batch_size * world_size  # type: ignore[arg-type]
        order = batch_order(n, size, seed, epoch) if shuffle else \
            [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        local = [b[local_part(len(b), rank, world_size)] for b in order[skip:]]
        # Its own generator: creating the iterator then draws the workers' base seed from it,
        # not from the global torch RNG (which dropout uses), and the same one every resume.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
        loader = iter(DataLoader(data, batch_sampler=[b for b in local if b], collate_fn=collate,
                                 num_workers=num_workers, generator=gen, pin_memory=pin_memory,
                                 prefetch_factor=4 if num_workers else None))
        return loader if all(local) else (next(loader) if b else {**EMPTY_BATCH} for b in local)
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)  # type: ignore[union-attr]
    batches = islice(iter(data), skip, None)
    if world_size == 1:
        return batches
    return (_local_batch(b, rank, world_size) for b in batches)


# ---------------------------------------------------------------------------- forward pass
def make_normalizer(data: Any, model: PromptableModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The data's `normalization` (mean, std) if it carries one (`load_training_data`), else
    the model's own pixel mean/std."""
    for obj in (data, getattr(data, "dataset", None)):
        stats = getattr(obj, "normalization", None)
        if stats is not None:
            mean, std = stats
            return lambda images: normalize(images, mean, std)
    return model.normalize


def autocast(device: torch.device, amp: str) -> ContextManager:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def embed(model: PromptableModel, batch: Batch, norm: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device) -> Embeddings:
    """Image embeddings of the batch: the cached ones when the batch has them and the encoder
    is frozen, else `model.encode` once for the whole batch (under no_grad when frozen)."""
    frozen = encoder_is_frozen(model)
    dtype = next(model.parameters()).dtype
    if "embeddings" in batch:
        if frozen:
            return batch["embeddings"].to(device, dtype)
        logger.debug("batch carries cached embeddings but the encoder trains; encoding")
    if "images" not in batch:
        raise ValueError("the batch carries no images (items of a CachedEmbeddingDataset) and "
                         "the image encoder trains: train on the dataset itself, not its "
                         "cached form")
    images = norm(batch["images"].to(device, dtype, non_blocking=True))
    if frozen:
        with torch.no_grad():
            return model.encode(images)
    return model.encode(images)


def predict_instances(model: PromptableModel, emb: Embeddings, batch: Batch, cfg: PromptConfig,
                      generator: torch.Generator, device: torch.device, *,
                      max_instances: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt every image's instances (at most `max_instances`, a random subset drawn from
    `generator`) and decode: → logits N×M×S×S, IoU N×M, targets N×S×S bool (N = all instances
    of the batch, pooled; 0 when no image has one). With `cfg.click_rounds` K > 0 each instance
    is decoded K more times with corrective clicks (`samtune.train.interactive`) and every
    round (or the last, `cfg.click_loss`) adds its N rows, each with the instance's target."""
    groups = []  # (b, masks, prompts) of every image with instances
    for b, masks in enumerate(batch["masks"]):
        masks = masks.bool().cpu()
        if len(masks) == 0:
            continue
        if max_instances is not None and len(masks) > max_instances:
            keep = torch.randperm(len(masks), generator=generator)[:max_instances].sort().values
            masks = masks[keep]
        groups.append((b, masks, _make_prompts(masks, cfg, generator)))
    if cfg.mask_prompt and groups:  # a first pass without mask input; its logits prompt
        with torch.no_grad():       # the second
            first = decode_many(model, emb, [(b, _to(p, device)) for b, _, p in groups],
                                cfg.multimask)
        groups = [(b, masks, _make_prompts(masks, cfg, generator, prev_logits=(
            select_best(low, iou)[0] if cfg.multimask else low).float().cpu()))
            for (b, masks, _), (low, iou) in zip(groups, first)]
    items = [(b, _to(p, device)) for b, _, p in groups]
    rounds = [decode_many(model, emb, items, cfg.multimask)] if items else []
    if cfg.click_rounds and items:  # corrective clicks, the previous logits as mask prompt
        rounds += click_rounds(model, emb, items, rounds[0], [m for _, m, _ in groups],
                               cfg.click_rounds, cfg.multimask)
        rounds = rounds if cfg.click_loss == "all" else rounds[-1:]
    logits = [model.upscale(torch.cat([low for low, _ in r])) for r in rounds]
    ious = [torch.cat([iou for _, iou in r]) for r in rounds]
    targets = [torch.cat([m for _, m, _ in groups]).to(device)] * len(rounds) if rounds else []
    if not logits:
        spatial = tuple(batch["masks"][0].shape[1:])  # S×S, or S×S×S for a 3D model's crops
        m = 3 if cfg.multimask else 1
        return (torch.zeros(0, m, *spatial, device=device), torch.zeros(0, m, device=device),
                torch.zeros(0, *spatial, dtype=torch.bool, device=device))
    return torch.cat(logits), torch.cat(ious), torch.cat(targets)


def _make_prompts(masks: torch.Tensor, cfg: PromptConfig, generator: torch.Generator,
                  **kwargs: Any) -> Any:
    """2D instances (N×S×S): `make_prompts`; 3D (N×S×S×S): SAM-Med3D's points."""
    make = make_prompts_3d if masks.ndim == 4 else make_prompts
    return make(masks, cfg, generator, **kwargs)


def _to(prompts: Any, device: torch.device) -> Any:
    for name in ("boxes", "points", "point_labels", "mask_inputs"):
        t = getattr(prompts, name)
        if t is not None:
            setattr(prompts, name, t.to(device))
    return prompts


def batch_loss(model: PromptableModel, batch: Batch, cfg: TrainConfig,
               norm: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
               device: torch.device) -> tuple[LossParts | None, int]:
    """Forward one (micro-)batch → (loss parts or None when it has no instance, instances)."""
    if not any(len(m) for m in batch["masks"]):  # nothing to prompt: skip the encoder too
        return None, 0
    with autocast(device, cfg.amp):
        emb = embed(model, batch, norm, device)
        logits, iou, target = predict_instances(model, emb, batch, cfg.prompts, generator,
                                                device, max_instances=cfg.prompts.max_instances)
    if len(target) == 0:
        return None, 0
    parts = sam_loss(logits.float(), iou.float(), target, kind=cfg.loss,
                     seg_weight=cfg.seg_loss_weight, iou_weight=cfg.iou_loss_weight,
                     dice_weight=cfg.dice_weight, pixel_weight=cfg.pixel_loss_weight,
                     focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha)
    return parts, len(target)


# ------------------------------------------------------------------------------ validation
def dice_per_instance(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """N×S×S logits (> 0 is foreground) vs N×S×S bool → N Dice values; both empty → 1."""
    pred, target = (logits > 0).flatten(1), target.flatten(1)  # 2D or 3D instances
    inter = (pred & target).sum(dim=-1).float()
    total = (pred.sum(dim=-1) + target.sum(dim=-1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def validate(model: PromptableModel, data: Dataset | Iterable[Batch], cfg: TrainConfig,
             norm: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> float:
    """Mean Dice over every instance of `data` with tight ground-truth box prompts (no jitter,
    no points; the best of M by predicted IoU when multimask; 3D models: one click at each
    instance's centre). Slices without instances do not
    count (they have nothing to prompt). NaN when `data` has no instance."""
    total, count = validate_sums(model, data, cfg, norm, device)
    return total / count if count else float("nan")


def loader_workers(setting: int | str, device: torch.device, world_size: int = 1) -> int:
    """`train.num_workers` → a count: an int as given; "auto" → 0 on the CPU (workers would take
    the cores the step runs on), min(4, cores // (2·world_size)) on CUDA, at least 1."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // (2 * world_size)))


@torch.no_grad()
def validate_sums(model: PromptableModel, data: Dataset | Iterable[Batch], cfg: TrainConfig,
                  norm: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device) -> tuple[float, int]:
    """(sum of the instances' Dice, instances) of `validate`: shards of the val data add up."""
    box_only = PromptConfig(box=True, bbox_shift=0, multimask=cfg.prompts.multimask)
    if getattr(model, "spatial_dims", 2) == 3:  # points only: one click at each centre
        box_only = PromptConfig(box=False, center_point=True, multimask=cfg.prompts.multimask)
    generator = torch.Generator().manual_seed(0)  # boxes without jitter draw nothing random
    was_training = model.training
    model.eval()
    dices = []
    try:
        for batch in epoch_batches(data, cfg.batch_size, cfg.seed, 0, shuffle=False,
                                   num_workers=loader_workers(cfg.num_workers, device)):
            with autocast(device, cfg.amp):
                emb = embed(model, batch, norm, device)
                logits, iou, target = predict_instances(model, emb, batch, box_only, generator,
                                                        device, max_instances=None)
            if len(target):
                best = select_best(logits, iou)[0] if logits.shape[1] > 1 else logits
                dices.append(dice_per_instance(best[:, 0].float(), target).cpu())
    finally:
        model.train(was_training)
    if not dices:
        return 0.0, 0
    all_dices = torch.cat(dices).double()
    return float(all_dices.sum()), len(all_dices)
