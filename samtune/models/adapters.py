"""What a run trains: freezing, LoRA (peft) and QLoRA (4-bit base + LoRA) on a PromptableModel.

Methods (`ModelConfig.method`):
- `full`: every parameter trains except the parts listed in `freeze`.
- `frozen`: the image encoder is frozen (always), plus the parts in `freeze`; the rest trains
  (MedSAM's recipe: fine-tune prompt encoder + mask decoder on a frozen encoder).
- `lora` / `qlora`: peft LoRA on the modules that `lora.targets` names (mapping below). The base
  weights of every part LoRA touches are frozen, and the image encoder's always are (qlora
  quantises them to 4-bit nf4 first). A prompt encoder or mask decoder that LoRA does not touch
  trains in full unless `freeze` lists it (SAMed's recipe: encoder LoRA + full decoder); for pure
  LoRA, list them in `freeze`. Listing a part that LoRA targets in `freeze` is a conflict.
Parameters outside the three parts (SAM2's `no_mem_embed`, its unused video-memory modules)
follow the image encoder: trainable under `full` unless it is frozen, frozen otherwise.

Target vocabulary → modules (re.fullmatch on names relative to the part; Linear layers only).
Encoder targets (in image_encoder):

| target       | sam, medsam (ViT)      | mobile_sam (TinyViT)          | sam2 (Hiera)       |
| ------------ | ---------------------- | ----------------------------- | ------------------ |
| encoder_qkv  | blocks.N.attn.qkv      | layers.N.blocks.N.attn.qkv    | trunk.… .attn.qkv  |
| encoder_proj | blocks.N.attn.proj     | layers.N.blocks.N.attn.proj   | trunk.… .attn.proj |
| encoder_mlp  | blocks.N.mlp.lin1/lin2 | layers.N.blocks.N.mlp.fc1/fc2 | trunk.… .mlp.layers.N |
(trunk.… = trunk.blocks.N; sam_med3d, medim's 3D ViT: the names of the sam column)

Decoder targets (in mask_decoder; SAM2 names it sam_mask_decoder), the same in every family
except decoder_mlp:
- decoder_attention: transformer.layers.N.{self_attn, cross_attn_token_to_image,
  cross_attn_image_to_token}.{q,k,v,out}_proj and transformer.final_attn_token_to_image.*_proj
- decoder_mlp: transformer.layers.N.mlp.lin1/lin2 (sam, mobile_sam, sam_med3d);
  …mlp.layers.N (sam2)
- decoder_hypernetwork: output_hypernetworks_mlps.N.layers.N
- decoder_iou_head: iou_prediction_head.layers.N
Hiera's stage-transition `blocks.N.proj` and SAM2's `pred_obj_score_head` are never targeted.
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

from samtune.config import LORA_TARGETS, ModelConfig
from samtune.models.base import PromptableModel

log = logging.getLogger(__name__)

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
QLORA_ERROR = "qlora needs a CUDA GPU and bitsandbytes; use method: lora on CPU"

_DECODER = {
    "decoder_attention": r"transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|"
                         r"cross_attn_image_to_token)|final_attn_token_to_image)\."
                         r"(q_proj|k_proj|v_proj|out_proj)",
    "decoder_mlp": r"transformer\.layers\.\d+\.mlp\.lin[12]",
    "decoder_hypernetwork": r"output_hypernetworks_mlps\.\d+\.layers\.\d+",
    "decoder_iou_head": r"iou_prediction_head\.layers\.\d+",
}
_VIT = r"blocks\.\d+\."
_TINYVIT = r"layers\.\d+\.blocks\.\d+\."
_HIERA = r"trunk\.blocks\.\d+\."
# family → target → regex relative to the part the target belongs to.
TARGET_PATTERNS: dict[str, dict[str, str]] = {
    "sam": {"encoder_qkv": _VIT + r"attn\.qkv", "encoder_proj": _VIT + r"attn\.proj",
            "encoder_mlp": _VIT + r"mlp\.lin[12]", **_DECODER},
    "mobile_sam": {"encoder_qkv": _TINYVIT + r"attn\.qkv", "encoder_proj": _TINYVIT + r"attn\.proj",
                   "encoder_mlp": _TINYVIT + r"mlp\.fc[12]", **_DECODER},
    # SAM-Med3D (medim): Block3D attn.qkv/proj and MLPBlock lin1/lin2; TwoWayTransformer3D's
    # DownscaleAttention q/k/v/out_proj and MLPBlock lin1/lin2: SAM's names in 3D.
    "sam_med3d": {"encoder_qkv": _VIT + r"attn\.qkv", "encoder_proj": _VIT + r"attn\.proj",
                  "encoder_mlp": _VIT + r"mlp\.lin[12]", **_DECODER},
    "sam2": {"encoder_qkv": _HIERA + r"attn\.qkv", "encoder_proj": _HIERA + r"attn\.proj",
             "encoder_mlp": _HIERA + r"mlp\.layers\.\d+", **_DECODER,
             "decoder_mlp": r"transformer\.layers\.\d+\.mlp\.layers\.\d+"},
}


def target_part(target: str) -> str:
    """The part a LoRA target lives in: encoder_* → image_encoder, decoder_* → mask_decoder."""
    return "image_encoder" if target.startswith("encoder_") else "mask_decoder"


def family_patterns(family: str) -> dict[str, str]:
    key = family if family in TARGET_PATTERNS else "sam2" if "sam2" in family else None
    if key is None:
        raise ValueError(f"no LoRA target mapping for model family '{family}'; known families: "
                         f"{', '.join(TARGET_PATTERNS)}")
    return TARGET_PATTERNS[key]


def part_prefixes(model: PromptableModel) -> dict[str, str]:
    """part → its name in `model.named_modules()` (e.g. SAM2's mask_decoder is
    'sam_mask_decoder'); found by identity, so it holds for any wrapper layout."""
    names = {id(m): n for n, m in model.named_modules()}
    return {part: names[id(getattr(model, part))] for part in PARTS}


def resolve_targets(model: PromptableModel, targets: list[str]) -> dict[str, list[str]]:
    """Config targets → full module names of the Linear layers they name, per target.

    A target that matches nothing → ValueError naming the target and the family."""
    patterns, prefixes = family_patterns(model.family), part_prefixes(model)
    resolved: dict[str, list[str]] = {}
    for target in targets:
        if target not in patterns:
            raise ValueError(f"unknown LoRA target '{target}'; valid: {', '.join(LORA_TARGETS)}")
        part = target_part(target)
        regex = re.compile(patterns[target])
        names = [f"{prefixes[part]}.{n}" for n, m in getattr(model, part).named_modules()
                 if isinstance(m, nn.Linear) and regex.fullmatch(n)]
        if not names:
            raise ValueError(f"LoRA target '{target}' matches no Linear layer of the {part} of a "
                             f"'{model.family}' model (pattern {patterns[target]!r}); choose "
                             "targets that exist in this family")
        resolved[target] = names
    return resolved


def _lora_parts(cfg: ModelConfig) -> set[str]:
    return {target_part(t) for t in cfg.lora.targets}


def check_method(cfg: ModelConfig) -> None:
    """Config-level conflicts, raised before any work (the family-level ones come with
    `resolve_targets`)."""
    if cfg.method in ("lora", "qlora"):
        clash = sorted(set(cfg.freeze) & _lora_parts(cfg))
        if clash:
            raise ValueError(f"conflicting freeze + LoRA settings: freeze lists {clash}, which "
                             f"lora.targets {list(cfg.lora.targets)} adapt; drop them from freeze "
                             "(LoRA already freezes the base weights) or drop those targets")
    else:
        frozen = set(cfg.freeze) | ({"image_encoder"} if cfg.method == "frozen" else set())
        if frozen >= set(PARTS):
            raise ValueError(f"method '{cfg.method}' with freeze {list(cfg.freeze)} leaves "
                             "nothing to train; unfreeze at least one part")
    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise RuntimeError(QLORA_ERROR)
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"{QLORA_ERROR} (bitsandbytes: {exc})") from None


def set_trainable(model: PromptableModel, trainable_parts: set[str]) -> None:
    """requires_grad per part (LoRA weights included); parameters outside the three parts
    follow the image encoder."""
    part_ids = {part: {id(p) for p in getattr(model, part).parameters()} for part in PARTS}
    for p in model.parameters():
        part = next((q for q in PARTS if id(p) in part_ids[q]), "image_encoder")
        p.requires_grad_(part in trainable_parts)


def quantize_image_encoder(model: PromptableModel, device: torch.device | str = "cuda") -> int:
    """Replace every nn.Linear of the image encoder by a bitsandbytes nf4 Linear4bit quantised
    from its weights (quantisation happens on the move to `device`); returns how many."""
    import bitsandbytes as bnb

    encoder = model.image_encoder
    linears = [(n, m) for n, m in encoder.named_modules()
               if isinstance(m, nn.Linear) and not isinstance(m, bnb.nn.Linear4bit)]
    for name, lin in linears:
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=lin.weight.dtype, compress_statistics=True,
                              quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(lin.weight.data.detach(), requires_grad=False,
                                     compress_statistics=True, quant_type="nf4", module=q)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.detach().clone(), requires_grad=False)
        q = q.to(device)
        parent_name, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent_name) if parent_name else encoder, child, q)
    return len(linears)


def _check_fresh(model: PromptableModel) -> None:
    if getattr(model, "peft_config", None):
        raise ValueError("the model already has a LoRA adapter; start from a fresh base model")


def apply_lora(model: PromptableModel, r: int, alpha: float, dropout: float,
               targets: list[str]) -> list[str]:
    """Inject peft LoRA layers (adapter 'default') in place; returns the adapted module names.
    Base weights are left frozen by peft, LoRA weights trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    _check_fresh(model)
    names = [n for group in resolve_targets(model, targets).values() for n in group]
    peft_cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                          bias="none")
    inject_adapter_in_model(peft_cfg, model)
    return names


