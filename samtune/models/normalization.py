"""Input normalisation beside the family's own (`PromptableModel.normalize`): ImageNet or the
train split's pixel statistics, as (mean, std) triples on the 0–255 scale."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from samtune.data.cases import DataError
from samtune.models.base import PromptableModel
from samtune.models.preprocess import IMAGENET_MEAN_255, IMAGENET_STD_255

__all__ = ["Triple", "dataset_normalization", "resolve_normalization", "normalize", "triples"]

Triple = tuple[float, float, float]


def triples(stats: tuple | dict | None, where: Path) -> tuple[Triple, Triple] | None:
    """(mean, std) or a compute_stats dict → two 3-tuples (one grey channel replicated)."""
    if stats is None:
        return None
    mean, std = (stats.get("mean_255"), stats.get("std_255")) if isinstance(stats, dict) else stats
    if mean is None or std is None:
        raise DataError(where, "normalization stats without mean_255/std_255")
    mean, std = [float(m) for m in mean], [float(v) for v in std]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise DataError(where, f"unusable pixel statistics mean={mean} std={std} "
                               "(need 1 or 3 channels and std > 0)")
    return tuple(mean), tuple(std)  # type: ignore[return-value]


def dataset_normalization(dataset_json: Path) -> tuple[Triple, Triple]:
    """Train-split pixel (mean, std) per channel on the 0–255 scale from dataset.json `stats`
    (`compute_stats`' mean_255/std_255; one grey channel is replicated to three)."""
    dataset_json = Path(dataset_json)
    try:
        stats = json.loads(dataset_json.read_text()).get("stats")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(dataset_json, f"cannot read dataset statistics: {exc}") from None
    if not isinstance(stats, dict) or stats.get("mean_255") is None or stats.get("std_255") is None:
        raise DataError(dataset_json, "no train-split pixel statistics (stats.mean_255/std_255); "
                                      "use train.normalization: model or re-run prepare")
    return triples(stats, dataset_json)  # type: ignore[return-value]


def resolve_normalization(kind: str, model: PromptableModel,
                          dataset_json: Path | None = None) -> tuple[Triple, Triple] | None:
    """`TrainConfig.normalization` → None for "model" (the family's own `model.normalize`), or
    (mean, std) 0–255 triples: "imagenet" → ImageNet's, "dataset" → `dataset_normalization`."""
    if kind == "model":
        return None
    if kind == "imagenet":
        return IMAGENET_MEAN_255, IMAGENET_STD_255
    if kind == "dataset":
        if dataset_json is None:
            raise ValueError("normalization 'dataset' needs the export's dataset.json")
        return dataset_normalization(dataset_json)
    raise ValueError(f"unknown normalization '{kind}' (model, imagenet or dataset)")


def normalize(images: torch.Tensor, mean: Triple, std: Triple) -> torch.Tensor:
    """B×3×S×S on 0–255 → (images − mean) / std per channel."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s
