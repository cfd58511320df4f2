"""Training-time speed settings applied to a model for the length of a run, and undone after it:

    undo = apply_speedups(model, cfg)   # train.attention, train.grad_checkpointing, train.compile
    ...train...
    undo()                              # upstream attention, no checkpointing, not compiled

- `attention: sdpa` swaps the segment-anything attention modules to
  `scaled_dot_product_attention` (`samtune.models.fast_attention`; same function, fused kernels).
- `grad_checkpointing` recomputes each image-encoder block in the backward pass (the model's
  `set_grad_checkpointing`; torch.utils.checkpoint, use_reentrant=False).
- `compile` compiles the image encoder in place (`nn.Module.compile`, so the state-dict keys keep
  no `_orig_mod.` prefix); with checkpointing on, each encoder block is compiled instead, since
  the checkpointed encode path calls the blocks, not the encoder's forward.

Undoing leaves the model as the registry built it, so exports (ONNX traces a deep copy) and
later predictions see upstream's modules.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from torch import nn

from samtune.config import TrainConfig
from samtune.models.base import PromptableModel
from samtune.models.fast_attention import use_sdpa

__all__ = ["apply_speedups", "compile_image_encoder", "encoder_blocks"]
logger = logging.getLogger(__name__)


def encoder_blocks(model: PromptableModel) -> list[nn.Module]:
    """The image encoder's repeated blocks (ViT `blocks`, Hiera `trunk.blocks`, TinyViT's
    `layers`); empty when it has none of these."""
    enc = model.image_encoder
    for path in ("blocks", "trunk.blocks", "layers"):
        try:
            return list(enc.get_submodule(path))
        except AttributeError:
            continue
    return []


def compile_image_encoder(model: PromptableModel, **compile_kwargs: Any) -> list[nn.Module]:
    """`nn.Module.compile(**compile_kwargs)` on the image encoder, or on each of its blocks when
    gradient checkpointing is on; → the modules compiled (in place, keys unchanged)."""
    checkpointed = getattr(model, "grad_checkpointing", False)
    modules = encoder_blocks(model) if checkpointed else []
    modules = modules or [model.image_encoder]
    for module in modules:
        module.compile(**compile_kwargs)
    return modules


def _uncompile(modules: list[nn.Module]) -> None:
    for module in modules:
        module.__dict__.pop("_compiled_call_impl", None)  # what nn.Module.compile sets


def apply_speedups(model: PromptableModel, cfg: TrainConfig) -> Callable[[], None]:
    """Apply `cfg.attention`, `cfg.grad_checkpointing` and `cfg.compile` to `model` in place;
    → a function that undoes all three."""
    sdpa = use_sdpa(model, True) if cfg.attention == "sdpa" else 0
    was_checkpointing = getattr(model, "grad_checkpointing", False)
    checkpointing = cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing")
    if checkpointing:
        model.set_grad_checkpointing(True)
    compiled = compile_image_encoder(model) if cfg.compile else []
    logger.info("attention %s (%d modules), grad checkpointing %s, compiled %d modules",
                cfg.attention, sdpa, "on" if checkpointing else "off", len(compiled))

    def undo() -> None:
        _uncompile(compiled)
        if checkpointing and not was_checkpointing:
            model.set_grad_checkpointing(False)
        if sdpa:
            use_sdpa(model, False)

    return undo
