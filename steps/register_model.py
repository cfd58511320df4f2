"""Log the trained model to MLflow as a pyfunc and register a new, tagged version."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image
from zenml import log_metadata, step

from samtune.config import RegistryConfig
from samtune.data.datasets import SplitDataset
from samtune.lifecycle import tracking
from samtune.models.bundle import ModelBundle


def _input_example(dataset: SplitDataset) -> dict[str, Any]:
    split = dataset.root / "test"
    coco = json.loads((split / "annotations.json").read_text())
    ann = coco["annotations"][0]
    record = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    image = np.asarray(Image.open(split / "images" / record["file_name"]).convert("RGB"))
    x, y, w, h = ann["bbox"]
    return {"image": image, "boxes": [[x, y, x + w, y + h]]}


@step(enable_cache=False)
def register_model(
    model: ModelBundle, metrics: dict[str, Any], dataset: SplitDataset,
    registry: dict[str, Any], config: dict[str, Any], volume_metrics: dict[str, Any] | None = None,
) -> Annotated[dict[str, Any], "registered_model"]:
    """Tags: dataset fingerprint, config hash, git commit, test metrics (slice and volume).
    Disabled → {}."""
    cfg = RegistryConfig.model_validate(registry)
    if not cfg.enabled:
        return {}
    info = json.loads((model.root / "model.json").read_text())
    uri = tracking.log_model(model.weights, {"model": info["model"]},
                             input_example=_input_example(dataset),
                             normalization=(tuple(info["normalization"])
                                            if info.get("normalization") else None))
    tags = {"dataset_fingerprint": dataset.fingerprint, "config_hash": tracking.config_hash(config),
            "git_commit": tracking.git_commit(Path(__file__).parent),
            **{f"test_{k}": v for k, v in metrics["metrics"].items()},
            **{f"test_{k}": v for k, v in (volume_metrics or {}).get("metrics", {}).items()}}
    version = tracking.register_model(uri, cfg.model_name, tags)
    result = {"name": cfg.model_name, "version": version, "model_uri": uri}
    log_metadata(metadata=result, infer_model=True)
    return result
