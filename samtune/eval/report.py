"""The evaluation report of one run: metric tables (CSV/JSON), biomarkers, and one HTML page.

`write_report` writes under the run's output folder:

    metrics/volume.csv            one row per case and class (case_id, class first)
    metrics/slice.csv             one row per case, slice and class (when slice rows are given)
    metrics/global.json           title, context, n_cases, per-class summary, biomarker summary
    biomarkers.csv                one row per case, class, biomarker and value (when given)
    biomarkers_summary.csv        per class × biomarker × value_name: n, MAE, bias, SD, limits
                                  of agreement (`samtune.eval.biomarkers.summarize_biomarkers`)
    report.html                   self-contained page (see `samtune.eval.report_html`)

Everything is computed and drawn in memory first; only then is each file written to a temporary
sibling and renamed into place, report.html last. A failure anywhere before the writes leaves the
previous report untouched, and no file is ever half written.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from samtune.atomic import atomic_write
from samtune.eval.report_html import render_html

log = logging.getLogger(__name__)

__all__ = ["QCCase", "ReportPaths", "montage_slice", "pick_qc_cases", "json_safe",
           "write_report"]

VOLUME_LEAD = ("case_id", "class")
SLICE_LEAD = ("case_id", "slice", "class")


@dataclass(frozen=True)
class QCCase:
    """One case's representative slice for the QC montage.

    image: H×W intensities (uint8 shown as is; any other dtype scaled from its 1st–99th
    percentile); gt, pred: H×W integer label maps (0 = background, label L drawn in the
    report palette's colour L - 1); dice: the case's Dice used to rank worst and best cases;
    slice_label: free text shown under the montage, e.g. "axis 2, slice 37"."""

    case_id: str
    dice: float
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    slice_label: str = ""

    def __post_init__(self) -> None:
        shapes = {np.shape(self.image), np.shape(self.gt), np.shape(self.pred)}
        if len(shapes) != 1 or len(np.shape(self.image)) != 2:
            raise ValueError(f"QC case {self.case_id!r}: image, gt and pred must be 2D of one "
                             f"shape, got {np.shape(self.image)}, {np.shape(self.gt)}, "
                             f"{np.shape(self.pred)}")

    @classmethod
    def from_volumes(cls, case_id: str, dice: float, image3d: np.ndarray, gt3d: np.ndarray,
                     pred3d: np.ndarray, axis: int = 2) -> QCCase:
        """The QC case of a volume, on the slice `montage_slice` picks."""
        image, gt, pred, index = montage_slice(image3d, gt3d, pred3d, axis)
        return cls(case_id, float(dice), image, gt, pred, f"axis {axis % 3}, slice {index}")


@dataclass(frozen=True)
class ReportPaths:
    """The files one `write_report` call wrote (None: not written, no input for it)."""

    out_dir: Path
    volume_csv: Path
    global_json: Path
    html: Path
    slice_csv: Path | None = None
    biomarkers_csv: Path | None = None
    biomarker_summary_csv: Path | None = None
    clicks_csv: Path | None = None
    written: list[Path] = field(default_factory=list)

    def all(self) -> list[Path]:
        """Every written path, in write order (report.html last), e.g. to log to MLflow."""
        return list(self.written)


def montage_slice(image3d: np.ndarray, gt3d: np.ndarray, pred3d: np.ndarray, axis: int = 2
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The slice along `axis` with the largest ground-truth area (nonzero voxels); where the
    ground truth is empty everywhere, the largest prediction area; where both are empty, the
    middle slice. Ties go to the lowest index. Returns (image2d, gt2d, pred2d, index)."""
    image, gt, pred = np.asarray(image3d), np.asarray(gt3d), np.asarray(pred3d)
    if image.ndim != 3 or image.shape != gt.shape or gt.shape != pred.shape:
        raise ValueError(f"image, gt and pred must be 3D of one shape, got {image.shape}, "
                         f"{gt.shape}, {pred.shape}")
    axis = axis % 3
    others = tuple(a for a in range(3) if a != axis)
    gt_area, pred_area = np.count_nonzero(gt, axis=others), np.count_nonzero(pred, axis=others)
    if gt_area.any():
        index = int(np.argmax(gt_area))
    elif pred_area.any():
        index = int(np.argmax(pred_area))
    else:
        index = image.shape[axis] // 2
    image2d, gt2d, pred2d = (np.take(a, index, axis=axis) for a in (image, gt, pred))
    return image2d, gt2d, pred2d, index


def pick_qc_cases(volume: pd.DataFrame, n: int = 3) -> tuple[list[str], list[str]]:
    """Case ids of the `n` worst (ascending) and `n` best (descending) cases by their mean Dice
    over classes; a case is never in both lists. Build `QCCase`s for these."""
    per_case = volume.groupby("case_id", sort=False)["dice"].mean().sort_values(kind="stable")
    ids = [str(c) for c in per_case.index]
    worst = ids[:n]
    best = [c for c in reversed(ids) if c not in worst][:n]
    return worst, best


def _split_qc(cases: Sequence[QCCase], n: int) -> tuple[list[QCCase], list[QCCase]]:
    """Worst `n` (ascending Dice) and best `n` (descending) of the given QC cases, disjoint."""
    ranked = sorted(cases, key=lambda c: (math.isnan(c.dice), c.dice))
    worst = ranked[:n]
    return worst, [c for c in reversed(ranked[n:])][:n]


def json_safe(value: Any) -> Any:
    """Nested mappings/sequences/numpy/pandas values → plain JSON types; NaN and ±inf → None,
    paths and other objects → str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, pd.DataFrame):
        return json_safe(value.to_dict(orient="records"))
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return value if isinstance(value, str) else str(value)


def _ordered(frame: pd.DataFrame, lead: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in lead if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    return frame[[*lead, *(c for c in frame.columns if c not in lead)]]


def write_report(out_dir: Path, *, volume: pd.DataFrame, slices: pd.DataFrame | None,
                 global_summary: Mapping[str, Any], biomarkers: pd.DataFrame | None,
                 qc_cases: Sequence[QCCase], title: str, context: Mapping[str, Any],
                 qc_per_side: int = 3, clicks: pd.DataFrame | None = None,
                 clicks_reach: pd.DataFrame | None = None) -> ReportPaths:
    """Write the metric tables, biomarker tables and report.html under `out_dir`.

    volume: `MetricTable.volume_frame()` (case_id, class, dice, iou, hd95_mm, nsd, cldice,
    outcome, gt_voxels, pred_voxels, …); slices: `MetricTable.slice_frame()` or None;
    global_summary: `MetricTable.global_summary()`; biomarkers: rows with case_id, class,
    biomarker, value_name, pred, gt, abs_error, rel_error, or None; qc_cases: candidates for the
    montage, of which the `qc_per_side` worst and best by Dice are shown; context: model,
    checkpoint, split, prompt mode, … shown in the page and stored in global.json.
    clicks / clicks_reach: `samtune.eval.click_metrics` frames (Dice after N clicks; clicks to
    the target Dice), written to metrics/clicks.csv and metrics/clicks_to_target.csv and drawn.
    """
    out_dir = Path(out_dir)
    volume = _ordered(volume, VOLUME_LEAD)
    n_cases = int(volume["case_id"].nunique())
    context = {"n_cases": n_cases, **dict(context)}
    has_bio = biomarkers is not None
    bio_summary = None
    if has_bio:
        from samtune.eval.biomarkers import summarize_biomarkers  # scipy/skimage: only if needed

        bio_summary = summarize_biomarkers(biomarkers)
    files: dict[str, bytes] = {"metrics/volume.csv": volume.to_csv(index=False).encode()}
    if slices is not None:
        files["metrics/slice.csv"] = _ordered(slices, SLICE_LEAD).to_csv(index=False).encode()
    payload = {"title": title, "context": context, "n_cases": n_cases, "classes": global_summary,
               "biomarkers": bio_summary}
    files["metrics/global.json"] = (json.dumps(json_safe(payload), indent=2, allow_nan=False)
                                    + "\n").encode()
    if has_bio:
        files["biomarkers.csv"] = biomarkers.to_csv(index=False).encode()
        files["biomarkers_summary.csv"] = bio_summary.to_csv(index=False).encode()
    interactive = ""
    if clicks is not None:
        from samtune.eval.report_clicks import clicks_section

        files["metrics/clicks.csv"] = clicks.to_csv(index=False).encode()
        if clicks_reach is not None:
            files["metrics/clicks_to_target.csv"] = clicks_reach.to_csv(index=False).encode()
        interactive = clicks_section(clicks, clicks_reach)
    worst, best = _split_qc(qc_cases, qc_per_side)
    page = render_html(title=title, context=json_safe(context), volume=volume,
                       global_summary=global_summary, biomarker_summary=bio_summary,
                       biomarkers=biomarkers, worst=worst, best=best, sections=[interactive])
    files["report.html"] = page.encode("utf-8")  # last: its presence means the report is whole

    written = []
    for rel, data in files.items():
        atomic_write(out_dir / rel, lambda f, data=data: f.write(data))
        written.append(out_dir / rel)
    log.info("evaluation report (%d cases) written to %s: %s", n_cases, out_dir,
             ", ".join(files))
    return ReportPaths(
        out_dir=out_dir, volume_csv=out_dir / "metrics/volume.csv",
        global_json=out_dir / "metrics/global.json", html=out_dir / "report.html",
        slice_csv=out_dir / "metrics/slice.csv" if slices is not None else None,
        biomarkers_csv=out_dir / "biomarkers.csv" if has_bio else None,
        biomarker_summary_csv=out_dir / "biomarkers_summary.csv" if has_bio else None,
        clicks_csv=out_dir / "metrics/clicks.csv" if clicks is not None else None,
        written=written)
