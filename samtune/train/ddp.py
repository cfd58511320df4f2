"""Data-parallel training over N processes (one per GPU, or N CPU processes with gloo).

Launch, three ways (`train.distributed.nproc` > 1 in the first two):

    run_distributed(dataset_dir, model_cfg, train_cfg, out_dir)     # from Python / a ZenML step
        re-runs the training through `python -m torch.distributed.run --standalone
        --nproc_per_node N -m samtune.train.ddp_worker …`, replays rank 0's epoch events into
        `callback`, and raises DistributedTrainingError with each failed rank's last log lines.
    torchrun --standalone --nproc_per_node 2 -m samtune.train.ddp_worker \\
        --dataset outputs/demo/dataset --config demo --out outputs/demo/training     # by hand
    torchrun … your_script.py        # your code calling `ddp_worker.train_in_rank` (which
        # exports on rank 0 only; `train_on_export` on every rank would export N times) or
        # `loop.train` itself in each worker

`loop.train` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins or opens the
process group (`process_group`: NCCL on CUDA, gloo on the CPU, `train.distributed.backend`).

What one step does with N ranks of per-process `batch_size` b (`step.epoch_batches`): the global
batch of N·b slices is the one a single process with batch N·b takes (`batch_order`), and each
rank takes its contiguous part (`step.local_part`). Gradients are then made exactly those of
the single process: each rank's loss (a mean over its n_r instances) is weighted by n_r / n,
with n = Σ n_r all-reduced (`pool_loss`), and `sync_gradients` sums the gradients over ranks:

    Σ_r (n_r / n) · ∇(1/n_r Σ_{i∈r} l_i) = ∇(1/n Σ_i l_i)      the single process's gradient

(the same as DDP's gradient averaging with the loss weighted by N·n_r / n), so the result does
not depend on how instances fall across ranks, and a rank with no instance at all (empty slices,
an empty part of a short last batch) still takes part. Identical gradients on every rank give
identical clipping, optimizer steps and weights. Given deterministic prompts (bbox_shift 0, no
points, instances ≤ max_instances) and no dropout, N×b equals 1×N·b up to float rounding
(tests/train/test_ddp.py); random prompt jitter and dropout draw from per-rank streams
(seed + rank·SEED_STRIDE), so they differ from the single process's draws, not in distribution.

The gradients are all-reduced by hand, once per optimizer step in ~25 MB buckets (the collective
DDP issues), not by the `DistributedDataParallel` wrapper: the loop drives the model through
`encode` / `decode` / `upscale`, not `forward()` (which arms DDP's reducer); a rank without
instances has no loss to call backward on, and the usual fix, a dummy loss touching every
parameter, turns gradients the single process leaves None into zeros, which weight decay and
momentum then act on. The price: no overlap of communication with the backward pass (small next
to a SAM step), and two small all_reduces more (per micro-batch the instance counts and loss
sums, per step which gradients exist).

Also: loss sums, validation (sharded, Dice sums all-reduced) and the stop decisions (NaN loss,
early stopping) are global, so every rank stops at the same step; only rank 0 logs, shows tqdm,
calls the callback and writes checkpoints, which hold every rank's RNG states (`rng_ranks`), so a
resume with the same number of processes is exact; with another number it is refused.

Notes: `batch_size` is per process, so the global batch is nproc·batch_size (divide it by N to
keep a single-GPU run's schedule); `grad_accum` accumulates global micro-batches. With Adam,
"up to float rounding" can mean ~lr for the few gradients that are 0 in exact arithmetic
(attention key biases, which softmax ignores): Adam scales their rounding noise up to unit size.
Untested here: NCCL (no GPU on the test machines) and QLoRA's 4-bit weights under several ranks.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from samtune.config import ModelConfig, TrainConfig
from samtune.train.collectives import (  # noqa: F401  one import path for the loop and users
    SEED_STRIDE, DistContext, PooledLoss, agree, all_sum, barrier, broadcast_state, context,
    gather, in_worker, pool_loss, process_group, resolve_device, shard, sync_gradients)

__all__ = ["DistContext", "DistributedTrainingError", "PooledLoss", "SEED_STRIDE", "in_worker",
           "context", "process_group", "resolve_device", "broadcast_state", "pool_loss",
           "sync_gradients", "all_sum", "agree", "gather", "barrier", "shard", "torchrun_command",
           "launch", "run_distributed"]
logger = logging.getLogger(__name__)

WORKER_MODULE = "samtune.train.ddp_worker"
Callback = Callable[[str, dict[str, float], int], None]


class DistributedTrainingError(RuntimeError):
    """A torchrun worker failed; the message holds the failed ranks' last log lines."""


