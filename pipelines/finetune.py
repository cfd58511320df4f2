"""`finetune`: prepare (cached) → train → evaluate (slices, then volumes) → register in MLflow
→ promote to champion only with evidence of a better model."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.prepare import prepare_dataset
from steps.evaluate_model import evaluate_model
from steps.evaluate_volumes import evaluate_volumes
from steps.promote_model import promote_model
from steps.register_model import register_model
from steps.train_model import train_model


def train_and_ship(config: dict[str, Any], dataset: Any, cases: Any) -> None:
    """train → evaluate → register → promote, wired; `retrain` reuses it."""
    tracker = config["stack"]["experiment_tracker"]
    model = train_model.with_options(experiment_tracker=tracker)(
        dataset, model=config["model"], train=config["train"], config=config,
        output_dir=config["output_dir"])
    metrics = evaluate_model.with_options(experiment_tracker=tracker)(
        model, dataset, evaluation=config["eval"], output_dir=config["output_dir"])
    volume_metrics = evaluate_volumes.with_options(experiment_tracker=tracker)(
        dataset, cases, evaluation=config["eval"], convert=config["convert"],
        model_config=config["model"], output_dir=config["output_dir"], model=model)
    registered = register_model.with_options(experiment_tracker=tracker)(
        model, metrics, dataset, registry=config["registry"], config=config,
        volume_metrics=volume_metrics)
    promote_model.with_options(experiment_tracker=tracker)(
        dataset, cases, registry=config["registry"], evaluation=config["eval"],
        convert=config["convert"], output_dir=config["output_dir"], registered=registered,
        volume_metrics=volume_metrics)


@pipeline
def finetune(config: dict[str, Any]) -> None:
    dataset, cases = prepare_dataset(config)
    train_and_ship(config, dataset, cases)
