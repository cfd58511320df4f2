"""Weight exports users open: plain tensor dicts (torch.load(..., weights_only=True) reads them),
written atomically (temporary file + os.replace), so a crash never leaves half a file.

Kinds (file names under out_dir):
- `full` → full.pt: the whole model in its family's upstream key layout, LoRA merged and 4-bit
  weights dequantised. SAM/MedSAM/MobileSAM: the plain state dict segment-anything's `Sam`
  loads (`build_sam_vit_b(checkpoint=...)`); SAM2 family: `{"model": state_dict}`, sam2's own
  checkpoint format (`build_sam2(cfg, ckpt_path)`).
- `lora_merged` → lora_merged.pt: the same content as `full`, for a LoRA model only (a name that
  says what it is).
- `lora_adapter` → lora_adapter.pt + lora_adapter.json: the LoRA weights, unmerged (peft key
  names, e.g. `image_encoder.blocks.0.attn.qkv.lora_A.default.weight`), plus the whole weights
  of any part that trained in full beside LoRA (peft's "modules to save"), since the adapter
  alone would not reproduce the model; the JSON holds family, r, alpha, dropout, targets, the
  adapted module names and those parts. `load_lora_adapter` re-applies it to a fresh base.
- `image_encoder` → image_encoder.pt: the fine-tuned encoder alone (merged, dense), keys
  `image_encoder.…` as in the full layout.
- `onnx` → decoder.onnx + encoder.onnx: segment-anything's ONNX decoder (prompts as inputs) and
  the image encoder, LoRA merged (samtune.models.onnx_export; SAM/MedSAM/MobileSAM only).
The returned dict maps each kind to its file; `lora_adapter` adds `lora_adapter_config`, `onnx`
(→ decoder.onnx) adds `onnx_encoder`.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from samtune.atomic import atomic_write, atomic_write_text
from samtune.config import LORA_TARGETS
from samtune.models.adapters import (PARTS, apply_lora, family_patterns, part_prefixes,
                                     set_trainable, target_part)
from samtune.models.base import PromptableModel

log = logging.getLogger(__name__)

KINDS = ("full", "lora_adapter", "lora_merged", "image_encoder")  # weights, every family
VALID_KINDS = (*KINDS, "onnx")  # onnx: the segment-anything layout only (onnx_export)
ADAPTER_FORMAT = "samtune-lora/1"


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: nn.Module) -> bool:
    """Whether peft LoRA layers are injected in `model`."""
    return bool(_lora_layers(model))


def _is_4bit(module: nn.Module) -> bool:
    """A bitsandbytes Linear4bit (only a model that imported bitsandbytes can hold one)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def merged_state_dict(model: PromptableModel) -> dict[str, torch.Tensor]:
    """The model's state dict with LoRA merged into its base weights, peft's `base_layer` names
    folded back and 4-bit weights dequantised: the upstream layout, dense, on the CPU. The model
    is not modified."""
    out = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()
           if "lora_" not in k}
    for name, module in model.named_modules():
        if _is_4bit(module):
            from peft.utils.integrations import dequantize_bnb_weight

            key = name.removesuffix(".base_layer") + ".weight"
            for k in [k for k in out if k.startswith(key + ".")]:  # absmax, quant_map, …
                del out[k]
            out[key] = dequantize_bnb_weight(module.weight)
    for name, layer in _lora_layers(model).items():
        weight = out[name + ".weight"]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A and adapter not in layer.merged_adapters:
                weight = weight + layer.get_delta_weight(adapter).to(weight)
        out[name + ".weight"] = weight
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _targets_of(family: str, module_names: Iterable[str], prefixes: dict[str, str]) -> list[str]:
    """Config targets whose pattern matches any of the adapted module names."""
    patterns = family_patterns(family)
    names = list(module_names)
    return [t for t in LORA_TARGETS
            if any(re.fullmatch(re.escape(prefixes[target_part(t)]) + r"\." + patterns[t], n)
                   for n in names)]


