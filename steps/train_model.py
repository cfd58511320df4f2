"""Fine-tune the configured model on the exported train/val splits; log to MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.model_bundle import ModelBundleMaterializer
from samtune import tracking
from samtune.config import ModelConfig, TrainConfig
from samtune.data.datasets import SplitDataset
from samtune.finetune import train_on_export
from samtune.models.bundle import ModelBundle
from steps.caching import MODEL_CACHE


@step(cache_policy=MODEL_CACHE, output_materializers=ModelBundleMaterializer)
def train_model(
    dataset: SplitDataset, model: dict[str, Any], train: dict[str, Any], config: dict[str, Any],
    output_dir: str,
) -> Annotated[ModelBundle, "model"]:
    """Checkpoints and exports land in `output_dir/training`; the run's MLflow experiment
    (ZenML's tracker) gets the flattened config, per-epoch metrics and the training curves."""
    tracking.log_params_flat(config)
    tracking.log_config(config)
    bundle = train_on_export(
        dataset.root, ModelConfig.model_validate(model), TrainConfig.model_validate(train),
        Path(output_dir) / "training", dataset_fingerprint=dataset.fingerprint,
        callback=lambda event, metrics, step_no: tracking.log_epoch(metrics, step_no))
    tracking.log_figure(bundle.root / "curves.png")
    log_metadata(metadata={k: v for k, v in bundle.summary.items() if v is not None})
    return bundle
