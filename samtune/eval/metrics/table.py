"""Segmentation metrics per class on 2D/3D label maps: per slice, per volume, and pooled globally.

Every metric family (overlap: `dice`, `iou`; surface: `hd95_mm`, `nsd`; topology: `cldice`)
per class of integer label maps (`case_metrics`, `slice_metrics`) with a spacing in mm per array
axis; `MetricTable` accumulates the per-case rows (MONAI's pure function + accumulator
pattern) and summarises them.

Empty-case rules (never NaN, never dropped from a mean):

| metric  | GT and pred empty | exactly one empty (miss / false positive) |
|---------|-------------------|-------------------------------------------|
| dice    | 1.0               | 0.0                                       |
| iou     | 1.0               | 0.0                                       |
| hd95_mm | 0.0               | image diagonal in mm                      |
| nsd     | 1.0               | 0.0                                       |
| cldice  | 1.0               | 0.0                                       |

Outcome per class: "true_negative" (both empty), "missed" (GT non-empty, pred empty),
"false_positive" (GT empty, pred non-empty), "detected" (both non-empty).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from samtune.eval.metrics.overlap import check_pair, dice, iou
from samtune.eval.metrics.surface import hd95_mm, nsd
from samtune.eval.metrics.topology import cldice

log = logging.getLogger(__name__)

__all__ = ["case_metrics", "slice_metrics", "MetricTable", "METRICS", "OUTCOMES", "ROW_KEYS"]

METRICS = ("dice", "iou", "hd95_mm", "nsd", "cldice")
OUTCOMES = ("true_negative", "missed", "false_positive", "detected")
ROW_KEYS = ("class_id", "class", *METRICS, "gt_voxels", "pred_voxels", "intersection_voxels",
            "gt_empty", "pred_empty", "outcome")


# ------------------------------------------------------------------ rows per class
def _outcome(gt_empty: bool, pred_empty: bool) -> str:
    if gt_empty:
        return "true_negative" if pred_empty else "false_positive"
    return "missed" if pred_empty else "detected"


def _class_row(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], class_id: int,
               name: str, tolerance_mm: float, with_cldice: bool) -> dict[str, Any]:
    """All metrics of one class on one pair of bool masks, as a row (keys `ROW_KEYS`)."""
    gt_voxels, pred_voxels = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    return {
        "class_id": int(class_id), "class": name,
        "dice": dice(pred, gt), "iou": iou(pred, gt),
        "hd95_mm": hd95_mm(pred, gt, spacing), "nsd": nsd(pred, gt, spacing, tolerance_mm),
        "cldice": cldice(pred, gt) if with_cldice else None,
        "gt_voxels": gt_voxels, "pred_voxels": pred_voxels,
        "intersection_voxels": int(np.count_nonzero(pred & gt)),
        "gt_empty": gt_voxels == 0, "pred_empty": pred_voxels == 0,
        "outcome": _outcome(gt_voxels == 0, pred_voxels == 0),
    }


def _tolerance(nsd_tolerance_mm: Mapping[int, float] | float, class_id: int) -> float:
    if isinstance(nsd_tolerance_mm, Mapping):
        if class_id not in nsd_tolerance_mm:
            raise KeyError(f"no NSD tolerance (mm) given for class {class_id}")
        return float(nsd_tolerance_mm[class_id])
    return float(nsd_tolerance_mm)


def _check_labels(pred_labels: np.ndarray, gt_labels: np.ndarray,
                  spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    check_pair(p, g, spacing)  # same shape, 2D/3D, one positive spacing per axis
    return p, g


def case_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float],
                 classes: Mapping[int, str], *,
                 nsd_tolerance_mm: Mapping[int, float] | float = 1.0,
                 cldice_classes: set[int] | None = None) -> list[dict[str, Any]]:
    """Per-class metrics of one volume (or one 2D image).

    `pred_labels`, `gt_labels`: integer label maps H×W×D (or H×W) of one shape; `spacing`: voxel
    size in mm per axis; `classes`: label value → class name (labels absent from it, such as
    background 0, are ignored); `nsd_tolerance_mm`: NSD tolerance in mm, one for all classes or
    one per class id; `cldice_classes`: class ids to score with clDice (others get None).

    Returns one row per class in `classes` order with keys `ROW_KEYS`: class_id, class, dice,
    iou, hd95_mm, nsd, cldice, gt_voxels, pred_voxels, intersection_voxels, gt_empty,
    pred_empty, outcome. Every class gets a row, empty or not (see the module's empty rules).
    """
    p, g = _check_labels(pred_labels, gt_labels, spacing)
    wanted = cldice_classes or set()
    return [_class_row(p == cid, g == cid, spacing, cid, name,
                       _tolerance(nsd_tolerance_mm, cid), cid in wanted)
            for cid, name in classes.items()]


def slice_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float],
                  classes: Mapping[int, str], axis: int = 2, *,
                  nsd_tolerance_mm: Mapping[int, float] | float = 1.0,
                  cldice_classes: set[int] | None = None) -> list[dict[str, Any]]:
    """Per-class metrics of each 2D slice of a 3D volume, taken along `axis`.

    Inputs as `case_metrics` (3D only); each slice is scored with the in-plane spacing (the
    spacing without `axis`), so its hd95_mm worst value is the slice's diagonal in mm. Only the
    (slice, class) pairs where GT or prediction is non-empty on that slice get a row: a slice
    where both are empty says nothing and would flood the means with 1.0. Rows carry the keys of
    `case_metrics` plus `slice` (index along `axis`), ordered by slice, then class.
    """
    p, g = _check_labels(pred_labels, gt_labels, spacing)
    if p.ndim != 3:
        raise ValueError(f"slice_metrics needs 3D label maps, got shape {p.shape}")
    axis = axis % 3
    in_plane = [float(s) for i, s in enumerate(spacing) if i != axis]
    wanted = cldice_classes or set()
    rows: list[dict[str, Any]] = []
    for index in range(p.shape[axis]):
        p2, g2 = np.take(p, index, axis=axis), np.take(g, index, axis=axis)
        for cid, name in classes.items():
            pm, gm = p2 == cid, g2 == cid
            if not (pm.any() or gm.any()):
                continue
            row = _class_row(pm, gm, in_plane, cid, name, _tolerance(nsd_tolerance_mm, cid),
                             cid in wanted)
            rows.append({"slice": index, **row})
    return rows


# ------------------------------------------------------------------ accumulator
def _stats(values: pd.Series) -> dict[str, float] | None:
    """mean/std (population, ddof=0)/median/min/max of the non-None values; None if there are
    none (a metric that was not requested)."""
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return None
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


class MetricTable:
    """Accumulates per-case rows from `case_metrics` (and optionally `slice_metrics`) and
    summarises them per class.

    Means are over ALL added cases: a missed structure stays in with Dice 0, NSD 0, clDice 0
    and HD95 = image diagonal, and a true negative with Dice 1 and HD95 0; nothing is dropped.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._slice_rows: list[dict[str, Any]] = []
        self._cases: list[str] = []

    def __len__(self) -> int:
        return len(self._cases)

    def add_case(self, case_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add one case's rows (from `case_metrics`); a case id may be added once."""
        if case_id in self._cases:
            raise ValueError(f"case {case_id!r} was already added")
        rows = list(rows)
        for row in rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ValueError(f"row of case {case_id!r} lacks {missing}")
        self._cases.append(case_id)
        self._rows.extend({"case_id": case_id, **row} for row in rows)

    def add_slices(self, case_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add one case's per-slice rows (from `slice_metrics`)."""
        self._slice_rows.extend({"case_id": case_id, **row} for row in rows)

    def volume_frame(self) -> pd.DataFrame:
        """One row per (case, class): case_id followed by the `ROW_KEYS` columns."""
        return pd.DataFrame(self._rows, columns=["case_id", *ROW_KEYS])

    def slice_frame(self) -> pd.DataFrame:
        """One row per (case, slice, class) added through `add_slices`."""
        return pd.DataFrame(self._slice_rows, columns=["case_id", "slice", *ROW_KEYS])

    def global_summary(self) -> dict[str, dict[str, Any]]:
        """Per class name: class_id, n_cases, for each metric mean/std/median/min/max over all
        cases (None for a metric never computed, e.g. clDice not requested), `outcomes`
        (count per outcome), and `global_dice` = Σ2|P∩G| / Σ(|P|+|G|) with voxels pooled over
        all cases (1.0 if the class is absent from every GT and prediction). Empty dict when no
        case was added."""
        frame = self.volume_frame()
        summary: dict[str, dict[str, Any]] = {}
        for (cid, name), group in frame.groupby(["class_id", "class"], sort=True):
            inter = int(group["intersection_voxels"].sum())
            total = int(group["gt_voxels"].sum() + group["pred_voxels"].sum())
            counts = group["outcome"].value_counts()
            summary[str(name)] = {
                "class_id": int(cid), "n_cases": int(len(group)),
                **{m: _stats(group[m]) for m in METRICS},
                "outcomes": {o: int(counts.get(o, 0)) for o in OUTCOMES},
                "global_dice": 2 * inter / total if total else 1.0,
                "intersection_voxels": inter, "gt_voxels": int(group["gt_voxels"].sum()),
                "pred_voxels": int(group["pred_voxels"].sum()),
            }
        log.debug("metric summary over %d cases and %d classes", len(self), len(summary))
        return summary
