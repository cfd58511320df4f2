"""Benchmark: samtune's slice path against each family's official inference code.

Per zoo entry (random weights of the real architecture, seed 0; the SAM2 family's object-score
head biased to 'present' so the video predictor does not blank the mask), one synthetic 300×220
uint8 image with a box — and, for families whose inference takes them, a box plus a positive
and a negative point — runs through `samtune.inference.fidelity.samtune_predict` (the pipeline's
`SlicePredictor`) and `official_predict` (SamPredictor / mobile_sam / MedSAM_Inference.py /
SAM2ImagePredictor / MedSAM2's video predictor). Printed per family and prompt: mask IoU, the
largest logit difference on the image, and the median seconds per slice of each path over
--repeats runs (the official predictors rebuild their wrappers per call; both include
preprocessing and post-processing).
Ends with one JSON line: min_mask_iou over all, max_logit_diff, and <family>_mask_iou.
Usage: python bench/fidelity.py [--models sam_vit_b mobile_sam ...] [--repeats 3]
       [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samtune.inference.fidelity import official_predict, samtune_predict  # noqa: E402
from samtune.models.registry import build_architecture  # noqa: E402

logger = logging.getLogger("bench.fidelity")
DEFAULT = ["sam_vit_b", "mobile_sam", "medsam_vit_b", "sam2.1_hiera_t", "medsam2",
           "hq_sam_vit_b"]
BOX = np.array([85, 55, 225, 165])
POINTS, LABELS = np.array([[150, 110], [30, 30]]), np.array([1, 0])


def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (220, 300, 3), dtype=np.uint8)
    img[60:160, 90:220] = np.clip(img[60:160, 90:220] // 3 + 150, 0, 255)
    return img


def build(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture(name).to(device).eval()
    if hasattr(model, "sam_mask_decoder"):
        head = model.sam_mask_decoder.pred_obj_score_head
        torch.nn.init.constant_((head.layers[-1] if hasattr(head, "layers") else head).bias, 10.0)
    return model


def compare(model: torch.nn.Module, repeats: int, **prompt: np.ndarray) -> dict[str, float]:
    img = image()
    runs = [(samtune_predict(model, img, **prompt), official_predict(model, img, **prompt))
            for _ in range(repeats)]
    ours, theirs = runs[-1]
    union = (ours.mask | theirs.mask).sum()
    iou = 1.0 if union == 0 else float((ours.mask & theirs.mask).sum() / union)
    return {"mask_iou": iou, "max_logit_diff": float(np.abs(ours.logits - theirs.logits).max()),
            "fg_fraction": float(theirs.mask.mean()),
            "samtune_s": statistics.median(r[0].seconds for r in runs),
            "official_s": statistics.median(r[1].seconds for r in runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures: dict[str, float] = {}
    ious, diffs = [], []
    logger.info("%-16s %-11s %9s %12s %7s %10s %11s", "model", "prompt", "mask IoU",
                "max |Δlogit|", "fg", "samtune s", "official s")
    for name in args.models:
        model = build(name, args.device)
        prompts = {"box": {"box": BOX}}
        if model.preprocess != "medsam":  # MedSAM's inference takes a box only
            prompts["box+points"] = {"box": BOX, "points": POINTS, "labels": LABELS}
        family_iou = 1.0
        for label, prompt in prompts.items():
            r = compare(model, args.repeats, **prompt)
            logger.info("%-16s %-11s %9.5f %12.2e %7.3f %10.3f %11.3f", name, label,
                        r["mask_iou"], r["max_logit_diff"], r["fg_fraction"], r["samtune_s"],
                        r["official_s"])
            family_iou = min(family_iou, r["mask_iou"])
            ious.append(r["mask_iou"])
            diffs.append(r["max_logit_diff"])
        figures[f"{name}_mask_iou"] = family_iou
    print(json.dumps({"min_mask_iou": min(ious), "max_logit_diff": max(diffs), **figures,
                      "device": args.device, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