def apply_method(model: PromptableModel, cfg: ModelConfig) -> PromptableModel:
    """Set what trains per `cfg.method` (module docstring); returns the same model, modified in
    place (qlora: moved to CUDA, where its 4-bit weights live). Errors come before any change."""
    check_method(cfg)
    if cfg.method in ("lora", "qlora"):
        _check_fresh(model)
        resolve_targets(model, list(cfg.lora.targets))  # family errors before any change
        full = set(PARTS) - _lora_parts(cfg) - set(cfg.freeze) - {"image_encoder"}
        if cfg.method == "qlora":
            model.to("cuda")
            count = quantize_image_encoder(model, "cuda")
            model.is_loaded_in_4bit = True  # tells peft to wrap Linear4bit with its 4-bit LoRA
            log.info("qlora: quantised %d image-encoder Linear layers to nf4", count)
        names = apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout,
                           list(cfg.lora.targets))
        set_trainable(model, set())
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
        for part in full:
            getattr(model, part).requires_grad_(True)
        log.info("%s: r=%d alpha=%g on %d modules (%s); trained in full: %s", cfg.method,
                 cfg.lora.r, cfg.lora.alpha, len(names), ", ".join(cfg.lora.targets),
                 sorted(full) or "none")
    else:
        frozen = set(cfg.freeze) | ({"image_encoder"} if cfg.method == "frozen" else set())
        set_trainable(model, set(PARTS) - frozen)
        log.info("%s: frozen parts %s", cfg.method, sorted(frozen) or "none")
    return model


def parameter_report(model: PromptableModel) -> dict[str, object]:
    """{'trainable', 'total', 'trainable_fraction', 'lora', 'parts': {part: {'trainable',
    'total'}}} with parts image_encoder, prompt_encoder, mask_decoder and other (parameters
    outside the three). A 4-bit weight counts its original element count."""
    seen: set[int] = set()
    parts: dict[str, dict[str, int]] = {}
    lora = 0
    named = {part: list(getattr(model, part).named_parameters()) for part in PARTS}
    named["other"] = list(model.named_parameters())
    for part, params in named.items():
        counts = {"trainable": 0, "total": 0}
        for name, p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = _numel(p)
            counts["total"] += n
            counts["trainable"] += n if p.requires_grad else 0
            lora += n if "lora_" in name else 0
        parts[part] = counts
    trainable = sum(c["trainable"] for c in parts.values())
    total = sum(c["total"] for c in parts.values())
    return {"trainable": trainable, "total": total, "lora": lora,
            "trainable_fraction": trainable / total if total else 0.0, "parts": parts}


def _numel(p: torch.Tensor) -> int:
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()
