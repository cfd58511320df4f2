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
    if (dataset.root / "volumes3d").is_dir():  # a 3D model: a small volume and one point
        return _volume_example(dataset.root)
    split = dataset.root / "test"
    coco = json.loads((split / "annotations.json").read_text())
    ann = coco["annotations"][0]
    record = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    image = np.asarray(Image.open(split / "images" / record["file_name"]).convert("RGB"))
    x, y, w, h = ann["bbox"]
    return {"image": image, "boxes": [[x, y, x + w, y + h]]}


def _volume_example(root: Path) -> dict[str, Any]:
    """24³ voxels of the first labelled exported case around a foreground voxel."""
    from samtune.data.export3d import load_index, read_case3d

    index = load_index(root)
    for case_id in sorted(index["cases"]):
        image, label, _ = read_case3d(root, case_id, index)
        if label is not None and label.any():
            centre = np.argwhere(label > 0)[0]
            lo = np.clip(centre - 12, 0, None)
            sub = image[lo[0]:lo[0] + 24, lo[1]:lo[1] + 24, lo[2]:lo[2] + 24]
            return {"volume": sub, "points": [(centre - lo).tolist()], "point_labels": [1]}
    raise ValueError(f"{root}: no labelled 3D case for the model's input example")


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
