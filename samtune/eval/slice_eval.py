"""Slice-level evaluation with GT-box prompts, side by side with the box-fill baseline.

For each slice every instance is prompted with its tight ground-truth box (no jitter); the slice
is encoded once and all its instances share the embedding; the prediction is
sigmoid(upscaled logits) > 0.5 on the model's S×S grid. The **box-fill baseline** predicts the
whole prompt box (filled rectangle, inclusive corners) for the same instances: the score a model
must beat to have learned anything beyond the box it was given.

Scores (MONAI `compute_dice` / `compute_iou` on binary masks):
- per instance: the instance's mask against its own ground truth;
- per slice and class: the union of the class's predicted instance masks against the union of
  its ground-truth instances on that slice.

Empty cases: a slice without instances, and an instance whose mask is empty on the model grid
(a component that vanished in the resize), is not prompted and not scored — there is no box to
prompt with; both are counted (`n_empty_slices`, `n_empty_instances`). An empty prediction
against a non-empty ground truth scores Dice 0 and IoU 0 and stays in every mean. For the pure
functions, an empty ground truth scores 1 against an empty prediction and 0 otherwise (MONAI's
`ignore_empty=False`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from samtune.models.base import PromptableModel, Prompts
from samtune.models.device import resolve_device
from samtune.models.normalization import normalize
from samtune.models.prompts import box_from_mask, boxes_to_mask, jitter_boxes

log = logging.getLogger(__name__)

SCORES = ("dice", "iou", "baseline_dice", "baseline_iou")


# ------------------------------------------------------------------ pure metric functions
def dice_iou(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks N×H×W (pred and gt) → (Dice N, IoU N) as float64 on the CPU; see the module
    docstring for empty masks."""
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both be N×H×W, got {tuple(pred.shape)} and "
                         f"{tuple(gt.shape)}")
    from monai.metrics import (  # here: importing monai takes seconds
        compute_dice,
        compute_iou,
    )

    if len(pred) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty.clone()
    p, g = pred.bool()[:, None].float(), gt.bool()[:, None].float()
    dice = compute_dice(p, g, include_background=True, ignore_empty=False)
    iou = compute_iou(p, g, include_background=True, ignore_empty=False)
    return dice.flatten().double().cpu(), iou.flatten().double().cpu()


