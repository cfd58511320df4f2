"""`infer`: a model (eval.model_uri, or the model section) on new, unlabelled volumes → label
volumes, overlay PNGs and inference.json under output_dir (no prepare: nothing is converted)."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.infer_volumes import infer_volumes


@pipeline
def infer(config: dict[str, Any]) -> None:
    infer_volumes(inference=config["infer"], data=config["data"], convert=config["convert"],
                  model_config=config["model"], model_uri=config["eval"]["model_uri"],
                  output_dir=config["output_dir"])
