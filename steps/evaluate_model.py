"""Slice-level Dice / IoU on the test split with GT-box prompts, beside the box-fill baseline."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.config import EvalConfig
from samtune.data.datasets import SplitDataset
from samtune.eval.bundle_eval import evaluate_bundle
from samtune.lifecycle import tracking
from samtune.models.bundle import ModelBundle
from steps.caching import MODEL_CACHE


@step(cache_policy=MODEL_CACHE)
def evaluate_model(
    model: ModelBundle, dataset: SplitDataset, evaluation: dict[str, Any], output_dir: str
) -> Annotated[dict[str, Any], "test_metrics"]:
    """Writes output_dir/metrics/slice_eval.json and QC overlays under output_dir/qc."""
    cfg = EvalConfig.model_validate(evaluation)
    out = Path(output_dir)
    report = evaluate_bundle(model, dataset.root, cfg, qc_dir=out / "qc")
    metrics = report.metrics()
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    (out / "metrics" / "slice_eval.json").write_text(
        json.dumps({"metrics": metrics, **report.to_dict()}, indent=1))
    tracking.log_epoch({f"test_{k}": v for k, v in metrics.items()}, step=0)
    for png in sorted((out / "qc").glob("*.png")):
        tracking.log_artifact(png, "qc")
    log_metadata(metadata={f"test_{k}": v for k, v in metrics.items()})
    return {"split": cfg.split, "metrics": metrics, "summary": report.summary()}
