"""Evaluate a model on whole volumes: predict (prompts from ground truth on every slice, or one
key-slice prompt propagated), reassemble on the source grid, write the prediction with the
source affine, score per class (Dice, IoU, HD95, NSD, clDice) at slice, volume and global
level, compute the selected biomarkers, and write the report.

    result = evaluate_volumes(loaded, cases, convert_cfg, eval_cfg, Path("outputs/demo"))

Output contract under `out_dir`: predictions/<case_id>.nii.gz (.nrrd for NRRD inputs),
metrics/slice.csv, metrics/volume.csv, metrics/global.json, biomarkers.csv, report.html.
A case without a label cannot be scored: ValueError naming it (use the `infer` pipeline).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from samtune.config import ConvertConfig, EvalConfig, PromptConfig
from samtune.data import io as data_io
from samtune.data.cases import Case
from samtune.data.io_formats import write_volume
from samtune.data.render import SliceGrid
from samtune.data.maps import read_maps
from samtune.eval.biomarkers.maps import compute_map_biomarkers, needs_map
from samtune.eval.click_metrics import click_rows, clicks_frame, clicks_to_reach_frame
from samtune.eval.metrics import MetricTable, case_metrics, slice_metrics
from samtune.eval.report import QCCase, ReportPaths, write_report
from samtune.inference.click_eval import predict_with_clicks
from samtune.inference.gt_prompts import gt_instances, predict_with_gt_prompts
from samtune.inference.model_source import LoadedModel
from samtune.inference.outputs import prediction_path
from samtune.inference.predictor import SlicePredictor
from samtune.inference.propagate import (
    key_boxes,
    key_slice_of,
    propagate_boxes,
    propagate_video,
)
from samtune.inference.reassemble import reassemble
from samtune.models.registry import build_architecture

__all__ = ["VolumeEvalResult", "evaluate_volumes", "predict_case",
           "split_cases"]
log = logging.getLogger(__name__)


@dataclass
class VolumeEvalResult:
    """Per-volume rows, global summary (per class), biomarker rows and the written paths."""

    volume: pd.DataFrame
    global_summary: dict[str, Any]
    biomarkers: pd.DataFrame | None
    paths: ReportPaths
    clicks: pd.DataFrame | None = None  # Dice after N clicks (samtune.eval.click_metrics)

    def per_volume_dice(self) -> dict[str, float]:
        """case_id → mean Dice over the classes (the promotion statistic)."""
        return {str(k): float(v) for k, v in self.volume.groupby("case_id")["dice"].mean().items()}

    def metrics(self) -> dict[str, float]:
        """Flat means for tracking: volume_<metric>_<class>, plus volume_dice (all classes)."""
        out = {"volume_dice": float(self.volume["dice"].mean())}
        for name, s in self.global_summary.items():
            for metric in ("dice", "iou", "hd95_mm", "nsd", "cldice"):
                value = (s.get(metric) or {}).get("mean")
                if value is not None:
                    out[f"volume_{metric}_{name}"] = float(value)
            out[f"global_dice_{name}"] = float(s["global_dice"])
        return out


def split_cases(cases: Sequence[Case], dataset_dir: Path, split: str) -> list[Case]:
    """The cases of `split` ("all": every case of the split table), in case-id order, from the
    export's splits.json."""
    table = json.loads((Path(dataset_dir) / "splits.json").read_text())["cases"]
    chosen = [c for c in cases
              if c.case_id in table and (split == "all" or table[c.case_id] == split)]
    return sorted(chosen, key=lambda c: c.case_id)


def _prompt_cfg(eval_cfg: EvalConfig) -> PromptConfig:
    points = eval_cfg.prompt == "points"
    return PromptConfig(box=not points, bbox_shift=eval_cfg.bbox_shift,
                        positive_points=eval_cfg.points if points else 0, center_point=points,
                        multimask=eval_cfg.multimask)