def box_fill(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance masks K×H×W (none empty) → (tight boxes K×4 (x0, y0, x1, y1) inclusive, the
    box-fill baseline prediction K×H×W bool)."""
    boxes = box_from_mask(gt)
    return boxes, boxes_to_mask(boxes, tuple(gt.shape[-2:]))


def union_by_class(masks: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """K×H×W masks with K class ids → {class id: H×W union of that class's masks}, in
    ascending class id order."""
    return {int(c): masks[labels == c].any(dim=0) for c in torch.unique(labels).tolist()}


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """{"mean", "std" (population, ddof 0), "min", "max", "n"}; with n = 0 all but n are None.
    NaN values are not expected (no score is ever NaN here) and would propagate."""
    if len(values) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max()), "n": int(a.size)}


def _side_by_side(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict]]:
    return {"model": {"dice": summarize([r["dice"] for r in rows]),
                      "iou": summarize([r["iou"] for r in rows])},
            "baseline": {"dice": summarize([r["baseline_dice"] for r in rows]),
                         "iou": summarize([r["baseline_iou"] for r in rows])}}


# ------------------------------------------------------------------ report + accumulator
@dataclass
class SliceReport:
    """Per-instance and per-slice-and-class rows (image_id, case_id, class, class_id, dice, iou,
    baseline_dice, baseline_iou; slice rows add n_instances) with counts, and `qc`: a few
    evaluated slices kept for figures (image H×W×3 uint8, gt/pred masks K×H×W bool, boxes K×4)."""

    instances: list[dict[str, Any]] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list)
    n_slices: int = 0
    n_empty_slices: int = 0
    n_empty_instances: int = 0
    qc: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """{"instance"|"slice": {"overall": side by side, "per_class": {name: side by side}}},
        side by side = {"model"|"baseline": {"dice"|"iou": summarize(...)}}, plus "counts"."""
        out: dict[str, Any] = {}
        for level, rows in (("instance", self.instances), ("slice", self.slices)):
            classes = sorted({r["class"] for r in rows})
            out[level] = {"overall": _side_by_side(rows),
                          "per_class": {c: _side_by_side([r for r in rows if r["class"] == c])
                                        for c in classes}}
        out["counts"] = {"slices": self.n_slices, "evaluated_slices": self.n_slices -
                         self.n_empty_slices, "empty_slices": self.n_empty_slices,
                         "instances": len(self.instances),
                         "empty_instances": self.n_empty_instances}
        return out

    def metrics(self) -> dict[str, float]:
        """Flat scalars for trackers: `{instance,slice}_{dice,iou,baseline_dice,baseline_iou}`
        means (NaN-free: levels without rows are left out)."""
        flat = {}
        for level, rows in (("instance", self.instances), ("slice", self.slices)):
            for key in SCORES:
                if rows:
                    flat[f"{level}_{key}"] = float(np.mean([r[key] for r in rows]))
        return flat

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: summary, counts, and the instance and slice rows."""
        return {"summary": self.summary(), "instances": list(self.instances),
                "slices": list(self.slices)}

    def to_frame(self, level: str = "instance") -> Any:
        """pandas DataFrame, one row per instance (or per slice and class with "slice")."""
        import pandas as pd

        rows = self.instances if level == "instance" else self.slices
        columns = ["image_id", "case_id", "class", "class_id", *SCORES]
        if level != "instance":
            columns.append("n_instances")
        return pd.DataFrame(rows, columns=columns)


class SliceMetrics:
    """Accumulates scored slices into a `SliceReport`; `class_names` maps ids to names."""

    def __init__(self, class_names: Mapping[int, str] | None = None, qc_slices: int = 0):
        self.class_names = dict(class_names or {})
        self.qc_slices = qc_slices
        self.report = SliceReport()

    def _name(self, class_id: int) -> str:
        return self.class_names.get(class_id, str(class_id))

    def add(self, image_id: Any, case_id: str, labels: torch.Tensor, gt: torch.Tensor,
            pred: torch.Tensor, baseline: torch.Tensor) -> None:
        """One evaluated slice: K class ids, ground truth, prediction and box-fill masks
        K×H×W (K ≥ 1, no empty ground truth)."""
        labels = labels.cpu()
        dice, iou = dice_iou(pred, gt)
        b_dice, b_iou = dice_iou(baseline, gt)
        for k, c in enumerate(labels.tolist()):
            self.report.instances.append(self._row(image_id, case_id, c, dice[k], iou[k],
                                                   b_dice[k], b_iou[k]))
        classes = sorted(int(c) for c in torch.unique(labels))
        gt_u, pred_u, base_u = (torch.stack(list(union_by_class(m.cpu(), labels).values()))
                                for m in (gt, pred, baseline))  # C×H×W, classes ascending
        s_dice, s_iou = dice_iou(pred_u, gt_u)
        sb_dice, sb_iou = dice_iou(base_u, gt_u)
        for j, c in enumerate(classes):
            row = self._row(image_id, case_id, c, s_dice[j], s_iou[j], sb_dice[j], sb_iou[j])
            row["n_instances"] = int((labels == c).sum())
            self.report.slices.append(row)

    def _row(self, image_id: Any, case_id: str, class_id: int, *scores: torch.Tensor
             ) -> dict[str, Any]:
        row: dict[str, Any] = {"image_id": image_id, "case_id": case_id,
                               "class": self._name(class_id), "class_id": class_id}
        row.update({k: float(v) for k, v in zip(SCORES, scores)})
        return row


# ------------------------------------------------------------------ model evaluation
def _normalize(model: PromptableModel, images: torch.Tensor, stats: Any) -> torch.Tensor:
    """B×3×S×S on 0–255 → normalised with the dataset's (mean, std) when it carries them
    (`SliceDataset.normalization`), else with the model's own pixel statistics."""
    return model.normalize(images) if stats is None else normalize(images, *stats)


def _predict_slice(model: PromptableModel, emb: Any, b: int, gt: torch.Tensor, shift: int = 0,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image b's non-empty instances K×S×S → (boxes K×4, prediction K×S×S bool, box-fill
    baseline K×S×S bool), all prompts decoded against the one embedding. Boxes are tight, or
    each side moved outwards by up to `shift` pixels (a user's box); the baseline fills the
    very box the model is given."""
    boxes, baseline = box_fill(gt)
    if shift:
        boxes = jitter_boxes(boxes, shift, gt.shape[-1], generator or torch.Generator())
        baseline = boxes_to_mask(boxes, tuple(gt.shape[-2:]))
    logits, _ = model.decode(emb, b, Prompts(boxes=boxes))
    pred = torch.sigmoid(model.upscale(logits)[:, 0].float()) > 0.5
    return boxes, pred, baseline


def _instances(item: Mapping[str, Any], report: SliceReport
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An item's non-empty instance masks K×S×S and labels K, counting the empty ones; None for a
    slice left with no instance (not prompted, not scored)."""
    report.n_slices += 1
    masks = item["masks"].bool()
    keep = masks.flatten(1).any(dim=1)
    report.n_empty_instances += int((~keep).sum())
    if not keep.any():
        report.n_empty_slices += 1
        return None
    return masks[keep], item["labels"][keep]


def _evaluate_batch(model: PromptableModel, items: list[Mapping[str, Any]], acc: SliceMetrics,
                    dev: torch.device, stats: Any, shift: int = 0,
                    generator: torch.Generator | None = None) -> None:
    """One encoder pass over the batch's slices that have instances, then one decode per slice."""
    kept = [(it, *inst) for it in items if (inst := _instances(it, acc.report)) is not None]
    if not kept:
        return
    images = torch.stack([it["image"] for it, _, _ in kept]).to(dev, torch.float32)
    emb = model.encode(_normalize(model, images, stats))
    for b, (it, gt, labels) in enumerate(kept):
        gt = gt.to(dev)
        boxes, pred, baseline = _predict_slice(model, emb, b, gt, shift, generator)
        acc.add(it["image_id"], str(it["case_id"]), labels, gt, pred, baseline)
        if len(acc.report.qc) < acc.qc_slices:
            image = it["image"].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8)
            acc.report.qc.append({"image_id": it["image_id"], "case_id": str(it["case_id"]),
                                  "image": image.numpy(), "gt_masks": gt.cpu().numpy(),
                                  "pred_masks": pred.cpu().numpy(), "boxes": boxes.cpu().numpy(),
                                  "labels": labels.cpu().numpy()})


def evaluate_slices(model: PromptableModel, dataset: Any, *, batch_size: int,
                    device: str | torch.device = "auto", qc_slices: int = 0,
                    bbox_shift: int = 0, seed: int = 0) -> SliceReport:
    """Score `model` on every slice of `dataset` with GT-box prompts (module docstring).

    dataset: a `samtune.train.data.SliceDataset` (or anything whose items are dicts with
    image 3×S×S on 0–255, masks K×S×S bool, labels K, image_id, case_id; `categories` id → name
    and `normalization` (mean, std) are used when present). batch_size: slices per encoder pass.
    The model is moved to `device` and left there, in the train/eval mode it came in.
    qc_slices: keep the first n evaluated slices in `report.qc` for `figures.qc_overlay`.
    bbox_shift: move each box side outwards by up to this many pixels (drawn with `seed`); the
    box-fill baseline then fills the same enlarged box.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    stats = getattr(dataset, "normalization", None)
    acc = SliceMetrics(getattr(dataset, "categories", None), qc_slices)
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                stop = min(start + batch_size, len(dataset))
                _evaluate_batch(model, [dataset[i] for i in range(start, stop)], acc, dev, stats,
                                bbox_shift, generator)
    finally:
        model.train(was_training)
    report, means = acc.report, acc.report.metrics()
    log.info("slice evaluation: %d slices (%d without instances), %d instances; Dice %.4f "
             "(box-fill baseline %.4f)", report.n_slices, report.n_empty_slices,
             len(report.instances), means.get("instance_dice", math.nan),
             means.get("instance_baseline_dice", math.nan))
    return report
