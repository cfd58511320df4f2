"""Fine-tune a model on an exported dataset (what the train step calls), with QC overlays of
validation slices during training. Usable from a notebook without a stack:

    bundle = train_on_export(Path("outputs/demo/dataset"), cfg.model, cfg.train, Path("run1"))
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from samtune.config import ModelConfig, TrainConfig
from samtune.eval.slice_eval import evaluate_slices
from samtune.figures import qc_overlay, training_curves
from samtune.models.adapters import apply_method, parameter_report
from samtune.models.bundle import ModelBundle
from samtune.models.checkpoints import file_sha256
from samtune.models.export import export_weights, has_lora
from samtune.models.registry import build_model
from samtune.train.data import load_training_data
from samtune.train.embedding_cache import cache_embeddings
from samtune.train.loop import train
from samtune.train.state import load_model_weights, load_state

log = logging.getLogger(__name__)
Callback = Callable[[str, dict[str, float], int], None]


class TrainingError(RuntimeError):
    """Training stopped without a usable model (e.g. a NaN loss); the message says why."""


def train_on_export(dataset_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    out_dir: Path, *, callback: Callback | None = None,
                    dataset_fingerprint: str = "") -> ModelBundle:
    """Build + adapt the model, train on `dataset_dir/{train,val}`, export the best weights.

    Every configuration error (unknown model, bad LoRA targets, QLoRA on CPU, empty split, a
    resume checkpoint of another config) is raised before the first training step.
    """
    out_dir = Path(out_dir)
    model = apply_method(build_model(model_cfg), model_cfg)
    params = parameter_report(model)
    log.info("trainable parameters: %s of %s", f"{params['trainable']:,}", f"{params['total']:,}")
    if getattr(model, "spatial_dims", 2) == 3:  # SAM-Med3D: crops of the 3D export
        train_data, val_data = _crop_data(dataset_dir, model, train_cfg)
        normalization, monitor = None, callback
    else:
        train_data, val_data, normalization, qc_set = _slice_data(dataset_dir, model, train_cfg)
        monitor = qc_during_training(model, qc_set, train_cfg.qc_every, out_dir / "qc", callback)
    result = train(model, train_data, val_data, train_cfg, out_dir / "checkpoints",
                   callback=monitor, run_config={"model": model_cfg.model_dump(mode="json")})
    if result.stopped == "nan":
        raise TrainingError(result.message)
    best = result.best_checkpoint or result.last_checkpoint
    if best is not None:
        load_model_weights(model, load_state(best)["model"])
    kinds = ["full", "image_encoder"] + (["lora_adapter", "lora_merged"] if has_lora(model) else [])
    kinds += list(train_cfg.export)
    files = export_weights(model, out_dir / "weights", kinds)
    training_curves(result.history, out_dir / "curves.png")
    summary = {"best_val_dice": result.best_val_dice, "epochs": result.epochs,
               "steps": result.steps, "stopped": result.stopped,
               "trainable_parameters": params["trainable"], "total_parameters": params["total"],
               "method": model_cfg.method, "model_name": model_cfg.name,
               "img_size": model.img_size}
    info = {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
            "normalization": (None if normalization is None
                              else [list(normalization[0]), list(normalization[1])]),
            "parameters": params, "summary": summary, "history": result.history,
            "dataset_fingerprint": dataset_fingerprint,
            "exports": {k: Path(v).name for k, v in files.items()}}
    (out_dir / "model.json").write_text(json.dumps(info, indent=1, default=str))
    return ModelBundle(root=out_dir, fingerprint=file_sha256(files["full"]), summary=summary)


def _slice_data(dataset_dir: Path, model: Any, cfg: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """2D: the export's slices (train, val with the embedding cache where it applies), their
    normalisation statistics, and the slices the QC overlays are drawn from."""
    train_set, val_set = load_training_data(dataset_dir, model.img_size, cfg.normalization,
                                            model, cfg.augment, cfg.seed)
    cache_root = Path(cfg.cache_dir)
    augmented = cfg.augment.enabled
    if augmented and cfg.embedding_cache:
        log.info("embedding cache off for the train split: augmentation changes every image")
    train_data = cache_embeddings(train_set, model, cache_root,
                                  enabled=cfg.embedding_cache and not augmented)
    val_data = (cache_embeddings(val_set, model, cache_root, enabled=cfg.embedding_cache)
                if val_set is not None else None)
    return train_data, val_data, train_set.normalization, val_set or train_set


def _crop_data(dataset_dir: Path, model: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """3D: crops of model.img_size³ from `dataset_dir/volumes3d` (samtune.train.data3d), the
    model's own per-crop normalisation. No embedding cache: every epoch draws new crops."""
    from samtune.train.data3d import load_crop_data

    if cfg.embedding_cache:
        log.info("embedding cache not used for a 3D model: each epoch draws new crops")
    if cfg.prompts.box:
        log.info("SAM-Med3D embeds points only: train.prompts.box is met by a first positive "
                 "click at a random foreground voxel (upstream's training click)")
    return load_crop_data(Path(dataset_dir) / "volumes3d", model.img_size, cfg.augment, cfg.seed,
                          samples_per_case=cfg.crops_per_case,
                          foreground_fraction=cfg.crop_foreground)


def qc_during_training(model: Any, dataset: Dataset, every: int, qc_dir: Path,
                       inner: Callback | None = None, n: int = 4) -> Callback:
    """A training callback that, every `every` epochs, predicts the first `n` slices holding
    instances with GT-box prompts and writes image / GT / prompt / prediction overlays to
    `qc_dir/epoch_NNNN_k.png`; every event is passed on to `inner`."""
    items: list[dict[str, Any]] = []

    def callback(event: str, metrics: dict[str, float], step: int) -> None:
        if inner is not None:
            inner(event, metrics, step)
        if event != "epoch" or int(metrics["epoch"]) % every:
            return
        if not items:
            for i in range(len(dataset)):  # type: ignore[arg-type]
                if len(items) < n and dataset[i]["masks"].any():
                    items.append(dataset[i])
        device = next(model.parameters()).device
        report = evaluate_slices(model, _Listed(items, getattr(dataset, "normalization", None)),
                                 batch_size=n, device=device, qc_slices=n)
        for k, qc in enumerate(report.qc):
            qc_overlay(qc["image"], qc["gt_masks"], {"boxes": qc["boxes"]}, qc["pred_masks"],
                       qc_dir / f"epoch_{int(metrics['epoch']):04d}_{k}.png",
                       title=f"epoch {int(metrics['epoch'])}, {qc['case_id']}")

    return callback


class _Listed(Dataset):
    def __init__(self, items: list[dict[str, Any]], normalization: Any):
        self.items, self.normalization = items, normalization

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
