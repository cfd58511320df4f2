"""Benchmark: volume inference throughput, the cost of each extra prompt, and reassembly.

A synthetic coronary-CTA phantom (samtune.data.phantoms.make_phantom) is written as int16 gzip
NIfTI (+ uint8 label) to a temporary folder; the model comes from the registry (random weights:
the cost does not depend on the values; --checkpoint loads one if wanted).
  (a) volume: the evaluation path of samtune.eval.volume_eval for one volume, timed per stage:
      load the NIfTI pair (samtune.data.io.load_volume) → SliceGrid → ground-truth instances →
      predict_with_gt_prompts (one encoder pass per slice, one box per instance, batch
      --batch, a batch's instances in one decoder call) → reassemble on the source grid.
      slices/s = slices predicted / total seconds.
  (b) prompts: encoder alone for a batch of --batch slices (SlicePredictor.encode: resize,
      normalise, encode) → seconds per slice; then decode one slice's embedding with N = 1, 2,
      4, 8, 16 box prompts (SlicePredictor.decode: decode + upsample to the slice grid +
      sigmoid; the decoder alone beside it). Cost of one extra prompt = least-squares slope over
      N; target: ≤ 10 % of the encoder's time per slice. Encoder and decodes are timed
      interleaved, round by round (at least 11 rounds), so contention hits them alike.
  (c) reassembly alone (samtune.inference.reassemble) per volume: the phantom's grid and a
      512×512×--depth volume (synthetic labels; a slice grid of --img-size).
Every figure is the median of --repeats runs after one warm-up; the spread (max-min)/median is
printed beside it, and the run is flagged noisy when it passes 25 % (CPU shared with other
work). Ends with one JSON line.
Usage: python bench/infer.py [--device cpu|cuda] [--model sam_tiny] [--img-size 256]
       [--dtype fp32|bf16] [--shape 64 64 48] [--batch 8] [--repeats 5]
On a GPU: python bench/infer.py --device cuda --model sam_vit_b --img-size 1024 --dtype bf16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np
import torch

if TYPE_CHECKING:
    from samtune.config import ConvertConfig
    from samtune.data.cases import Case
    from samtune.inference.predictor import SlicePredictor

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.infer")
COUNTS = (1, 2, 4, 8, 16)
NOISY = 0.25


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, float]:
    """(median seconds of fn() over `repeats` runs after one warm-up, relative spread)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med if med else 0.0


Autocast = Callable[[], ContextManager[Any]]


def write_phantom(folder: Path, shape: tuple[int, int, int],
                  spacing: tuple[float, float, float]) -> "Case":
    """A phantom as image + label NIfTI → its samtune Case."""
    from samtune.data.cases import Case
    from samtune.data.io_formats import write_volume
    from samtune.data.phantoms import make_phantom, phantom_affine

    image, label = make_phantom(shape, spacing, seed=0, diseased=True)
    affine = phantom_affine(shape, spacing)
    img, lab = folder / "phantom_img.nii.gz", folder / "phantom_lab.nii.gz"
    write_volume(img, image, affine)
    write_volume(lab, label, affine)
    return Case("phantom", "phantom", (str(img),), str(lab), modality="CT")


