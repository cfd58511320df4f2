"""Pipeline registry for the CLI: name → module, description and step plan.

Kept free of zenml imports so `run.py --list-pipelines` and `--dry-run` stay fast; a test checks
each plan against the steps the real pipeline wires.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineSpec:
    module: str
    description: str
    plan: tuple[tuple[str, tuple[str, ...]], ...]  # (step name, config sections it reads)


PREPARE_PLAN = (
    ("ingest_volumes", ("data",)),
    ("validate_volumes", ("validate", "output_dir")),
    ("convert_to_coco", ("convert",)),
    ("split_dataset", ("split", "output_dir")),
)

FINETUNE_PLAN = PREPARE_PLAN + (
    ("train_model", ("model", "train", "output_dir")),
    ("evaluate_model", ("eval", "output_dir")),
    ("evaluate_volumes", ("eval", "convert", "model", "output_dir")),
    ("register_model", ("registry",)),
)

EVALUATE_PLAN = PREPARE_PLAN + (
    ("evaluate_volumes", ("eval", "convert", "model", "output_dir")),
)

PIPELINES: dict[str, PipelineSpec] = {
    "prepare": PipelineSpec(
        "pipelines.prepare",
        "volumes on disk → validated, patient-split COCO slices under output_dir/dataset",
        PREPARE_PLAN),
    "finetune": PipelineSpec(
        "pipelines.finetune",
        "prepare (cached) → train → evaluate on the test split → register in MLflow",
        FINETUNE_PLAN),
    "evaluate": PipelineSpec(
        "pipelines.evaluate",
        "prepare (cached) → a model (eval.model_uri, or the model section: zoo name + "
        "checkpoint) on whole volumes of eval.split → predictions, metrics, biomarkers, report",
        EVALUATE_PLAN),
}
