"""`evaluate`: prepare (cached) → a given model on whole volumes of eval.split → report."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.prepare import prepare_dataset
from steps.evaluate_volumes import evaluate_volumes


@pipeline
def evaluate(config: dict[str, Any]) -> None:
    dataset, cases = prepare_dataset(config)
    evaluate_volumes.with_options(experiment_tracker=config["stack"]["experiment_tracker"])(
        dataset, cases, evaluation=config["eval"], convert=config["convert"],
        model_config=config["model"], output_dir=config["output_dir"])