# --------------------------------------------------------------------------------- launch
def torchrun_command(module: str, args: Sequence[str], nproc: int,
                     master_port: int | None = None) -> list[str]:
    """argv running `python -m module args…` in nproc local workers (--standalone: torchrun
    picks a free port; master_port pins it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--standalone"] if master_port is None else \
        ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(master_port)]
    return cmd + ["-m", module, *args]


def launch(module: str, args: Sequence[str], nproc: int, *, master_port: int | None = None,
           log_file: Path | None = None) -> subprocess.Popen:
    """Start torchrun (see `torchrun_command`); its output goes to `log_file` (else inherited).
    Refused inside a torchrun worker, which would nest process groups."""
    if in_worker():
        raise RuntimeError("already inside a torchrun worker (RANK/WORLD_SIZE set): call the "
                           "training directly instead of launching torchrun again")
    out = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (the child's)
    try:
        return subprocess.Popen(torchrun_command(module, args, nproc, master_port), stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()


def run_distributed(dataset_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    out_dir: Path, *, callback: Callback | None = None,
                    dataset_fingerprint: str = "") -> Path:
    """`finetune.train_on_export` over `train_cfg.distributed.nproc` processes → `out_dir` (the
    model bundle folder). Each rank's log is `out_dir/logs/rank<r>.log`; rank 0's epoch events
    reach `callback` while it runs. With nproc 1, or inside a torchrun worker already, the
    training runs in this process."""
    from samtune.train.ddp_worker import train_in_rank  # late: it imports the loop, which us

    out_dir = Path(out_dir)
    nproc = train_cfg.distributed.nproc
    if nproc == 1 or in_worker():
        with process_group(train_cfg.distributed.backend, train_cfg.device):
            train_in_rank(dataset_dir, model_cfg, train_cfg, out_dir, callback=callback,
                          dataset_fingerprint=dataset_fingerprint)
        return out_dir
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*"):
        old.unlink()
    config = logs / "config.json"
    config.write_text(json.dumps({"model": model_cfg.model_dump(mode="json"),
                                  "train": train_cfg.model_dump(mode="json")}))
    events = logs / "events.jsonl"
    args = ["--dataset", str(dataset_dir), "--config-json", str(config), "--out", str(out_dir),
            "--events", str(events), "--fingerprint", dataset_fingerprint,
            "--log-dir", str(logs)]
    logger.info("training on %d processes: %s", nproc, " ".join(torchrun_command(
        WORKER_MODULE, args, nproc, train_cfg.distributed.master_port)))
    proc = launch(WORKER_MODULE, args, nproc, master_port=train_cfg.distributed.master_port,
                  log_file=logs / "torchrun.log")
    offset = 0
    while True:
        rc = proc.poll()
        offset = _replay_events(events, offset, callback)
        if rc is not None:
            break
        time.sleep(0.5)
    if rc != 0:
        raise DistributedTrainingError(_failure_report(rc, logs))
    return out_dir


def _replay_events(path: Path, offset: int, callback: Callback | None) -> int:
    """Call `callback` for the complete JSON lines of `path` past `offset`; → the new offset."""
    if not path.is_file():
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    done = data.rfind(b"\n") + 1
    for line in data[:done].splitlines():
        event = json.loads(line)
        if callback is not None:
            callback(event["event"], event["metrics"], event["step"])
    return offset + done


def _failure_report(rc: int, logs: Path, lines: int = 25) -> str:
    """The ranks whose log holds a traceback (else every rank), their last lines, and the end
    of torchrun's own output."""
    def tail(path: Path, n: int = lines) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    ranks = sorted(logs.glob("rank*.log"))
    failed = [p for p in ranks if "Traceback" in p.read_text(errors="replace")] or ranks
    parts = [f"distributed training failed (torchrun exit code {rc}); logs in {logs}"]
    parts += [f"--- {p.stem}, last lines:\n{tail(p)}" for p in failed]
    if (logs / "torchrun.log").is_file():
        parts.append(f"--- torchrun:\n{tail(logs / 'torchrun.log', 12)}")
    return "\n".join(parts)
