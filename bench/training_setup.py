"""What the training benchmarks share: synthetic slices written as an export split, models
from the registry with a fine-tuning method applied, and the real training loop with val off
(its per-epoch `samples_per_s` give the epoch times)."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np


def write_slices(split_dir: Path, n: int, size: int, seed: int = 0) -> Path:
    """n synthetic size×size grey slices with 1–4 elliptic blobs each, as an export split."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    images, anns = [], []
    for i in range(n):
        pixels = rng.normal(40, 15, (size, size))
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            ry, rx = rng.uniform(0.03, 0.12, 2) * size
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            pixels[blob] = rng.uniform(150, 230)
            rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "iscrowd": 0,
                         "category_id": int(rng.integers(1, 3)), "area": int(blob.sum()),
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        name = f"synthetic_{i:04d}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(split_dir / "images" / name,
                                                                   compress_level=1)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size,
                       "case_id": f"case{i // 4}", "slice_index": i})
    (split_dir / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    (split_dir.parent / "dataset.json").write_text(json.dumps({"fingerprint": f"bench{size}"}))
    return split_dir


def build(name: str, method: str, img_size: int | None = None, freeze: tuple[str, ...] = ()):
    from samtune.config import ModelConfig
    from samtune.models.adapters import apply_method, parameter_report
    from samtune.models.registry import build_model

    cfg = ModelConfig(name=name, method="frozen" if method == "frozen_cached" else method,
                      img_size=img_size, freeze=list(freeze))
    model = apply_method(build_model(cfg), cfg)
    return model, parameter_report(model)


LOOP = {"num_workers": 0, "amp": "none"}  # set by bench/train.py's command line


def run_loop(model, data, epochs: int, batch_size: int, device: str, out: Path,
             callback=None, **overrides) -> list[dict]:
    """The real loop, val off; → its per-epoch metrics (samples_per_s, peak_memory_mb, …).
    callback: the loop's (event, metrics, step), run between epochs outside their timing."""
    from samtune.config import TrainConfig
    from samtune.train.loop import train

    settings = {"grad_clip": 1.0, "optimizer_kwargs": {"lr": 1e-5}, **LOOP, **overrides}
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device=device, **settings)
    return train(model, data, None, cfg, out, callback=callback).history


def item_ms(data, n: int) -> float:
    """Mean milliseconds to load one item."""
    t0 = time.perf_counter()
    [data[i] for i in range(n)]
    return round((time.perf_counter() - t0) / n * 1000, 2)


def epoch_times(history: list[dict], n: int) -> list[float]:
    return [round(n / h["samples_per_s"], 3) for h in history]


def steady(times: list[float]) -> float:
    """Median epoch time after the first (the first carries the warm-up)."""
    return statistics.median(times[1:] if len(times) > 1 else times)
