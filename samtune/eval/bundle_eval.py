"""Score a trained model bundle on the slices of an exported dataset (what the evaluate step
calls): Dice / IoU with ground-truth box prompts beside the box-fill baseline, QC overlays.
A 3D model (SAM-Med3D) on a 3D export (`<dataset>/volumes3d`) is scored on its class-centred
crops instead (`samtune.eval.crop_eval`: one centre click per class beside 3D box-fill).

    report = evaluate_bundle(bundle, Path("outputs/demo/dataset"), cfg.eval)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from samtune.config import EvalConfig
from samtune.data.cases import DataError
from samtune.eval.crop_eval import evaluate_crops
from samtune.eval.slice_eval import SliceReport, evaluate_slices
from samtune.figures import qc_overlay
from samtune.models.bundle import ModelBundle
from samtune.models.registry import build_model, is_volumetric
from samtune.train.data import SliceDataset


class _Splits(Dataset):
    """Several SliceDatasets (or CropDatasets) read as one (eval.split: all)."""

    def __init__(self, parts: list[Any]):
        self.parts = [p for p in parts if len(p)]
        self.categories = parts[0].categories if parts else {}
        self.normalization = parts[0].normalization if parts else None

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)


def evaluate_bundle(bundle: ModelBundle, dataset_dir: Path, eval_cfg: EvalConfig, *,
                    device: str = "auto", qc_dir: Path | None = None,
                    qc_slices: int = 6) -> SliceReport:
    """Slice-level Dice / IoU with GT-box prompts on `eval_cfg.split`, beside the box-fill
    baseline; QC overlays of the first `qc_slices` slices go to `qc_dir` when given."""
    info = json.loads((bundle.root / "model.json").read_text())
    model_cfg = bundle.model_config()
    model = build_model(model_cfg)
    splits = ["train", "val", "test"] if eval_cfg.split == "all" else [eval_cfg.split]
    if is_volumetric(model_cfg.name):
        return _evaluate_crops(model, Path(dataset_dir), splits, device)
    stats = (tuple(tuple(v) for v in info["normalization"])
             if info.get("normalization") else None)
    parts = [SliceDataset(Path(dataset_dir) / s, model.img_size, normalization_stats=stats,
                          preprocess=model.preprocess)
             for s in splits if (Path(dataset_dir) / s / "annotations.json").is_file()]
    dataset = _Splits(parts)
    if len(dataset) == 0:
        raise ValueError(f"{dataset_dir}: no slices in split(s) {splits} to evaluate")
    report = evaluate_slices(model, dataset, batch_size=eval_cfg.batch_size, device=device,
                             qc_slices=qc_slices if qc_dir else 0,
                             bbox_shift=eval_cfg.bbox_shift, seed=eval_cfg.seed)
    for i, qc in enumerate(report.qc):
        qc_overlay(qc["image"], qc["gt_masks"], {"boxes": qc["boxes"]}, qc["pred_masks"],
                   Path(qc_dir) / f"qc_{i:02d}_{qc['case_id']}_{qc['image_id']}.png")
    return report


def _evaluate_crops(model: Any, dataset_dir: Path, splits: list[str], device: str) -> SliceReport:
    """A 3D model: the deterministic class-centred crops of `splits` of the 3D export."""
    from samtune.train.data3d import CropDataset  # the 2D path never needs the 3D reader

    if not (dataset_dir / "volumes3d").is_dir():
        raise ValueError(f"{dataset_dir}: a 3D model needs the 3D export (volumes3d/)")
    parts = []
    for split in splits:
        try:
            parts.append(CropDataset(dataset_dir, split, model.img_size, deterministic=True,
                                     min_voxels=1))
        except DataError:
            continue  # a split without labelled foreground has nothing to score
    dataset = _Splits(parts)
    if len(dataset) == 0:
        raise ValueError(f"{dataset_dir}: no labelled crops in split(s) {splits} to evaluate")
    return evaluate_crops(model, dataset, device=device)
