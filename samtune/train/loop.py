"""The fine-tuning loop: `train(model, train_data, val_data, cfg, out_dir)`.

Reads top to bottom: set up (device, seeds, optimizer, schedule, resume) → epochs of steps
(forward, loss, backward with accumulation, clip, optimizer step, lr schedule) → per epoch:
validation Dice, early stopping, checkpoints, callback.

Checkpoints in `out_dir`: `last.pt` (written when training starts, at every epoch end and when
it stops at max_steps), `best.pt` (best val Dice), `epoch_NNNN.pt` (every `checkpoint_every`
epochs); see `samtune.train.state` for their contents. A resumed run continues exactly where the
checkpoint left off: same data order (a pure function of seed and epoch, `step.batch_order`),
same prompts (the prompt generator's state is in the checkpoint), same dropout (global RNGs
too), so on the CPU the same weights, bit for bit, as a run never interrupted. On CUDA the RNG
states are restored as well, but cuDNN/cuBLAS kernels may not be deterministic.

Gradient accumulation: each micro-batch's loss is its instances' mean, divided by the window's
micro-batch count; so `grad_accum=2, batch_size=b` equals `batch_size=2b` up to rounding when the
two halves hold as many instances, and weights the halves' instances unequally otherwise. An
accumulation window without any instance (empty slices only) skips the optimizer update but
still counts as a step (the schedule stays a function of the data position).

NaN/Inf: a non-finite loss (or gradient norm, without a GradScaler) stops the run with
`stopped="nan"` and a message naming the step, epoch and batch; nothing is saved after it, and
weights are checked finite before every save, so `last.pt` always holds the last good state.

Under torchrun (WORLD_SIZE > 1) the same loop trains data-parallel (`samtune.train.ddp`):
`batch_size` is per process, every rank passes the same `out_dir` and only rank 0 writes to it.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from samtune.config import TrainConfig
from samtune.models.base import PromptableModel
from samtune.train import ddp
from samtune.train import state as ckpt
from samtune.train.bookkeeping import all_finite, epoch_metrics, fresh_run, zero_sums
from samtune.train.optim import LRSchedule, build_optimizer, build_scheduler
from samtune.train.speedups import apply_speedups
from samtune.train.step import (batch_loss, count_batches, epoch_batches, loader_workers,
                                make_normalizer, validate_sums)

__all__ = ["TrainResult", "train"]
logger = logging.getLogger(__name__)

Callback = Callable[[str, dict[str, float], int], None]


@dataclass
class TrainResult:
    """stopped: "completed" | "early_stopping" | "max_steps" | "nan" (message says why)."""

    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_val_dice: float | None
    epochs: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "completed"
    message: str = ""


def train(model: PromptableModel, train_data: Dataset | Iterable[dict[str, Any]],
          val_data: Dataset | Iterable[dict[str, Any]] | None, cfg: TrainConfig, out_dir: Path,
          *, callback: Callback | None = None, resume: Path | None = None,
          run_config: dict[str, Any] | None = None) -> TrainResult:
    """Fine-tune `model` (its trainable parameters) and write checkpoints to `out_dir`.

    train_data / val_data: a map-style Dataset of slices (`SliceDataset`, optionally with cached
    embeddings), or an iterable of ready batches (see `step.epoch_batches`). callback(event,
    metrics, step): "epoch" after every epoch, "end" once. run_config: more of the run's config
    (e.g. {"model": …}) to store and hash with `cfg`, so resuming another model is refused.
    """
    with ddp.process_group(cfg.distributed.backend, cfg.device) as ctx:
        return _train(model, train_data, val_data, cfg, Path(out_dir), ctx, callback, resume,
                      run_config)


def _train(model: PromptableModel, train_data: Dataset | Iterable[dict[str, Any]],
           val_data: Dataset | Iterable[dict[str, Any]] | None, cfg: TrainConfig, out_dir: Path,
           ctx: ddp.DistContext, callback: Callback | None, resume: Path | None,
           run_config: dict[str, Any] | None) -> TrainResult:
    device = ddp.resolve_device(cfg.device, ctx)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA (GradScaler); on the CPU use amp 'bf16' or 'none'")
    config = {"train": cfg.model_dump(mode="json"), **(run_config or {})}
    config_hash = ckpt.config_hash(config)
    resume = resume or cfg.resume
    loaded = (ckpt.load_state(resume, config_hash, config, world_size=ctx.world_size)
              if resume else None)  # before any write

    # -- seeds: every RNG the run touches; prompt jitter has its own generator; one stream a rank
    seed = cfg.seed + ddp.SEED_STRIDE * ctx.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    prompt_rng = torch.Generator().manual_seed(seed + 1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":  # CUDA would need CUBLAS_WORKSPACE_CONFIG and slower kernels
        torch.use_deterministic_algorithms(True, warn_only=True)

    # -- model, optimizer, schedule, scaler
    model.to(device).train()
    undo_speedups = apply_speedups(model, cfg)  # attention, grad checkpointing, compile
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.optimizer_kwargs)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    n_batches = count_batches(train_data, cfg.batch_size * ctx.world_size)  # global batches
    workers = loader_workers(cfg.num_workers, device, ctx.world_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    # The schedule's length comes from `epochs`; `max_steps` only cuts the run short (so a run
    # stopped at max_steps and resumed follows the uninterrupted run's lr exactly).
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.scheduler_kwargs,
                                cfg.epochs * steps_per_epoch - cfg.warmup_steps)
    schedule = LRSchedule(optimizer, scheduler, cfg.warmup_steps)
    if schedule.on_plateau and val_data is None:
        raise ValueError("scheduler ReduceLROnPlateau steps on the val Dice, but there is no "
                         "val data")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    norm = make_normalizer(train_data, model)
    val_norm = make_normalizer(val_data, model) if val_data is not None else norm
    val_part = ddp.shard(val_data, ctx)

    run = fresh_run(config, config_hash)  # position, best metric, early stopping, history
    if loaded is not None:
        ckpt.load_model_weights(model, loaded["model"])
        optimizer.load_state_dict(loaded["optimizer"])
        schedule.load_state_dict(loaded["scheduler"])
        scaler.load_state_dict(loaded["scaler"])
        ckpt.set_rng_state(ckpt.rank_rng_state(loaded, ctx.rank), {"prompts": prompt_rng})
        run.update({k: loaded[k] for k in run if k not in ("config", "config_hash")})
        if ctx.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume, run["step"],
                        run["epoch"] + 1, run["batch_in_epoch"])
    ddp.broadcast_state(model, ctx)  # every rank starts from rank 0's weights

    def save(name: str) -> Path:
        """Rank 0 writes (every rank takes part: their RNG states are gathered)."""
        rngs = ddp.gather(ckpt.rng_state({"prompts": prompt_rng}), ctx)
        if not ctx.is_main or rngs is None:
            return out_dir / name
        state = {**run, "version": ckpt.CHECKPOINT_VERSION, "model": ckpt.model_weights(model),
                 "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rngs[0], "world_size": ctx.world_size}
        if ctx.enabled:
            state["rng_ranks"] = rngs
        return ckpt.save_state(state, out_dir / name)

    last = out_dir / "last.pt"
    best = out_dir / "best.pt" if loaded is not None and (out_dir / "best.pt").is_file() else None
    if loaded is None:
        if last.is_file() and ctx.is_main:
            logger.warning("%s exists and is replaced (resume=%s would continue that run)",
                           last, last)
        save("last.pt")
    stopped, message = "completed", ""
    try:
        while run["epoch"] < cfg.epochs and stopped == "completed":
            # ---------------------------------------------------------------- one epoch
            epoch, skip = run["epoch"], run["batch_in_epoch"]
            sums = run["epoch_sums"]
            t0, seen, lr, window_losses = time.perf_counter(), 0, schedule.lrs(run["step"])[0], 0
            batches = epoch_batches(train_data, cfg.batch_size, cfg.seed, epoch, skip,
                                    num_workers=workers, rank=ctx.rank,
                                    world_size=ctx.world_size,
                                    pin_memory=device.type == "cuda")
            bar = tqdm(batches, total=n_batches, initial=skip, leave=False,
                       disable=None if ctx.is_main else True,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}")
            for i, batch in enumerate(bar, start=skip):
                window = min(cfg.grad_accum, n_batches - i // cfg.grad_accum * cfg.grad_accum)
                parts, n = batch_loss(model, batch, cfg, norm, prompt_rng, device)
                pooled = ddp.pool_loss(parts, n, ctx, device)  # over all ranks' instances
                seen += len(batch["masks"])
                if pooled is not None:
                    if not math.isfinite(pooled.total):
                        stopped = "nan"
                        message = (f"loss is {pooled.total} at step {run['step'] + 1} "
                                   f"(epoch {epoch + 1}, batch {i + 1}); stopped, keeping the "
                                   f"last good checkpoint {last}")
                        break
                    if parts is not None:  # weight n_rank / n: summed gradients = global mean
                        loss = parts.total if pooled.weight == 1 else parts.total * pooled.weight
                        scaler.scale(loss / window).backward()
                    sums["loss"] += pooled.total
                    sums["seg"] += pooled.seg
                    sums["iou"] += pooled.iou
                    sums["batches"] += 1
                    window_losses += 1
                if (i + 1) % cfg.grad_accum and i + 1 < n_batches:
                    continue
                # -------------------------------------------------- optimizer step
                ddp.sync_gradients(params, ctx)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
                if not torch.isfinite(grad_norm) and not scaler.is_enabled():
                    stopped = "nan"
                    message = (f"gradient norm is {grad_norm.item()} at step {run['step'] + 1} "
                               f"(epoch {epoch + 1}, batch {i + 1}); stopped, keeping the last "
                               f"good checkpoint {last}")
                    break
                if window_losses:  # a window without any instance moves nothing
                    with schedule.applied(run["step"]) as lrs:
                        scaler.step(optimizer)
                    scaler.update()
                    lr, window_losses = lrs[0], 0
                optimizer.zero_grad(set_to_none=True)
                schedule.step_done(run["step"])
                run["step"] += 1
                run["batch_in_epoch"] = i + 1
                bar.set_postfix(loss=f"{sums['loss'] / max(sums['batches'], 1):.4f}",
                                dice=f"{run['last_val_dice']:.3f}", lr=f"{lr:.2e}",
                                sps=f"{seen / (time.perf_counter() - t0):.1f}")
                if cfg.max_steps is not None and run["step"] >= cfg.max_steps:
                    break
            bar.close()
            if stopped == "nan":
                break

            # -------------------------------------------------------------- epoch end
            epoch_done = run["batch_in_epoch"] >= n_batches
            if epoch_done:
                seen = ddp.all_sum([seen], ctx, device)[0]
                metrics = epoch_metrics(sums, lr, seen / max(time.perf_counter() - t0, 1e-9),
                                        device)
                improved = False
                if val_data is not None and (epoch + 1) % cfg.val_every == 0:
                    total, count = ddp.all_sum(validate_sums(model, val_part, cfg, val_norm,
                                                             device), ctx, device)
                    dice = total / count if count else math.nan
                    metrics["val_dice"] = run["last_val_dice"] = dice
                    schedule.validated(dice)
                    improved = dice > run["best_metric"] + cfg.min_delta
                    run["bad_validations"] = 0 if improved else run["bad_validations"] + 1
                    if improved:
                        run["best_metric"], run["best_epoch"] = dice, epoch
                run["history"].append({"epoch": float(epoch + 1), **metrics})
                run["epoch"], run["batch_in_epoch"] = epoch + 1, 0
                run["epoch_sums"] = zero_sums()
                if not all_finite(model):
                    stopped, message = "nan", (f"non-finite weights after epoch {epoch + 1} "
                                               f"(step {run['step']}); stopped, keeping {last}")
                    break
                save("last.pt")
                if improved:
                    best = ckpt.copy_state(last, out_dir / "best.pt") if ctx.is_main else \
                        out_dir / "best.pt"
                if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 \
                        and ctx.is_main:
                    ckpt.copy_state(last, out_dir / f"epoch_{epoch + 1:04d}.pt")
                if ctx.is_main:
                    logger.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                                ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                    if callback is not None:
                        callback("epoch", {"epoch": float(epoch + 1), **metrics}, run["step"])
                if cfg.patience is not None and ddp.agree(
                        run["bad_validations"] >= cfg.patience, ctx, device):
                    stopped = "early_stopping"
                    message = (f"no val Dice gain > {cfg.min_delta} in {cfg.patience} validations"
                               f"; best {run['best_metric']:.4f} at epoch {run['best_epoch'] + 1}")
            at_max_steps = cfg.max_steps is not None and run["step"] >= cfg.max_steps
            if at_max_steps and stopped == "completed":
                if not epoch_done:
                    if not all_finite(model):
                        stopped, message = "nan", f"non-finite weights at step {run['step']}"
                        break
                    save("last.pt")
                stopped, message = "max_steps", f"reached max_steps {cfg.max_steps}"
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        undo_speedups()

    ddp.barrier(ctx)  # rank 0's checkpoints are written before any rank returns their paths
    best_dice = run["best_metric"] if math.isfinite(run["best_metric"]) else None
    if stopped == "nan" and ctx.is_main:
        logger.error(message)
    elif ctx.is_main:
        logger.info("training stopped (%s) after %d epochs, %d steps: %s", stopped, run["epoch"],
                    run["step"], message or "all epochs done")
    if callback is not None and ctx.is_main:
        callback("end", {"best_val_dice": best_dice if best_dice is not None else float("nan"),
                         "epochs": float(run["epoch"]), "steps": float(run["step"])}, run["step"])
    return TrainResult(best, last, best_dice, run["epoch"], run["step"], list(run["history"]),
                       stopped, message)
