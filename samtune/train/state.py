"""The training checkpoint: one plain dict, saved atomically, readable with `weights_only=True`.

    version        CHECKPOINT_VERSION
    model          trainable parameters + persistent buffers (see `model_weights`)
    optimizer, scheduler, scaler   their state_dict()s ({} when absent)
    rng            python / numpy / torch CPU (/ CUDA) states and the loop's torch.Generators
    rng_ranks      distributed runs: every rank's `rng`, by rank (`rank_rng_state`)
    world_size     processes that trained (1 without distribution); a resume needs as many
    step, epoch, batch_in_epoch    position: optimizer steps done, the epoch under way and the
                   micro-batches of it already consumed (0 at an epoch boundary)
    best_metric, best_epoch, bad_validations   best val Dice and early-stopping counter
    history        per-epoch metric dicts; epoch_sums: running sums of the epoch under way
    config, config_hash   the run's config dict and `config_hash(config)`

Model weights: only what training changes (trainable parameters) plus buffers are stored, so a
LoRA checkpoint of a ViT-H weighs megabytes. To rebuild a model: build it from the same model
config (`build_model` + `apply_method`, which brings the frozen pretrained weights), then
`load_model_weights(model, state["model"])`.

Everything is a tensor, number, string, None, list or dict: no pickled objects.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch
from torch import nn

from samtune.atomic import atomic_write

__all__ = ["CHECKPOINT_VERSION", "UNHASHED_TRAIN_KEYS", "ConfigMismatchError", "config_hash",
           "rng_state", "set_rng_state", "rank_rng_state", "model_weights", "load_model_weights",
           "save_state", "load_state", "copy_state"]
logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# Train settings that may change when a run is resumed (length, resources, bookkeeping): they are
# kept in the checkpoint's config but left out of its hash. (The number of processes matters, but
# torchrun, not the config, decides it: the checkpoint's `world_size` is checked instead.)
UNHASHED_TRAIN_KEYS = ("epochs", "max_steps", "resume", "num_workers", "device", "cache_dir",
                       "checkpoint_every", "qc_every", "distributed")


class ConfigMismatchError(ValueError):
    """A checkpoint written by a run with another config."""


def _hashed(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    if isinstance(out.get("train"), Mapping):
        out["train"] = {k: v for k, v in out["train"].items() if k not in UNHASHED_TRAIN_KEYS}
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex) of the JSON config without `UNHASHED_TRAIN_KEYS`."""
    text = json.dumps(_hashed(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (one level into sections)."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and not prefix:
            keys += _differing_keys(va, vb, f"{k}.")
        else:
            keys.append(prefix + str(k))
    return keys


# ------------------------------------------------------------------------------------ RNG
def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain containers."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(keys), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: Mapping[str, Any],
                  generators: Mapping[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        if name not in state["generators"]:
            raise KeyError(f"checkpoint has no state for generator '{name}'")
        gen.set_state(state["generators"][name])


def rank_rng_state(state: Mapping[str, Any], rank: int) -> Mapping[str, Any]:
    """This rank's RNG states from a checkpoint dict: `rng_ranks[rank]` when written by a
    distributed run, else `rng`."""
    ranks = state.get("rng_ranks")
    return ranks[rank] if ranks else state["rng"]


# ---------------------------------------------------------------------------- model weights
def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters + persistent buffers, detached CPU clones, by state-dict name."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k in trainable or k in buffers}


def load_model_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy `weights` into `model`; every trainable parameter must be present and every key
    known (a model built with another method or size → ValueError naming the keys)."""
    state = model.state_dict()
    unknown = sorted(set(weights) - set(state))
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in weights)
    if unknown or missing:
        raise ValueError(f"checkpoint weights do not fit this model: {len(unknown)} unknown keys "
                         f"{unknown[:5]}, {len(missing)} trainable parameters missing "
                         f"{missing[:5]} (same model name, method and LoRA settings?)")
    bad = [k for k, v in weights.items() if v.shape != state[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes differ for {bad[:5]}: "
                         f"{[tuple(weights[k].shape) for k in bad[:5]]} vs "
                         f"{[tuple(state[k].shape) for k in bad[:5]]}")
    model.load_state_dict(dict(weights), strict=False)


# ----------------------------------------------------------------------------------- files
def save_state(state: Mapping[str, Any], path: Path) -> Path:
    """torch.save the checkpoint dict to `path` atomically."""
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def copy_state(src: Path, dst: Path) -> Path:
    """Atomic copy of a checkpoint file (best / every-N copies of last)."""
    def copy(fout: BinaryIO) -> None:
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, fout, 1 << 22)

    return atomic_write(dst, copy)


def load_state(path: Path, expected_config_hash: str | None = None,
               expected_config: Mapping[str, Any] | None = None,
               map_location: str | torch.device = "cpu", *,
               world_size: int | None = None) -> dict[str, Any]:
    """Read a checkpoint (`weights_only=True`). With `expected_config_hash`, a checkpoint of
    another config raises ConfigMismatchError naming both hashes (and, given `expected_config`,
    the differing keys) before the caller has touched anything; with `world_size`, so does one
    written by another number of processes (the data order and the RNG streams depend on it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a samtune training checkpoint (version "
                         f"{state.get('version') if isinstance(state, dict) else None}, "
                         f"expected {CHECKPOINT_VERSION})")
    if expected_config_hash is not None and state["config_hash"] != expected_config_hash:
        diff = ""
        if expected_config is not None:
            keys = _differing_keys(_hashed(state["config"]), _hashed(expected_config))
            diff = f"; differing keys: {', '.join(keys) or '(none found)'}"
        raise ConfigMismatchError(
            f"cannot resume from {path}: it was written with config {state['config_hash']}, this "
            f"run's config is {expected_config_hash}{diff}. Resume with the same config, or start "
            "a new run in another output folder")
    written_by = state.get("world_size", 1)
    if world_size is not None and written_by != world_size:
        raise ConfigMismatchError(
            f"cannot resume from {path}: it was written by {written_by} training process(es), "
            f"this run has {world_size}; resume with torchrun --nproc_per_node {written_by} "
            f"(train.distributed.nproc {written_by}), or start a new run")
    return state