def predict_case(predictor: SlicePredictor, grid: SliceGrid, instances: dict, eval_cfg: EvalConfig,
                 family: str) -> dict[int, np.ndarray]:
    """Slice label maps of one volume under eval_cfg.mode ("slices": GT prompts on every slice;
    "propagate": the key slice's GT boxes, propagated)."""
    if eval_cfg.mode == "slices":
        return predict_with_gt_prompts(predictor, grid, instances, _prompt_cfg(eval_cfg),
                                       batch_size=eval_cfg.batch_size, seed=eval_cfg.seed)
    if not instances:
        return {}
    key = key_slice_of(instances)
    inst = instances[key]
    boxes = key_boxes(inst)
    if family == "sam2":
        return propagate_video(predictor, grid, key, boxes, inst.labels)
    return propagate_boxes(predictor, grid, key, boxes, inst.labels,
                           margin=eval_cfg.propagate_margin, key_instances=inst)


def _predictor(loaded: LoadedModel, convert_cfg: ConvertConfig) -> SlicePredictor:
    """`loaded` ready for convert.img_size² slices. The oracle's grid is the slice grid unless
    model.img_size is set (samtune.models.oracle): at the zoo's default 256, a 1024 slice grid's
    nearest round trip deleted 1-voxel lesions (MS-lesion volume Dice 0.77–0.91)."""
    model = loaded.model
    if loaded.family == "oracle" and loaded.config.img_size is None:
        model = build_architecture(loaded.config.name, convert_cfg.img_size)
    return SlicePredictor(model.to(loaded.device).eval(), convert_cfg.img_size, loaded.stats,
                          loaded.device)


def _class_ids(names: Sequence[str] | str, classes: dict[int, str]) -> set[int]:
    if names == "all":
        return set(classes)
    unknown = sorted(set(names) - set(classes.values()))
    if unknown:
        raise ValueError(f"eval.cldice_classes: unknown class(es) {unknown}; the dataset has "
                         f"{sorted(classes.values())}")
    return {k for k, v in classes.items() if v in names}


def evaluate_volumes(loaded: LoadedModel, cases: Sequence[Case], convert_cfg: ConvertConfig,
                     eval_cfg: EvalConfig, out_dir: Path, classes: dict[int, str], *,
                     title: str = "samtune evaluation",
                     baseline: LoadedModel | None = None) -> VolumeEvalResult:
    """Evaluate `loaded` on `cases` (labelled) and write the output contract under out_dir.
    With eval.clicks, Dice after N simulated clicks too (`samtune.eval.click_metrics`), and
    for `baseline` (the zero-shot base of a fine-tuned model) beside it."""
    out_dir = Path(out_dir)
    unlabelled = [c.case_id for c in cases if c.label_path is None]
    if unlabelled:
        raise ValueError(f"cases without labels cannot be evaluated: {', '.join(unlabelled)}; "
                         "use the `infer` pipeline for unlabelled volumes")
    if not cases:
        raise ValueError(f"no cases in split '{eval_cfg.split}' to evaluate")
    if getattr(loaded.model, "spatial_dims", 2) == 3:  # SAM-Med3D: its crops, its clicks
        from samtune.eval.volume_predict3d import Volumes3D

        predict: Any = Volumes3D(loaded, eval_cfg, convert_cfg, classes, baseline)
    else:
        predict = _Slices(loaded, eval_cfg, convert_cfg, classes, baseline)
    tol = eval_cfg.nsd_tolerance_mm
    nsd_tol = {k: tol.get(v, 1.0) for k, v in classes.items()} if isinstance(tol, dict) else tol
    cl_ids = _class_ids(eval_cfg.cldice_classes, classes)
    table, bio_rows, qc, clicks = MetricTable(), [], [], []
    for case in tqdm(cases, desc="evaluate", unit="vol"):
        vol = data_io.load_volume(case)
        gt = np.rint(vol.label).astype(np.int32) if vol.label.dtype.kind == "f" \
            else vol.label.astype(np.int32)
        pred, axis, case_clicks = predict(vol, gt)
        clicks += case_clicks
        if eval_cfg.save_predictions:
            write_volume(prediction_path(out_dir, case), pred.astype(np.uint8 if pred.max() < 256
                                                                     else np.int16), vol.affine)
        rows = case_metrics(pred, gt, vol.spacing, classes, nsd_tolerance_mm=nsd_tol,
                            cldice_classes=cl_ids)
        table.add_case(case.case_id, rows)
        if eval_cfg.slice_metrics:
            table.add_slices(case.case_id, slice_metrics(pred, gt, vol.spacing, classes,
                                                         axis=axis, nsd_tolerance_mm=nsd_tol))
        maps = read_maps(vol) if needs_map(eval_cfg.biomarkers) else {}  # qmap_* per map
        for cid, name in classes.items() if eval_cfg.biomarkers else ():
            for r in compute_map_biomarkers(pred == cid, gt == cid, vol.spacing,
                                            eval_cfg.biomarkers, maps, where=case.case_id):
                bio_rows.append({"case_id": case.case_id, "class": name, **r})
        dice = float(np.mean([r["dice"] for r in rows]))
        qc.append(QCCase.from_volumes(case.case_id, dice, vol.image[0], gt, pred, axis=axis))
        log.info("%s: Dice %s", case.case_id, ", ".join(f"{r['class']} {r['dice']:.4f}"
                                                         for r in rows))
    bio = pd.DataFrame(bio_rows) if bio_rows else None
    context = {"model": loaded.description, "split": eval_cfg.split, "mode": eval_cfg.mode,
               "prompt": eval_cfg.prompt, "cases": len(cases), "img_size": convert_cfg.img_size}
    volume, summary = table.volume_frame(), table.global_summary()
    clicked = bool(eval_cfg.clicks)
    click_table = clicks_frame(clicks, eval_cfg.clicks) if clicked else None
    paths = write_report(out_dir, volume=volume,
                         slices=table.slice_frame() if eval_cfg.slice_metrics else None,
                         global_summary=summary, biomarkers=bio, qc_cases=qc,
                         title=title, context=context, qc_per_side=eval_cfg.qc_cases,
                         clicks=click_table,
                         clicks_reach=(clicks_to_reach_frame(clicks, eval_cfg.click_target)
                                       if clicked else None))
    return VolumeEvalResult(volume, summary, bio, paths, click_table)


