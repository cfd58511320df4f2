"""Where the model to evaluate comes from: the `model` section (zoo name + checkpoint: zero-shot
or any local checkpoint), a finetune output folder (`<output_dir>/training`, holding
model.json + weights/full.pt), or an MLflow model URI (`models:/name@champion`,
`models:/name/3`, `runs:/<id>/model`) logged by samtune's register step.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml

from samtune.config import ModelConfig
from samtune.models.base import PromptableModel
from samtune.models.device import resolve_device
from samtune.models.registry import build_model, get_spec

__all__ = ["LoadedModel", "load_model", "MLFLOW_SCHEMES"]
log = logging.getLogger(__name__)
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
Stats = tuple[Sequence[float], Sequence[float]]


@dataclass
class LoadedModel:
    """A built model with its input normalisation (mean, std on 0–255; None: the model's own),
    family ("sam", "sam2", "mobile_sam", "oracle"), device and a one-line description."""

    model: PromptableModel
    stats: Stats | None
    family: str
    device: torch.device
    description: str
    config: ModelConfig


def _from_folder(folder: Path) -> tuple[ModelConfig, Stats | None]:
    info = json.loads((folder / "model.json").read_text())
    cfg = ModelConfig.model_validate(info["model"]).model_copy(
        update={"checkpoint": (folder / "weights" / "full.pt").resolve(), "method": "full"})
    stats = info.get("normalization")
    return cfg, (tuple(stats[0]), tuple(stats[1])) if stats else None


def _from_mlflow(uri: str, tracking_uri: str | None) -> tuple[ModelConfig, Stats | None]:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # noqa: BLE001 — MLflow raises many types for a bad URI
        raise ValueError(f"cannot fetch MLflow model {uri}: {exc}") from None
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = mlmodel["flavors"]["python_function"].get("artifacts", {})
    if "weights" not in artifacts:
        raise ValueError(f"{uri} is not a samtune model (no 'weights' artifact in its MLmodel)")
    path = {k: local / v["path"] for k, v in artifacts.items()}
    config = json.loads(path["config"].read_text())
    cfg = ModelConfig.model_validate(config.get("model", config)).model_copy(
        update={"checkpoint": path["weights"].resolve(), "method": "full"})
    prep = json.loads(path["preprocessing"].read_text()) if "preprocessing" in path else {}
    return cfg, (tuple(prep["mean"]), tuple(prep["std"])) if prep else None


def load_model(model_cfg: ModelConfig, model_uri: str | None = None, *, device: str = "auto",
               tracking_uri: str | None = None) -> LoadedModel:
    """Build the model to evaluate (see module docstring). A checkpoint that does not fit the
    architecture fails here, naming the file and the mismatched keys."""
    stats: Stats | None = None
    if model_uri is None:
        cfg, what = model_cfg, f"{model_cfg.name} ({model_cfg.checkpoint or 'random weights'})"
    elif model_uri.startswith(MLFLOW_SCHEMES):
        cfg, stats = _from_mlflow(model_uri, tracking_uri)
        what = f"{cfg.name} from {model_uri}"
    else:
        folder = Path(model_uri)
        if not (folder / "model.json").is_file():
            raise ValueError(f"eval.model_uri {model_uri}: neither an MLflow URI "
                             f"({', '.join(MLFLOW_SCHEMES)}) nor a finetune output folder with "
                             "model.json")
        cfg, stats = _from_folder(folder)
        what = f"{cfg.name} fine-tuned in {folder}"
    model = build_model(cfg)
    log.info("evaluating %s", what)
    return LoadedModel(model, stats, get_spec(cfg.name).family, resolve_device(device), what, cfg)
