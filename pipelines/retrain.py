"""`retrain`: finetune on a schedule, skipped when the data has not changed since the champion
was trained (a dynamic pipeline: the gate's answer decides which steps run)."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.finetune import train_and_ship
from pipelines.prepare import prepare_dataset
from steps.check_retrain import check_retrain


@pipeline(dynamic=True)
def retrain(config: dict[str, Any]) -> None:
    dataset, cases = prepare_dataset(config)
    gate = check_retrain.with_options(experiment_tracker=config["stack"]["experiment_tracker"])(
        dataset, registry=config["registry"])
    if gate.load()["retrain"]:
        train_and_ship(config, dataset, cases)
