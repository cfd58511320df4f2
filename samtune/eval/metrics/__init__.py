"""Segmentation metrics: one module per family (overlap: Dice/IoU; surface: HD95/NSD; topology:
clDice) on one mask pair, and `table`: every metric per class, per slice and per volume, pooled
and summarised (`MetricTable`). Imports numpy/torch/MONAI only, no other samtune package."""
from samtune.eval.metrics.overlap import check_pair, dice, iou
from samtune.eval.metrics.surface import hd95_mm, image_diagonal_mm, nsd
from samtune.eval.metrics.table import (
           METRICS,
           OUTCOMES,
           ROW_KEYS,
           MetricTable,
           case_metrics,
           slice_metrics,
)
from samtune.eval.metrics.topology import cldice, skeleton

__all__ = ["dice", "iou", "hd95_mm", "nsd", "cldice", "image_diagonal_mm", "case_metrics",
           "slice_metrics", "MetricTable", "METRICS", "OUTCOMES", "ROW_KEYS", "check_pair",
           "skeleton"]
