"""(d) of bench/train.py: samtune's full fine-tune against MedSAM's training loop
(bench/medsam_reference.py) on the same slices, in one process."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from bench.training_setup import LOOP, build, epoch_times, run_loop, steady, write_slices

logger = logging.getLogger("bench.speedup")


def bench_speedup(name: str, img_size: int, n: int, epochs: int, batch: int, device: str,
                  tmp: Path) -> dict:
    """samtune's full fine-tune (the real loop) vs MedSAM's training loop (bench/
    medsam_reference.py) on the same slices, prompts per instance and loss (Dice + BCE, the
    prompt encoder frozen in both); slices/s = slices ÷ epoch seconds, the median epoch after
    the first of each. samtune encodes each slice once per step and decodes all its instances
    in one call; the reference encodes a slice once per instance, as MedSAM's dataset does.
    Epochs alternate (one of samtune's, one of the reference's, …) so that both see the same
    machine load: samtune trains `epochs` epochs in one `train` call (one optimizer, as a user
    trains) and its epoch callback runs a reference epoch, outside samtune's epoch timer and
    with the loop's deterministic-algorithms switch off, as MedSAM's script runs. (One fresh
    `train` call per epoch instead started every 2-step epoch cold — new optimizer state,
    first-touch allocations — and measured 1.57 where one step of each loop, each in its own
    process, gives 4 × 9.9 s ÷ (2 × 10.2 s) ≈ 1.9 on 2 CPU cores at 512 px.)"""
    from bench.medsam_reference import instance_pairs, reference_epoch, reference_optimizer
    from samtune.train.data import SliceDataset

    torch.manual_seed(0)
    model, report = build(name, "full", img_size, freeze=("prompt_encoder",))
    torch.manual_seed(0)
    ref_model, _ = build(name, "full", img_size)
    dev = torch.device(device)
    ref_model.to(dev)
    optimizer = reference_optimizer(ref_model)
    data = SliceDataset(write_slices(tmp / f"speed_{name}" / "train", n, img_size), img_size)
    pairs = instance_pairs(data)
    rng = np.random.default_rng(0)
    ref, load = [], [os.getloadavg()[0]]

    def reference(event: str, metrics: dict, step: int) -> None:
        if event != "epoch":
            return
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            ref.append(round(reference_epoch(ref_model, data, pairs, batch, ref_model.normalize,
                                             optimizer, dev, LOOP["amp"], rng), 3))
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
        load.append(os.getloadavg()[0])

    hist = run_loop(model, data, epochs, batch, device, tmp / "ckpt_speed", callback=reference,
                    iou_loss_weight=0.0, grad_clip=None,
                    optimizer_kwargs={"lr": 1e-4, "weight_decay": 0.01})
    ours = epoch_times(hist, n)
    res = {"img_size": img_size, "slices": n, "instances": len(pairs), "batch_size": batch,
           "epochs": epochs, "samtune_epoch_s": ours, "reference_epoch_s": ref,
           "samtune_slices_per_s": round(n / steady(ours), 4),
           "reference_slices_per_s": round(n / steady(ref), 4),
           "speedup": round(steady(ref) / steady(ours), 2),
           "load_avg_1min": [round(x, 2) for x in load], "trainable_params": report["trainable"]}
    logger.info("(d) %s speedup vs MedSAM-style loop: %s", name, res)
    return res
