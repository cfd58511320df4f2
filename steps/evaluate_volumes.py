"""3D evaluation: predict whole volumes of one split, reassemble, score, biomarkers, report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.config import ConvertConfig, EvalConfig, ModelConfig
from samtune.data.cases import CaseCollection
from samtune.data.datasets import SplitDataset
from samtune.eval.volume_eval import evaluate_volumes as evaluate
from samtune.eval.volume_eval import split_cases
from samtune.inference.model_source import load_model
from samtune.lifecycle import tracking
from samtune.models.bundle import ModelBundle
from steps.caching import MODEL_CACHE


@step(cache_policy=MODEL_CACHE)
def evaluate_volumes(
    dataset: SplitDataset, cases: CaseCollection, evaluation: dict[str, Any],
    convert: dict[str, Any], model_config: dict[str, Any], output_dir: str,
    model: ModelBundle | None = None,
) -> Annotated[dict[str, Any], "volume_metrics"]:
    """Evaluates `model` (the trained bundle) or, without one, what eval.model_uri / the model
    section name; writes predictions/, metrics/, biomarkers.csv and report.html to output_dir."""
    cfg = EvalConfig.model_validate(evaluation)
    uri = str(model.root) if model is not None else cfg.model_uri
    base_cfg = ModelConfig.model_validate(model_config)
    loaded = load_model(base_cfg, uri)
    zero_shot = load_model(base_cfg) if uri and cfg.clicks and cfg.clicks_zero_shot else None
    chosen = split_cases(cases.cases, dataset.root, cfg.split)
    result = evaluate(loaded, chosen, ConvertConfig.model_validate(convert), cfg,
                      Path(output_dir), dataset.categories(),
                      title=f"samtune evaluation — {loaded.description}", baseline=zero_shot)
    metrics = result.metrics()
    tracking.log_epoch({f"test_{k}": v for k, v in metrics.items()}, step=0)
    for path in result.paths.all():
        tracking.log_artifact(path, "evaluation")
    log_metadata(metadata={f"test_{k}": v for k, v in metrics.items()})
    per_volume = result.per_volume_dice()
    (Path(output_dir) / "metrics" / "per_volume_dice.json").write_text(json.dumps(per_volume))
    return {"split": cfg.split, "metrics": metrics, "per_volume_dice": per_volume,
            "model": loaded.description, "report": str(result.paths.html)}
