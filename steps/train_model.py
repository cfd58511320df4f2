"""Fine-tune the configured model on the exported train/val splits; log to MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.model_bundle import ModelBundleMaterializer
from samtune.config import ModelConfig, TrainConfig
from samtune.data.datasets import SplitDataset
from samtune.lifecycle import tracking
from samtune.lifecycle.buffer import ResilientTracker
from samtune.models.bundle import ModelBundle
from samtune.train.ddp import run_distributed
from samtune.train.finetune import train_on_export
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
    model_cfg, train_cfg = ModelConfig.model_validate(model), TrainConfig.model_validate(train)
    out = Path(output_dir) / "training"
    log_epoch = ResilientTracker(out / "tracking_buffer.jsonl")  # survives losing MLflow
    if train_cfg.distributed.nproc > 1:  # torchrun: rank 0 trains and exports into `out`
        bundle = ModelBundle.from_dir(run_distributed(
            dataset.root, model_cfg, train_cfg, out, callback=log_epoch,
            dataset_fingerprint=dataset.fingerprint))
    else:
        bundle = train_on_export(dataset.root, model_cfg, train_cfg, out,
                                 dataset_fingerprint=dataset.fingerprint, callback=log_epoch)
    log_epoch.safe("uploading curves", tracking.log_figure, bundle.root / "curves.png")
    for png in sorted((bundle.root / "qc").glob("epoch_*.png")):  # every train.qc_every epochs
        log_epoch.safe("uploading QC", tracking.log_artifact, png, "qc_training")
    log_metadata(metadata={k: v for k, v in bundle.summary.items() if v is not None})
    return bundle
