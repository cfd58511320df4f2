"""Crop-level evaluation of a 3D model (SAM-Med3D), the 3D counterpart of `slice_eval`: every
class of every evaluation crop is prompted with one click at its centre (the click rule's first
click), beside the **3D box-fill baseline**, which predicts the instance's tight bounding box
filled (inclusive corners): the score a model must beat to have learned more than where the
structure is. Crops are the deterministic class-centred ones of `samtune.train.data3d`
(upstream's CropOrPad around the class), the model's own per-crop normalisation.

Rows and report are `slice_eval`'s (`SliceReport`): "instance" = one class in one crop.
"""
from __future__ import annotations

import logging
import torch
from torch.utils.data import Dataset

from samtune.config import PromptConfig
from samtune.eval.slice_eval import SliceMetrics, SliceReport
from samtune.models.base import PromptableModel
from samtune.models.device import resolve_device
from samtune.train.prompts3d import make_prompts_3d

__all__ = ["box_fill_3d", "evaluate_crops"]
log = logging.getLogger(__name__)


def box_fill_3d(gt: torch.Tensor) -> torch.Tensor:
    """Instance masks K×D×H×W (none empty) → their tight bounding boxes filled, K×D×H×W."""
    out = torch.zeros_like(gt, dtype=torch.bool)
    for k, mask in enumerate(gt.bool()):
        where = mask.nonzero()
        lo, hi = where.min(dim=0).values, where.max(dim=0).values + 1
        out[k, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


@torch.no_grad()
def evaluate_crops(model: PromptableModel, dataset: Dataset, *, device: str = "auto",
                   categories: dict[int, str] | None = None) -> SliceReport:
    """Dice / IoU of one centre click per class of every crop of `dataset` (items: image
    1×S×S×S raw, masks K×S×S×S bool, labels K, image_id, case_id), beside box-fill."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    acc = SliceMetrics(categories or getattr(dataset, "categories", None))
    centre = PromptConfig(box=False, center_point=True)
    gen = torch.Generator().manual_seed(0)  # the centre click draws nothing
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        acc.report.n_slices += 1
        masks = item["masks"].bool()
        keep = masks.flatten(1).any(dim=1)
        if not keep.any():
            acc.report.n_empty_slices += 1
            continue
        masks, labels = masks[keep], item["labels"][keep]
        emb = model.encode(model.normalize(item["image"][None].to(dev).float()))
        prompts = make_prompts_3d(masks, centre, gen)
        for name in ("points", "point_labels"):
            setattr(prompts, name, getattr(prompts, name).to(dev))
        low, _ = model.decode(emb, 0, prompts)
        pred = (model.upscale(low)[:, 0] > 0).cpu()
        k, d, h, w = masks.shape  # Dice and IoU count voxels: K×(D·H)×W scores the same
        acc.add(item["image_id"], item["case_id"], labels, masks.reshape(k, d * h, w),
                pred.reshape(k, d * h, w), box_fill_3d(masks).reshape(k, d * h, w))
    report = acc.report
    means = report.metrics()
    log.info("crop evaluation: %d crops, instance Dice %.4f (box-fill baseline %.4f)",
             report.n_slices - report.n_empty_slices, means.get("instance_dice", float("nan")),
             means.get("instance_baseline_dice", float("nan")))
    return report