class _Slices:
    """2D models: a volume's slices on convert's grid, prompted from the ground truth (or
    propagated), reassembled on the source grid; with eval.clicks, Dice after N clicks per
    instance of every slice, for the model and the zero-shot `baseline`."""

    def __init__(self, loaded: LoadedModel, eval_cfg: EvalConfig, convert_cfg: ConvertConfig,
                 classes: dict[int, str], baseline: LoadedModel | None):
        self.loaded, self.eval_cfg, self.convert_cfg, self.classes = (loaded, eval_cfg,
                                                                      convert_cfg, classes)
        self.predictor = _predictor(loaded, convert_cfg)
        self.clickers = [(self.predictor, "evaluated")] if eval_cfg.clicks else []
        if eval_cfg.clicks and baseline is not None:
            self.clickers.append((_predictor(baseline, convert_cfg), "zero-shot"))

    def __call__(self, vol: Any, gt: np.ndarray) -> tuple[np.ndarray, int, list[dict]]:
        """→ (label volume on the source grid, the source axis the slices cut, click rows)."""
        cfg, case_id = self.convert_cfg, vol.case.case_id
        grid = SliceGrid.build(vol, cfg)
        if max(grid.slice_shape) > cfg.img_size:
            log.warning("%s: %s slices shrink to convert.img_size %d: structures thinner than "
                        "a slice-grid pixel can vanish before any model sees them", case_id,
                        "×".join(map(str, grid.slice_shape)), cfg.img_size)
        instances = gt_instances(vol, cfg, list(self.classes), grid)
        pred = reassemble(grid, predict_case(self.predictor, grid, instances, self.eval_cfg,
                                             self.loaded.family))
        rows: list[dict] = []
        for clicker, name in self.clickers:
            maps = predict_with_clicks(clicker, grid, instances, max(self.eval_cfg.clicks),
                                       batch_size=self.eval_cfg.batch_size)
            rows += click_rows(case_id, {n: reassemble(grid, m) for n, m in maps.items()}, gt,
                               self.classes, name)
        return pred, grid.transform(0)["original_axis"], rows
