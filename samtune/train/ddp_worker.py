"""One worker of distributed fine-tuning: train on an export as one rank of a torchrun job.

    torchrun --standalone --nproc_per_node 2 -m samtune.train.ddp_worker \\
        --dataset outputs/demo/dataset --config demo --set train.epochs=5 \\
        --out outputs/demo/training

or `--config-json FILE` holding {"model": …, "train": …} (what `ddp.run_distributed` writes;
it also passes --events and --log-dir). Every rank first fills its share of the frozen-encoder
embedding cache on its own device (when the cache is on), then rank 0 runs
`finetune.train_on_export` (checkpoints, exported weights, model.json, curves) while the other
ranks train the same model on the same data beside it and write nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from samtune.config import ModelConfig, TrainConfig, load_config
from samtune.models.adapters import apply_method
from samtune.models.base import PromptableModel
from samtune.models.registry import build_model
from samtune.train import ddp
from samtune.train.data import load_training_data
from samtune.train.embedding_cache import cache_embeddings, encoder_is_frozen
from samtune.train.finetune import TrainingError, train_on_export
from samtune.train.loop import train

__all__ = ["train_in_rank", "main"]
logger = logging.getLogger(__name__)
Callback = Callable[[str, dict[str, float], int], None]


class _Share(Dataset):
    """Slices rank, rank + N, … of a SliceDataset, keeping what the cache builder reads
    (`normalization`, `key`)."""

    def __init__(self, dataset: Any, rank: int, world_size: int):
        self.dataset, self.indices = dataset, range(rank, len(dataset), world_size)
        self.normalization = getattr(dataset, "normalization", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]

    def key(self, i: int) -> str:
        return self.dataset.key(self.indices[i])


def _build(model_cfg: ModelConfig, seed: int) -> PromptableModel:
    """The same model on every rank: randomly initialised parts (LoRA, a model without a
    checkpoint) draw from the same seed, so the frozen encoder and its cache folder agree."""
    torch.manual_seed(seed)
    return apply_method(build_model(model_cfg), model_cfg)


def train_in_rank(dataset_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  out_dir: Path, *, callback: Callback | None = None,
                  dataset_fingerprint: str = "") -> None:
    """This rank's part of `train_on_export` (the whole of it in a plain process)."""
    ctx = ddp.context()
    if not ctx.enabled:
        train_on_export(dataset_dir, model_cfg, train_cfg, out_dir, callback=callback,
                        dataset_fingerprint=dataset_fingerprint)
        return
    model = _build(model_cfg, train_cfg.seed)
    train_set, val_set = load_training_data(dataset_dir, model.img_size,
                                            train_cfg.normalization, model, train_cfg.augment,
                                            train_cfg.seed)
    cache_on = (train_cfg.embedding_cache and encoder_is_frozen(model)
                and not train_cfg.augment.enabled)  # augmented images are never the same
    if cache_on:  # each rank encodes its share, on its own device
        device = ddp.resolve_device(train_cfg.device, ctx)
        for part in (train_set, val_set):
            if part is not None:
                cache_embeddings(_Share(part, ctx.rank, ctx.world_size), model,
                                 Path(train_cfg.cache_dir), device=device)
        model.cpu()
    ddp.barrier(ctx)
    if ctx.is_main:
        del model
        torch.manual_seed(train_cfg.seed)  # it builds the model again: the same one
        train_on_export(dataset_dir, model_cfg, train_cfg, out_dir, callback=callback,
                        dataset_fingerprint=dataset_fingerprint)
        return
    root = Path(train_cfg.cache_dir)
    train_data = cache_embeddings(train_set, model, root, enabled=cache_on)  # all hits now
    val_data = cache_embeddings(val_set, model, root, enabled=cache_on) if val_set else None
    result = train(model, train_data, val_data, train_cfg, Path(out_dir) / "checkpoints",
                   run_config={"model": model_cfg.model_dump(mode="json")})
    if result.stopped == "nan":
        raise TrainingError(result.message)


def _event_writer(path: Path) -> Callback:
    """A callback appending {"event", "metrics", "step"} JSON lines (replayed by the launcher)."""
    def write(event: str, metrics: dict[str, float], step: int) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "metrics": metrics, "step": step}) + "\n")

    return write


def _setup_logging(ctx: ddp.DistContext, log_dir: Path | None) -> None:
    """Rank 0 logs INFO to stderr, the others warnings only; with log_dir every rank also
    writes everything to log_dir/rank<r>.log."""
    fmt = logging.Formatter(f"%(asctime)s rank{ctx.rank} %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    if log_dir is not None:
        handlers.append(logging.FileHandler(Path(log_dir) / f"rank{ctx.rank}.log"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m samtune.train.ddp_worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="export folder (train/, val/)")
    p.add_argument("--out", type=Path, required=True, help="model bundle folder to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="config name or YAML path (its model and train sections)")
    src.add_argument("--config-json", type=Path, help='JSON {"model": …, "train": …}')
    p.add_argument("--set", action="append", default=[], help="dotted.key=value (with --config)")
    p.add_argument("--events", type=Path, help="rank 0 appends epoch events here (JSON lines)")
    p.add_argument("--log-dir", type=Path, help="each rank logs to LOG_DIR/rank<r>.log")
    p.add_argument("--fingerprint", default="", help="dataset fingerprint for model.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config_json is not None:
        raw = json.loads(args.config_json.read_text())
        model_cfg = ModelConfig.model_validate(raw["model"])
        train_cfg = TrainConfig.model_validate(raw["train"])
    else:
        cfg = load_config(args.config, args.set)
        model_cfg, train_cfg = cfg.model, cfg.train
    with ddp.process_group(train_cfg.distributed.backend, train_cfg.device) as ctx:
        _setup_logging(ctx, args.log_dir)
        try:
            train_in_rank(args.dataset, model_cfg, train_cfg, args.out,
                          callback=_event_writer(args.events) if args.events else None,
                          dataset_fingerprint=args.fingerprint)
        except BaseException:
            logger.exception("rank %d of %d failed", ctx.rank, ctx.world_size)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