def bench_volume(predictor: "SlicePredictor", case: "Case", convert: "ConvertConfig",
                 repeats: int, batch: int, device: torch.device, autocast: Autocast) -> dict:
    """(a): stage times of one volume's evaluation path, and slices/s."""
    from samtune.config import PromptConfig
    from samtune.data.io import load_volume
    from samtune.data.render import SliceGrid
    from samtune.inference.gt_prompts import gt_instances, predict_with_gt_prompts
    from samtune.inference.reassemble import reassemble

    state: dict[str, Any] = {}
    prompts = PromptConfig(box=True, bbox_shift=0)

    def predict() -> None:
        with autocast():
            state["labels"] = predict_with_gt_prompts(predictor, state["grid"], state["inst"],
                                                      prompts, batch_size=batch)
    stages = {
        "load_s": lambda: state.update(vol=load_volume(case)),
        "grid_s": lambda: state.update(grid=SliceGrid.build(state["vol"], convert)),
        "instances_s": lambda: state.update(inst=gt_instances(state["vol"], convert, [1],
                                                              state["grid"])),
        "predict_s": predict,
        "reassemble_s": lambda: state.update(pred=reassemble(state["grid"], state["labels"])),
    }
    out, spread = {}, {}
    for name, fn in stages.items():
        out[name], spread[name] = timed(fn, repeats, device)
    total = sum(out.values())
    n = len(state["inst"])
    prompts_n = int(sum(len(i.labels) for i in state["inst"].values()))
    res = {**{k: round(v, 4) for k, v in out.items()}, "total_s": round(total, 4),
           "slices": n, "prompts": prompts_n, "slices_in_volume": state["grid"].n_slices,
           "slices_per_s": round(n / total, 2), "predict_slices_per_s": round(
               n / out["predict_s"], 2), "spread": {k: round(v, 3) for k, v in spread.items()}}
    logger.info("(a) volume %s: %d slices with %d prompts in %.3f s → %.2f slices/s "
                "(predict alone %.2f slices/s); stages %s", "×".join(map(str, state["vol"].shape)),
                n, prompts_n, total, res["slices_per_s"], res["predict_slices_per_s"],
                {k: res[k] for k in stages})
    return res


def bench_prompts(predictor: "SlicePredictor", slice_size: int, batch: int, repeats: int,
                  device: torch.device, autocast: Autocast) -> dict:
    """(b): encoder seconds per slice vs the slope of decode time over the prompt count. Each
    round times the encoder once and every prompt count once, interleaved, so contention from
    other work hits all of them alike; medians over the rounds."""
    from samtune.config import PromptConfig
    from samtune.models.base import Prompts

    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    u8 = rng.integers(0, 255, (batch, slice_size, slice_size, 3), dtype=np.uint8)
    cfg, gen = PromptConfig(), torch.Generator().manual_seed(0)
    boxes = {}
    for n in COUNTS:
        xy = rng.uniform(0, 0.7 * slice_size, (n, 2))
        boxes[n] = np.concatenate([xy, xy + 0.25 * slice_size], 1).astype(np.float32)
    with torch.inference_mode(), autocast():
        emb = predictor.encode(u8)
        jobs: dict[str, Callable[[], Any]] = {"encode": lambda: predictor.encode(u8)}
        for n in COUNTS:
            jobs[f"path{n}"] = lambda n=n: predictor.decode(emb, 0, None, cfg, gen, boxes=boxes[n])
            model_boxes = predictor.to_model_prompts(
                Prompts(boxes=torch.as_tensor(boxes[n], device=device))).boxes
            jobs[f"model{n}"] = lambda b=model_boxes: predictor.model.decode(emb, 0,
                                                                             Prompts(boxes=b))
        times: dict[str, list[float]] = {k: [] for k in jobs}
        for job in jobs.values():
            job()  # warm-up
        for _ in range(max(repeats, 11)):
            for name, job in jobs.items():
                sync()
                t0 = time.perf_counter()
                job()
                sync()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
    per_slice = med["encode"] / batch
    path = [med[f"path{n}"] for n in COUNTS]
    slope = float(np.polyfit(COUNTS, path, 1)[0])
    model_slope = float(np.polyfit(COUNTS, [med[f"model{n}"] for n in COUNTS], 1)[0])
    res = {"batch": batch, "rounds": len(times["encode"]),
           "encode_batch_s": round(med["encode"], 5),
           "encode_per_slice_s": round(per_slice, 5),
           "encoder_slices_per_s": round(batch / med["encode"], 2),
           "decode_s": {str(n): round(t, 5) for n, t in zip(COUNTS, path)},
           "extra_prompt_s": round(slope, 6),
           "extra_prompt_over_encoder": round(slope / per_slice, 4),
           "decoder_only_extra_prompt_over_encoder": round(model_slope / per_slice, 4),
           "target_max": 0.10, "meets_target": slope / per_slice <= 0.10,
           "spread": {k: round(v, 3) for k, v in spread.items()}}
    logger.info("(b) encoder %.4f s/slice (batch %d: %.4f s); decode + upsample to the slice grid "
                "with N prompts %s s; one extra prompt %.5f s = %.1f %% of the encoder per slice "
                "(decoder alone %.1f %%; target ≤ 10 %%)", per_slice, batch, med["encode"],
                res["decode_s"], slope, 100 * slope / per_slice, 100 * model_slope / per_slice)
    return res


