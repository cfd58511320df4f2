"""The training loop's bookkeeping: the run-state dict stored in checkpoints, the running loss
sums of an epoch, and the per-epoch metrics (peak memory included)."""
from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any

import torch

__all__ = ["zero_sums", "fresh_run", "epoch_metrics", "peak_memory_mb", "all_finite"]


def zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "seg": 0.0, "iou": 0.0, "batches": 0}


def fresh_run(config: dict[str, Any], config_hash: str) -> dict[str, Any]:
    """The loop's bookkeeping, stored as it is in every checkpoint."""
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": -math.inf,
            "best_epoch": -1, "bad_validations": 0, "last_val_dice": math.nan, "history": [],
            "epoch_sums": zero_sums(), "config": config, "config_hash": config_hash}


def peak_memory_mb(device: torch.device, status: Path = Path("/proc/self/status")) -> float:
    """This process's peak memory in MiB: on CUDA the peak allocated on `device`; else the peak
    resident set, VmHWM of /proc/self/status, which starts afresh at exec (ru_maxrss, the
    fallback where /proc is absent, carries the parent's peak over fork + exec on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def epoch_metrics(sums: dict[str, float], lr: float, samples_per_s: float,
                  device: torch.device) -> dict[str, float]:
    n = max(sums["batches"], 1)
    return {"loss": sums["loss"] / n, "seg_loss": sums["seg"] / n, "iou_loss": sums["iou"] / n,
            "lr": lr, "samples_per_s": samples_per_s, "peak_memory_mb": peak_memory_mb(device)}


def all_finite(model: torch.nn.Module) -> bool:
    """Every trainable parameter finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
