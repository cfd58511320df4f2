"""`promote`: judge registry.challenger against the champion on the test volumes (or, with
registry.rollback=true, give the champion alias back to the previous champion)."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.prepare import prepare_dataset
from steps.promote_model import promote_model


@pipeline
def promote(config: dict[str, Any]) -> None:
    dataset, cases = prepare_dataset(config)
    promote_model.with_options(experiment_tracker=config["stack"]["experiment_tracker"])(
        dataset, cases, registry=config["registry"], evaluation=config["eval"],
        convert=config["convert"], output_dir=config["output_dir"])