def bench_reassembly(case: "Case", convert: "ConvertConfig", depth: int, repeats: int) -> dict:
    """(c): reassemble() per volume, on the phantom's grid and on 512×512×depth."""
    from samtune.data.cases import Case, Volume
    from samtune.data.io import load_volume
    from samtune.data.phantoms import phantom_affine
    from samtune.data.render import SliceGrid
    from samtune.inference.reassemble import reassemble

    rng = np.random.default_rng(0)
    res = {}
    big_shape = (512, 512, depth)
    big = Volume(Case("big", "big", ("synthetic",)), np.zeros((1, *big_shape), np.int16),
                 phantom_affine(big_shape, (0.4, 0.4, 0.6)))
    for name, vol in (("phantom", load_volume(case)), ("512x512", big)):
        grid = SliceGrid.build(vol, convert)
        s = convert.img_size
        labels = {k: (rng.random((s, s)) > 0.97).astype(np.int32) for k in range(grid.n_slices)}
        t, spread = timed(lambda: reassemble(grid, labels), repeats, torch.device("cpu"))
        key = "x".join(map(str, vol.shape))
        res[key] = {"seconds": round(t, 4), "slices": grid.n_slices, "spread": round(spread, 3)}
        logger.info("(c) reassemble %s from %d slices of %d²: %.4f s per volume (%s)", key,
                    grid.n_slices, s, t, name)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="sam_tiny", help="zoo name (random weights)")
    p.add_argument("--checkpoint", default=None, help="optional checkpoint file to load")
    p.add_argument("--img-size", type=int, default=None, help="model input; default the zoo's")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="autocast dtype")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48), help="phantom I J K")
    p.add_argument("--batch", type=int, default=8, help="slices per encoder pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--depth", type=int, default=64, help="slices of the 512×512 reassembly")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default all cores")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from samtune.config import ConvertConfig, ModelConfig
    from samtune.inference.predictor import SlicePredictor
    from samtune.models.registry import build_model

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)
    model = build_model(ModelConfig(name=args.model, img_size=args.img_size,
                                    checkpoint=args.checkpoint)).to(device).eval()
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    autocast = ((lambda: torch.autocast(device.type, dtype=dtype)) if dtype
                else contextlib.nullcontext)
    convert = ConvertConfig(img_size=model.img_size, channels=3, intensity="window", window="cta")
    predictor = SlicePredictor(model, convert.img_size, None, device)
    load = os.getloadavg()
    logger.info("%s at %d px, %s, %s, %d threads; load average %s on %d cores", args.model,
                model.img_size, args.dtype, device, torch.get_num_threads(), load, os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="samtune-bench-infer-") as tmp:
        case = write_phantom(Path(tmp), tuple(args.shape), (0.8, 0.8, 1.25))
        volume = bench_volume(predictor, case, convert, args.repeats, args.batch, device,
                              autocast)
        prompts = bench_prompts(predictor, convert.img_size, args.batch, args.repeats, device,
                                autocast)
        reassembly = bench_reassembly(case, convert, args.depth, args.repeats)
    spreads = [*volume["spread"].values(), *prompts["spread"].values(),
               *(r["spread"] for r in reassembly.values())]
    noisy = max(spreads) > NOISY or max(load[0], os.getloadavg()[0]) > (os.cpu_count() or 1)
    if noisy:
        logger.info("NOISY: the largest spread (max-min)/median is %.0f %% and the load average "
                    "went to %.1f on %d cores: the machine is shared, read the medians as rough",
                    100 * max(spreads), max(load[0], os.getloadavg()[0]), os.cpu_count())
    print(json.dumps({
        "bench": "infer", "model": args.model, "img_size": model.img_size, "dtype": args.dtype,
        "device": args.device, "gpu": torch.cuda.get_device_name() if device.type == "cuda"
        else None, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "phantom_shape": list(args.shape),
        "volume_slices_per_s": volume["slices_per_s"], "volume": volume,
        "extra_prompt_over_encoder": prompts["extra_prompt_over_encoder"], "prompts": prompts,
        "reassemble": reassembly, "noisy": noisy, "load_average": [round(x, 2) for x in load]},
        separators=(",", ":")))


if __name__ == "__main__":
    main()