def adapter_state_dict(model: PromptableModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(LoRA weights + weights of parts trained in full, JSON-able settings) of a LoRA model."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or not has_lora(model):
        raise ValueError("the model has no LoRA adapter (method lora or qlora) to export")
    prefixes = part_prefixes(model)
    full_parts = [part for part in PARTS
                  if any(p.requires_grad for n, p in getattr(model, part).named_parameters()
                         if "lora_" not in n)]
    keep = tuple(prefixes[p] + "." for p in full_parts)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if "lora_" in k or k.startswith(keep)}
    modules = sorted(_lora_layers(model))  # peft may shorten config.target_modules to suffixes
    meta = {"format": ADAPTER_FORMAT, "family": model.family, "img_size": model.img_size,
            "r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "targets": _targets_of(model.family, modules, prefixes), "target_modules": modules,
            "full_parts": full_parts, "base_4bit": bool(getattr(model, "is_loaded_in_4bit", False))}
    return state, meta


def _save_tensors(obj: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _save_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def export_weights(model: PromptableModel, out_dir: str | Path,
                   kinds: Iterable[str]) -> dict[str, Path]:
    """Write the asked-for kinds (module docstring) into out_dir; returns kind → file.

    Unknown kinds, LoRA kinds of a model without LoRA, or `onnx` of a family it does not support
    → ValueError before anything is written.
    """
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in VALID_KINDS]
    if unknown:
        raise ValueError(f"unknown export kinds {unknown}; valid: {', '.join(VALID_KINDS)}")
    if any(k.startswith("lora_") for k in kinds) and not has_lora(model):
        raise ValueError("lora_adapter/lora_merged exports need a model trained with method "
                         "lora or qlora; this model has no LoRA adapter (export 'full')")
    if "onnx" in kinds:
        from samtune.models.onnx_export import check_supported, export_onnx

        check_supported(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    merged = merged_state_dict(model) if set(kinds) - {"lora_adapter", "onnx"} else {}
    wrap = "sam2" in model.family  # sam2's checkpoint format is {"model": state_dict}
    for kind in kinds:
        path = out / f"{kind}.pt"
        if kind in ("full", "lora_merged"):
            _save_tensors({"model": merged} if wrap else merged, path)
        elif kind == "onnx":
            onnx_files = export_onnx(model, out)
            path, paths["onnx_encoder"] = onnx_files["decoder"], onnx_files["encoder"]
        elif kind == "image_encoder":
            prefix = part_prefixes(model)["image_encoder"] + "."
            _save_tensors({k: v for k, v in merged.items() if k.startswith(prefix)}, path)
        else:
            state, meta = adapter_state_dict(model)
            _save_tensors(state, path)
            paths["lora_adapter_config"] = out / "lora_adapter.json"
            _save_json(meta, paths["lora_adapter_config"])
        paths[kind] = path
        log.info("exported %s → %s", kind, path)
    return paths


def load_lora_adapter(model: PromptableModel, path: str | Path) -> PromptableModel:
    """Re-apply an exported adapter (lora_adapter.pt, its .json beside it) to a fresh base
    model of the same architecture, in place: LoRA layers injected and loaded, parts trained in
    full overwritten. Afterwards LoRA weights and those parts are trainable, the rest frozen.
    A family or architecture mismatch, or missing/unexpected keys → ValueError."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path}: not a samtune LoRA adapter (format {meta.get('format')!r})")
    if meta["family"] != model.family:
        raise ValueError(f"{path}: adapter of a '{meta['family']}' model, not '{model.family}'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    names = apply_lora(model, meta["r"], meta["alpha"], meta["dropout"], meta["targets"])
    if sorted(names) != sorted(meta["target_modules"]):
        raise ValueError(f"{path}: the adapter's modules differ from this model's (another "
                         "architecture or size of the same family?)")
    expected = {k for k in model.state_dict() if "lora_" in k}
    missing = sorted(expected - set(state))
    incompatible = model.load_state_dict(state, strict=False)
    if missing or incompatible.unexpected_keys:
        raise ValueError(f"{path}: adapter keys do not fit the model (missing {missing[:3]}, "
                         f"unexpected {incompatible.unexpected_keys[:3]})")
    set_trainable(model, set(meta["full_parts"]))
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad or "lora_" in name)
    log.info("loaded LoRA adapter %s (%d modules, full parts %s)", path, len(names),
             meta["full_parts"] or "none")
    return model
