"""Benchmark: the frozen-encoder embedding cache, the fine-tuning methods, and instance cost.

Synthetic slices (1–4 bright blobs on noise; grey PNGs + COCO RLE) read by `SliceDataset`, models
from the registry (random weights), training through the real loop (`samtune.train.loop.train`,
val off); epoch times are the loop's own `samples_per_s`.

  (a) cache: one frozen-encoder model (method `frozen`), the same slices: epoch time without
      the cache vs with it. The cache build (encode + write every slice) is timed apart from the
      cached epochs; steady state = the median epoch after the first. ratio = uncached / cached.
  (b) methods: full, frozen, frozen + cache, LoRA (samtune.models.adapters.apply_method), each in
      a fresh subprocess: trainable parameters, samples/s (second epoch), peak RSS of that
      process (VmHWM; on CUDA also the peak allocated GPU memory).
  (c) instance cost: encode 1 image vs decode N box prompts with one embedding (N = 1…16),
      forward (no_grad, + upscale) and training (+ Dice/CE loss + backward); the least-squares
      slope over N (one more instance) ÷ encoder time.
  (d) speedup: samtune's full fine-tune (real loop) vs MedSAM's train_one_gpu.py loop
      (bench/medsam_reference.py: one sample per instance, no cache) on the same slices,
      prompts and loss, epochs alternating (a reference epoch after each of samtune's, from the
      loop's epoch callback); speedup = reference epoch ÷ samtune epoch (medians after the
      first). --quick (≤ 10 min on 2 idle CPU cores): sam_tiny for (a)–(c), plus the
      ViT-B cache ratio at its released 1024 px on 2 slices (--cache-size, --cache-slices) and
      (d) at 512 px on 4 slices (CUDA: 1024 px, 8 slices).
  (e) 3D: bench/train3d.py for --model-3d (default sam_med3d_turbo at 128³) in a subprocess:
      samples/s with 0 and 5 click rounds, one round ÷ encoder fwd+bwd, peak memory.
Ends with one JSON line; top-level `cache_ratio_vit_b` and `speedup_vs_reference`.
Usage: python bench/train.py [--quick] [--device auto|cpu|cuda] [--models a,b] [--amp bf16]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.flops import mfu, train_flops_per_sample  # noqa: E402
from bench.speedup import bench_speedup  # noqa: E402
from bench.training_setup import LOOP, build, epoch_times, item_ms, run_loop, steady, \
    write_slices  # noqa: E402

logger = logging.getLogger("bench.train")
METHODS = ("full", "frozen", "frozen_cached", "lora")


def bench_cache(name: str, n: int, epochs: tuple[int, int], batch: int, device: str,
                tmp: Path, img_size: int | None = None) -> dict:
    from samtune.train.data import SliceDataset
    from samtune.train.embedding_cache import cache_embeddings

    model, report = build(name, "frozen", img_size)
    data = SliceDataset(write_slices(tmp / f"cache_{name}" / "train", n, model.img_size),
                        model.img_size)
    plain = run_loop(model, data, epochs[0], batch, device, tmp / "ckpt_plain")
    t0 = time.perf_counter()
    cached_data = cache_embeddings(data, model, tmp / "emb", batch_size=batch, device=device)
    build_s = time.perf_counter() - t0
    cached = epoch_times(run_loop(model, cached_data, epochs[1], batch, device,
                                  tmp / "ckpt_cached"), n)
    plain = epoch_times(plain, n)
    off, on = steady(plain), steady(cached)
    store = cached_data.store
    res = {"img_size": model.img_size, "slices": n, "batch_size": batch,
           "uncached_epoch_s": plain, "cache_build_s": round(build_s, 3), "cached_epoch_s": cached,
           "uncached_steady_s": off, "cached_steady_s": on,
           "ratio": round(off / on, 2), "item_ms": item_ms(data, n),
           "cached_item_ms": item_ms(cached_data, n), "cache_mb_per_slice": round(
               store.nbytes() / max(len(store), 1) / 2**20, 3),
           "trainable_params": report["trainable"]}
    logger.info("(a) %s: %s", name, res)
    return res


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss would carry the
    parent's peak over fork + exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_method(args: argparse.Namespace) -> dict:
    """One method in this (fresh) process → its figures."""
    from samtune.train.data import SliceDataset
    from samtune.train.embedding_cache import cache_embeddings

    try:
        model, report = build(args.models, args.child)
    except (ImportError, RuntimeError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    n = args.batch * args.steps
    with tempfile.TemporaryDirectory(prefix="bench-train-") as t:
        data = SliceDataset(write_slices(Path(t) / "train", n, model.img_size), model.img_size)
        if args.child == "frozen_cached":
            data = cache_embeddings(data, model, Path(t) / "emb", batch_size=args.batch,
                                    device=args.device)
        hist = run_loop(model, data, 2, args.batch, args.device, Path(t) / "ckpt")
    res = {"trainable_params": report["trainable"], "total_params": report["total"],
           "samples_per_s": round(hist[-1]["samples_per_s"], 3),
           "peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available() and args.device != "cpu":
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        util = mfu(args.models, args.child, res["samples_per_s"]) if args.amp == "bf16" else None
        res["mfu"] = None if util is None else round(util, 4)
    res["train_gflop_per_sample"] = round(train_flops_per_sample(args.models, args.child) / 1e9,
                                          1)
    return res


def bench_methods(name: str, steps: int, batch: int, device: str) -> dict:
    out = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, "--models", name, "--steps",
               str(steps), "--batch", str(batch), "--device", device, "--amp", LOOP["amp"],
               "--num-workers", str(LOOP["num_workers"])]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        lines = proc.stdout.strip().splitlines()
        try:
            out[method] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            out[method] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        logger.info("(b) %s %s: %s", name, method, out[method])
    return out


def bench_3d(name: str, rounds: int, repeats: int, device: str, quick: bool = False) -> dict:
    """(e) bench/train3d.py in a fresh process (its peak memory is its own): SAM-Med3D step
    samples/s with and without `rounds` click rounds, the round's cost ÷ encoder fwd+bwd."""
    cmd = [sys.executable, str(REPO / "bench" / "train3d.py"), "--model", name, "--rounds",
           str(rounds), "--repeats", str(repeats), "--device", device, "--amp", LOOP["amp"],
           *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    logger.info("(e) 3D %s: %s", name, out)
    return out


def timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds of fn() over reps runs, after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_instances(name: str, reps: int, device: torch.device,
                    counts: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict:
    from samtune.models.base import Prompts
    from samtune.train.losses import sam_loss

    model, _ = build(name, "frozen")
    model.to(device)
    s = model.img_size
    gen = torch.Generator().manual_seed(0)
    image = model.normalize(torch.rand(1, 3, s, s, generator=gen).to(device) * 255)
    with torch.no_grad():
        enc_s = timed(lambda: model.encode(image), reps, device)
        emb = model.encode(image)
    fwd, train = [], []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * s * 0.7
        boxes = torch.cat([xy, xy + s * 0.2], 1).to(device)
        target = torch.zeros(n, s, s, dtype=torch.bool, device=device)
        target[:, s // 4: s // 2, s // 4: s // 2] = True

        def forward():
            with torch.no_grad():
                return model.upscale(model.decode(emb, 0, Prompts(boxes=boxes))[0])

        def step():
            low, iou = model.decode(emb, 0, Prompts(boxes=boxes))
            sam_loss(model.upscale(low), iou, target).total.backward()

        fwd.append(timed(forward, reps, device))
        train.append(timed(step, reps, device))
    slope_f, slope_t = (float(np.polyfit(counts, t, 1)[0]) for t in (fwd, train))
    res = {"img_size": s, "encode_s": round(enc_s, 5),
           "decode_fwd_s": dict(zip(map(str, counts), (round(t, 5) for t in fwd))),
           "decode_train_s": dict(zip(map(str, counts), (round(t, 5) for t in train))),
           "marginal_fwd_s": round(slope_f, 5), "marginal_train_s": round(slope_t, 5),
           "marginal_fwd_over_encode": round(slope_f / enc_s, 4),
           "marginal_train_over_encode": round(slope_t / enc_s, 4)}
    logger.info("(c) %s: %s", name, res)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="sam_tiny,sam_vit_b", help="comma-separated zoo names")
    p.add_argument("--method-models", default=None, help="models for (b); default: --models")
    p.add_argument("--slices", type=int, default=8, help="slices for (a), small models")
    p.add_argument("--slices-large", type=int, help="(a) at 1024 px; default 4 (CPU), 8 (CUDA)")
    p.add_argument("--epochs", type=int, nargs=2, default=(2, 3), metavar=("UNCACHED", "CACHED"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps per epoch in (b), small models")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions in (c)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--num-workers", type=int, default=0, help="train.num_workers (data loading)")
    p.add_argument("--quick", action="store_true", help="≤ 10 min on 2 CPU cores: sam_tiny, "
                   "few slices; the ViT-B cache ratio at --cache-size and (d) at --speed-size")
    p.add_argument("--speed-model", default="sam_vit_b", help="(d): samtune vs MedSAM's loop")
    p.add_argument("--speed-size", type=int, help="(d) input size; default 512 (CPU), 1024 "
                   "(CUDA)")
    p.add_argument("--cache-size", type=int, default=1024, help="--quick: ViT-B cache ratio "
                   "input size (1024: the released size)")
    p.add_argument("--cache-slices", type=int, default=2, help="--quick: ViT-B cache slices")
    p.add_argument("--speed-epochs", type=int, default=3, help="(d) epochs of each loop")
    p.add_argument("--vit-slices", type=int, help=argparse.SUPPRESS)  # (d) slices
    p.add_argument("--model-3d", default="sam_med3d_turbo", help="(e) 3D row (bench/train3d.py"
                   ", 128³ for the released size); '' skips it")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    LOOP.update(num_workers=args.num_workers, amp=args.amp)
    if args.child:
        print(json.dumps(child_method(args)))
        return
    if args.quick:
        args.models, args.slices, args.epochs, args.steps, args.reps = "sam_tiny", 4, (2, 2), 2, 1
    speed_size = args.speed_size or (1024 if args.device == "cuda" else 512)
    vit_slices = args.vit_slices or (8 if args.device == "cuda" else 4)
    models = [m for m in args.models.split(",") if m]
    method_models = [m for m in (args.method_models if args.method_models is not None
                                 else args.models).split(",") if m]
    device = torch.device(args.device)
    result = {"bench": "train", "device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "threads": torch.get_num_threads(), **LOOP, "cache": {}, "methods": {},
              "instances": {}}
    from samtune.models.registry import get_spec
    with tempfile.TemporaryDirectory(prefix="bench-train-") as t:
        for name in models:
            large = get_spec(name).img_size >= 1024
            n = (args.slices_large or (8 if device.type == "cuda" else 4)) if large else args.slices
            result["cache"][name] = bench_cache(name, n, tuple(args.epochs), args.batch,
                                                args.device, Path(t) / name)
            result["instances"][name] = bench_instances(name, args.reps, device)
        if args.quick:  # the ViT-B figure on few slices: same architecture and input size
            result["cache"]["sam_vit_b"] = bench_cache("sam_vit_b", args.cache_slices, (3, 8),
                                                       args.batch, args.device, Path(t) / "vit_b",
                                                       img_size=args.cache_size)
        result["speedup"] = bench_speedup(args.speed_model, speed_size, vit_slices,
                                          args.speed_epochs, args.batch, args.device,
                                          Path(t) / "speed")
    for name in method_models:
        large = get_spec(name).img_size >= 1024 and device.type == "cpu"
        result["methods"][name] = bench_methods(name, 1 if large else args.steps,
                                                1 if large else args.batch, args.device)
    if args.model_3d:
        result["3d"] = bench_3d(args.model_3d, 5, 1 if args.quick else 3, args.device,
                                args.quick)
    result["cache_ratio_vit_b"] = result["cache"].get("sam_vit_b", {}).get("ratio")
    result["speedup_vs_reference"] = result["speedup"]["speedup"]
    result["targets"] = {"cache_ratio_vit_b_min": 20, "marginal_instance_over_encode_max": 0.10,
                         "speedup_vs_reference_min": 1.5}
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
