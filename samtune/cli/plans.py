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
    ("promote_model", ("registry", "eval", "convert", "output_dir")),
)

RETRAIN_PLAN = (PREPARE_PLAN + (("check_retrain", ("registry",)),)
                + FINETUNE_PLAN[len(PREPARE_PLAN):])

PROMOTE_PLAN = PREPARE_PLAN + (("promote_model", ("registry", "eval", "convert", "output_dir")),)

EVALUATE_PLAN = PREPARE_PLAN + (
    ("evaluate_volumes", ("eval", "convert", "model", "output_dir")),
)

INFER_PLAN = (("infer_volumes", ("infer", "data", "convert", "model", "eval", "output_dir")),)

BENCHMARK_PLAN = PREPARE_PLAN + (  # benchmark_cell: once per cell (run.py --dry-run lists them)
    ("benchmark_cell", ("benchmark", "model", "train", "eval", "convert", "output_dir")),
    ("summarize_benchmark", ("output_dir",)),
)

PIPELINES: dict[str, PipelineSpec] = {
    "prepare": PipelineSpec(
        "pipelines.prepare",
        "volumes on disk → validated, patient-split COCO slices under output_dir/dataset",
        PREPARE_PLAN),
    "finetune": PipelineSpec(
        "pipelines.finetune",
        "prepare (cached) → train → evaluate (slices, volumes) → register in MLflow → promote "
        "only with evidence of a better model",
        FINETUNE_PLAN),
    "evaluate": PipelineSpec(
        "pipelines.evaluate",
        "prepare (cached) → a model (eval.model_uri, or the model section: zoo name + "
        "checkpoint) on whole volumes of eval.split → predictions, metrics, biomarkers, report",
        EVALUATE_PLAN),
    "infer": PipelineSpec(
        "pipelines.infer",
        "a model (eval.model_uri, or the model section) on new volumes (infer.input, or the "
        "data section's unlabelled cases) → inference/ masks + overlays, inference.json",
        INFER_PLAN),
    "benchmark": PipelineSpec(
        "pipelines.benchmark",
        "prepare (cached) → one finetune + evaluate per cell of benchmark.models × methods × "
        "datasets → benchmark/benchmark.{csv,json,md}",
        BENCHMARK_PLAN),
    "retrain": PipelineSpec(
        "pipelines.retrain",
        "finetune, skipped when the dataset fingerprint equals the champion's training data "
        "(schedule.cron: a CronJob on the k8s stack)", RETRAIN_PLAN),
    "promote": PipelineSpec(
        "pipelines.promote",
        "judge registry.challenger against the champion on the same test volumes (paired "
        "bootstrap); registry.rollback=true gives the champion alias back to `previous`",
        PROMOTE_PLAN),
}


def plan_lines(config: dict, pipeline: str) -> list[str]:
    """`run.py --dry-run`: the resolved config (a `Config.to_dict()`) as YAML and the step plan."""
    import yaml

    lines = [f"# resolved config ({pipeline})",
             yaml.safe_dump(config, sort_keys=False).rstrip("\n"), f"# step plan: {pipeline}"]
    lines += [f"  {i}. {step:<18} ← {', '.join(sections)}"
              for i, (step, sections) in enumerate(PIPELINES[pipeline].plan, 1)]
    return lines
