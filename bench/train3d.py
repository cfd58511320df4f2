"""Benchmark: SAM-Med3D training cost on 3D crops, and what corrective-click rounds add.

The model comes from the registry (random weights: the cost does not depend on the values);
crops are synthetic S³ volumes with one ball per crop (a class mask), S = the model's img_size
(128 for sam_med3d / sam_med3d_turbo, the released architecture). Timed, each the median of
--repeats runs after one warm-up (--quick: one warm-up, of the encoder, for all three):
  (a) step: one optimizer step of samtune's own training step (`samtune.train.step.batch_loss`
      → backward → AdamW) on --batch crops, with train.prompts.click_rounds 0 and --rounds →
      samples/s for each, and the per-round cost relative to the encoder;
  (b) encoder: `model.encode` of the batch alone, forward+backward.
Peak memory: CUDA's max_memory_allocated, or the process's peak RSS (ru_maxrss) on CPU.
Ends with one JSON line.
Usage: python bench/train3d.py [--model sam_med3d_turbo] [--batch 1] [--rounds 5] [--repeats 3]
       [--device cpu|cuda] [--amp none|bf16]
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samtune.config import ModelConfig, TrainConfig  # noqa: E402
from samtune.models.registry import build_model  # noqa: E402
from samtune.train.step import batch_loss  # noqa: E402

log = logging.getLogger("bench.train3d")


def _batch(n: int, size: int) -> dict:
    ii, jj, kk = torch.meshgrid(*(torch.arange(size, dtype=torch.float32),) * 3, indexing="ij")
    c, r = size / 2, size / 6
    ball = (ii - c) ** 2 + (jj - c) ** 2 + (kk - c) ** 2 <= r * r
    image = torch.where(ball, 900.0, 100.0) + torch.randn(size, size, size) * 20
    return {"images": image[None, None].repeat(n, 1, 1, 1, 1),
            "masks": [ball[None].clone() for _ in range(n)]}


def _median(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sam_med3d_turbo")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--quick", action="store_true", help="warm up once (the encoder) instead "
                    "of before each timing (bench/train.py --quick)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=args.model)).to(device).train()
    size = model.img_size
    batch = _batch(args.batch, size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step(rounds: int):
        cfg = TrainConfig(amp=args.amp, prompts={"box": False, "positive_points": 1,
                                                 "click_rounds": rounds})
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            parts, _ = batch_loss(model, batch, cfg, model.normalize, gen, device)
            parts.total.backward()
            opt.step()
        return run

    def encoder() -> None:
        model.zero_grad(set_to_none=True)
        model.encode(model.normalize(batch["images"].to(device))).image.float().sum().backward()

    t_enc = _median(encoder, args.repeats)
    t0 = _median(step(0), args.repeats, not args.quick)
    tk = _median(step(args.rounds), args.repeats, not args.quick)
    per_round = (tk - t0) / max(args.rounds, 1)
    figures = {"model": args.model, "crop": size, "batch": args.batch, "device": str(device),
               "amp": args.amp, "encoder_fwd_bwd_s": round(t_enc, 3),
               "step_s": round(t0, 3), f"step_{args.rounds}_rounds_s": round(tk, 3),
               "samples_per_s": round(args.batch / t0, 3),
               f"samples_per_s_{args.rounds}_rounds": round(args.batch / tk, 3),
               "click_round_vs_encoder": round(per_round / t_enc, 3),
               "peak_memory_mb": round(_peak_mb(device), 1)}
    for k, v in figures.items():
        log.info("%-28s %s", k, v)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
